"""fastbert.jsonio, the one JSON reader: every malformed input is an InputError naming its source."""

import pytest

from fastbert.errors import InputError
from fastbert.jsonio import parse_json, read_json


@pytest.mark.parametrize("text, message", [
    ('{"a": ', r"x.json is not valid JSON \(column 7\)"),
    ('{\n"a": ]', r"x.json is not valid JSON \(line 2, column 6\)"),
    ("[" * 100_000, "nested too deeply"),
    ('{"n": 1' + "0" * 5000 + "}", "not readable JSON"),  # past Python's int-digit limit
    ("[1, 2]", "must hold a JSON object, found array"),
])
def test_malformed_json_names_its_source(text, message):
    with pytest.raises(InputError, match=message):
        parse_json(text, "x.json", expect=dict)


def test_read_json_names_the_file(tmp_path):
    assert read_json(tmp_path / "absent.json", default=None) is None
    with pytest.raises(FileNotFoundError, match="absent.json"):
        read_json(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_bytes(b'{"a": "\xff"}')
    with pytest.raises(InputError, match="bad.json is not UTF-8"):
        read_json(tmp_path / "bad.json")
    (tmp_path / "ok.json").write_text('{"a": [1, 2]}')
    assert read_json(tmp_path / "ok.json") == {"a": [1, 2]}
