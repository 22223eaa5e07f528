"""The one JSON reader: config.json, modules.json, tokenizer and module configs, progress records and JSONL
records all come through here, so every malformed input gets the same clear error.

A parse error, invalid UTF-8, or nesting too deep for Python's parser (json raises RecursionError) is a
ValueError naming the source and, where known, the line; a value of the wrong top-level type is too."""

import json
from pathlib import Path

_MISSING = object()


def parse_json(text, source, expect=None):
    """The value of JSON `text`; `source` names it in errors (a file, or "FILE line N" for a record).
    expect: a type (dict, list) the top-level value must have, or None for any."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{source} is not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}") from None
    except RecursionError:
        raise ValueError(f"{source} is not readable JSON: nested too deeply") from None
    if expect is not None and not isinstance(value, expect):
        raise ValueError(f"{source} must hold a JSON {_KIND.get(expect, expect.__name__)}, "
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
        raise ValueError(f"{file} is not UTF-8 text: {err.reason} at byte {err.start}") from None
    except OSError as err:
        raise ValueError(f"{file} cannot be read: {err.strerror or err}") from None
    return parse_json(text, file, expect)


_KIND = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
         type(None): "null"}
