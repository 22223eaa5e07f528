"""The one JSON reader: config.json, modules.json, tokenizer and module configs, progress records and JSONL
records all come through here, so every malformed input gets the same clear error. Also the one-line JSON
text that the JSONL output and the stdout preview write.

A parse error, invalid UTF-8, or nesting too deep for Python's parser (json raises RecursionError) is an
InputError (a ValueError) naming the source and, where known, the line; a value of the wrong top-level
type is too."""

import json
from pathlib import Path

from .errors import InputError

_MISSING = object()


def parse_json(text, source, expect=None):
    """The value of JSON `text`; `source` names it in errors (a file, or "FILE line N" for a record, whose
    errors then give the column alone). expect: a type (dict, list) the top-level value must have, or None
    for any."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        where = f"column {err.colno}" if "\n" not in text else f"line {err.lineno}, column {err.colno}"
        raise InputError(f"{source} is not valid JSON ({where}): {err.msg}") from None
    except RecursionError:
        raise InputError(f"{source} is not readable JSON: nested too deeply") from None
    except ValueError as err:  # a number past Python's int-digit limit, not a syntax error
        raise InputError(f"{source} is not readable JSON: {err}") from None
    if expect is not None and not isinstance(value, expect):
        raise InputError(f"{source} must hold a JSON {_KIND.get(expect, expect.__name__)}, "
                         f"found {_KIND.get(type(value), type(value).__name__)}")
    return value


def read_json(file, expect=dict, default=_MISSING):
    """The JSON value in `file` (a JSON object unless `expect` says otherwise). A missing file returns
    `default` when one is given, else raises FileNotFoundError naming it."""
    file = Path(file)
    if not file.is_file():
        if default is not _MISSING:
            return default
        raise FileNotFoundError(f"{file} is missing")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{file} is not UTF-8 text: {err.reason} at byte {err.start}") from None
    except OSError as err:
        raise InputError(f"{file} cannot be read: {err.strerror or err}") from None
    return parse_json(text, file, expect)


def escape_line_breaks(serialized):
    """JSON text with the characters str.splitlines breaks at escaped too, so that every reader sees one row
    per line (json.dumps leaves them raw, and only inside strings)."""
    return serialized.replace("\x85", "\\u0085").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def json_text(text):
    """JSON string, readable (non-ASCII kept), one line for every reader."""
    return escape_line_breaks(json.dumps(text, ensure_ascii=False))


_KIND = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
         type(None): "null"}
