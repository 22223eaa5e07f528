"""Reading the records of `fastbert encode` incrementally: text lines, JSONL, CSV and Parquet.

A reader yields chunks of records, each record a dict holding the text field and any other fields of the
input (an id, metadata), in input order. Memory holds one chunk, never the whole input. Every text line is
a record, blank ones included (they become empty texts), so output row i is always input line i; in JSONL
and CSV a blank line is no record at all (nothing could be carried from it)."""

import csv
import io
import itertools
import sys
from pathlib import Path

from fastbert.errors import InputError
from fastbert.jsonio import parse_json

INPUT_FORMATS = ("text", "jsonl", "csv", "parquet")
SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
# The csv module refuses fields over 128 KiB by default; a passage may be longer (the tokenizer truncates).
CSV_FIELD_LIMIT = 2**31 - 1


def _chosen_format(path, option):
    """The input's format: --input-format when given, else by suffix; None (text, or JSONL when its first
    line is a JSON object) for anything else."""
    if option is not None:
        return option
    if path is None:
        return None
    return SUFFIX_FORMATS.get(path.suffix.lower())


def require_pyarrow(what):
    try:
        import pyarrow  # noqa: F401
    except ImportError as err:
        raise InputError(f"{what} needs pyarrow: pip install 'fastbert[parquet]'") from err


class RecordReader:
    """Records of one input, in chunks. `name` appears in messages; `fields` is the field list known before
    the first record (CSV header, Parquet schema), else None. Line/record numbers in messages are 1-based."""

    def __init__(self, source, name, fmt, text_field):
        self.source, self.name, self.format, self.text_field = source, name, fmt, text_field
        self.fields, self.total = None, None  # total: the record count, where known up front (Parquet)
        self._lines, self._peeked = None, []
        if fmt == "parquet":
            self._parquet = self._open_parquet()
        elif fmt == "csv":
            csv.field_size_limit(CSV_FIELD_LIMIT)
            self._csv = csv.reader(io.TextIOWrapper(self._binary(), encoding="utf-8-sig", newline=""))
            self._csv_line = 0
            header = self._next_csv_row()
            if header is None:
                raise InputError(f"{name} holds no CSV header")
            if text_field not in header:
                raise InputError(f"{name}: no column {text_field!r} in the CSV header {header} (see --text-field)")
            if len(set(header)) != len(header):
                raise InputError(f"{name}: the CSV header repeats a column name: {header}")
            self.fields = header
        else:
            self._lines = self._numbered_lines()
            if fmt is None:  # decide between text and JSONL on the first non-blank line
                self._peeked, self.format = self._peek_format()

    # -- sources -------------------------------------------------------------------------------------

    def _binary(self):
        if self.source is None:
            return sys.stdin.buffer
        try:
            return open(self.source, "rb")  # noqa: SIM115 - read to the end by the iterator, closed at exit
        except IsADirectoryError as err:
            raise InputError(f"--input {self.source} is a directory, not a file") from err
        except OSError as err:
            raise InputError(f"cannot read --input {self.source}: {err.strerror or err}") from err

    def _numbered_lines(self):
        """(line number, text) for every line, split on "\\n" only: str.splitlines would also cut at
        U+2028, form feeds and the like inside a text. A final newline ends the last line, it opens none."""
        binary = self._binary()
        for number, raw in enumerate(binary, 1):
            line = raw.removesuffix(b"\n").removesuffix(b"\r")
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(f"{self.name} is not UTF-8 text (invalid byte on line {number}, "
                                 f"column {err.start + 1})") from err
            yield number, text.removeprefix("\ufeff") if number == 1 else text

    def _peek_format(self):
        peeked = []
        for number, line in self._lines:
            peeked.append((number, line))
            if line.strip():
                try:
                    is_object = line.lstrip().startswith("{") and isinstance(parse_json(line, self.name), dict)
                except ValueError:
                    is_object = False
                return peeked, "jsonl" if is_object else "text"
        return peeked, "text"

    def _open_parquet(self):
        require_pyarrow("Parquet input")
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.source is None:
            raise InputError("Parquet input must be a file (--input FILE.parquet), not stdin")
        try:
            parquet = pq.ParquetFile(self.source)
        except (OSError, pa.ArrowException) as err:
            raise InputError(f"cannot read --input {self.source} as Parquet: {err}") from err
        schema = parquet.schema_arrow
        if self.text_field not in schema.names:
            raise InputError(f"{self.name}: no column {self.text_field!r} in {schema.names} (see --text-field)")
        field_type = schema.field(self.text_field).type
        text_type = field_type.value_type if pa.types.is_dictionary(field_type) else field_type  # categorical
        if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
            raise InputError(f"{self.name}: column {self.text_field!r} holds {field_type}, not strings")
        self.fields, self.total = schema.names, parquet.metadata.num_rows
        self.arrow_schema = schema
        return parquet

    def _next_csv_row(self):
        try:
            row = next(self._csv, None)
        except UnicodeDecodeError as err:
            raise InputError(f"{self.name} is not UTF-8 text (invalid byte after CSV row {self._csv_line})") from err
        except csv.Error as err:
            raise InputError(f"{self.name} CSV row {self._csv_line + 1}: {err}") from err
        self._csv_line += 1
        return row

    # -- records -------------------------------------------------------------------------------------

    def _text_records(self):
        lines = itertools.chain(self._peeked, self._lines)
        field = self.text_field
        for _, line in lines:
            yield {field: line}

    def _jsonl_records(self):
        lines = itertools.chain(self._peeked, self._lines)
        field = self.text_field
        for number, line in lines:
            if not line.strip():
                continue
            record = parse_json(line, f"{self.name} line {number}")
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise InputError(f"{self.name} line {number}: expected a JSON object with a string {field!r} field"
                                 + (" (see --text-field)" if isinstance(record, dict) else ""))
            yield record

    def _csv_records(self):
        header = self.fields
        while (row := self._next_csv_row()) is not None:
            if not row:
                continue  # a blank line: no record
            if len(row) != len(header):
                raise InputError(f"{self.name} CSV row {self._csv_line}: {len(row)} values for "
                                 f"{len(header)} columns")
            yield dict(zip(header, row))

    def chunks(self, sizes):
        """Lists of records whose lengths follow the iterator `sizes` (one size per chunk)."""
        if self.format == "parquet":
            yield from self._parquet_chunks(sizes)
            return
        records = {"text": self._text_records, "jsonl": self._jsonl_records, "csv": self._csv_records}
        iterator = records[self.format]()
        while True:
            size = next(sizes)
            chunk = []
            for record in iterator:
                chunk.append(record)
                if len(chunk) == size:
                    break
            if not chunk:
                return
            yield chunk
            if len(chunk) < size:
                return

    def _parquet_chunks(self, sizes):
        field = self.text_field
        pending, first_row = [], 1
        size = next(sizes)
        for batch in self._parquet.iter_batches(batch_size=1024):
            rows = batch.to_pylist()
            for offset, record in enumerate(rows):
                if not isinstance(record[field], str):
                    raise InputError(f"{self.name} row {first_row + offset}: {field!r} is null, not a string")
            first_row += len(rows)
            pending.extend(rows)
            while len(pending) >= size:
                yield pending[:size]
                pending = pending[size:]
                size = next(sizes)
        if pending:
            yield pending


def open_reader(path_option, texts, fmt, text_field):
    """The reader for TEXT arguments, --input FILE or stdin ('-' or nothing)."""
    if texts:
        return ListReader(texts, text_field)
    if path_option is not None and path_option != "-":
        path = Path(path_option).expanduser()
        if path.is_dir():
            raise InputError(f"--input {path} is a directory, not a file")
        return RecordReader(path, str(path), _chosen_format(path, fmt), text_field)
    if sys.stdin is None or (path_option is None and sys.stdin.isatty()):
        raise InputError("no input: pass TEXT arguments, --input FILE, or pipe text on stdin")
    return RecordReader(None, "stdin", fmt, text_field)


class ListReader:
    """TEXT arguments: already in memory, one record each."""

    format = "text"
    fields = None

    def __init__(self, texts, text_field):
        self.records = [{text_field: text} for text in texts]
        self.name, self.total = "the arguments", len(self.records)

    def chunks(self, sizes):
        start = 0
        while start < len(self.records):
            size = next(sizes)
            yield self.records[start:start + size]
            start += size
