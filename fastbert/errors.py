"""The error a library caller and the CLI share for a problem with what the user gave.

The library raises `InputError` (a ValueError, so `except ValueError` keeps working) for a bad file, record,
option or model folder; the `fastbert` command prints its message as one line and exits 2. Anything else
that escapes is a failure inside fastbert (exit 1)."""

MAX_MESSAGE_CHARS = 2000


class InputError(ValueError):
    """A problem with the user's input, named in one line (bounded in length: see `bounded`)."""

    def __init__(self, message):
        super().__init__(bounded(str(message)))


def bounded(message, limit=MAX_MESSAGE_CHARS):
    """`message` cut to `limit` characters, saying how much was left out: an error that quotes a huge
    config value or a whole record must still read as one line."""
    if len(message) <= limit:
        return message
    return f"{message[: limit - 40]}... ({len(message) - limit + 40} more characters)"
