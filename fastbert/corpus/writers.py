"""The output formats of `fastbert encode`, as appendable byte streams.

Each format turns a chunk of (record, embedding) rows into bytes appended to the partial output file, so
that a byte offset marks every chunk boundary: what --resume truncates to. `finish` turns the complete
partial file into the final one. .npy reserves a fixed-size header and writes the row count into it at
the end; Parquet, which cannot be appended to, is built as an Arrow IPC stream (appendable, one record
batch per chunk) and converted in one streaming pass at the end. Input fields other than the text are
carried into JSONL, CSV and Parquet rows; .npy holds the embeddings only (row i is input record i).

A format's state (fields, dimension, schema) is plain JSON, kept in the progress record for --resume."""

import base64
import csv
import io
import json
import os
from pathlib import Path

from fastbert.errors import InputError
from fastbert.jsonio import escape_line_breaks, json_text

NPY_HEADER_BYTES = 128  # magic, version, length and a dict padded with spaces: room for any row count


def _cell(value):
    """A CSV cell: strings as they are, nothing as an empty cell, anything else as JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False, default=str)


def _number_format(dim):
    """One %-format for a whole embedding: a single C-level call per row, twice as fast as formatting each
    value. %.9g round-trips float32 exactly and keeps the text half the size of repr(float64)."""
    return ",".join(["%.9g"] * dim)


class RowFormat:
    """Base of the formats. `start` is the header (bytes) once the first chunk fixes fields and dimension;
    `rows` a chunk's bytes. `first_number`: the input record number of records[0], for messages."""

    carries_fields = True

    def __init__(self, text_field, embedding_field, state=None):
        self.text_field, self.embedding_field = text_field, embedding_field
        self.state = state  # None until the first chunk

    def start(self, fields, records, dim, first_number, arrow_schema=None):
        self.state = {"fields": list(fields), "dim": int(dim)}
        return b""

    def check(self, records, first_number):
        """InputError naming the first record whose fields this format cannot carry."""
        if not self.carries_fields:
            return
        fields = self.state.get("fields") if self.state else None
        for number, record in enumerate(records, first_number):
            if self.embedding_field in record:
                raise InputError(f"input record {number} already has a field {self.embedding_field!r}; "
                                 "name the embedding column with --embedding-field")
            if fields is not None and not record.keys() <= set(fields):
                extra = sorted(record.keys() - set(fields))
                raise InputError(f"input record {number} has field(s) {extra} that the first record lacks; "
                                 f"{self.name} output fixes its columns on the first record(s)")

    def finish(self, file, rows, temporary):
        """Make the complete partial file final, through `file`, the partial file open for reading and
        writing; returns the path that holds the result: the partial's own or `temporary`."""
        return Path(file.name)


class NpyFormat(RowFormat):
    name = ".npy"
    carries_fields = False

    @staticmethod
    def header(rows, dim):
        text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}"
        prefix = b"\x93NUMPY\x01\x00" + (NPY_HEADER_BYTES - 10).to_bytes(2, "little")
        return prefix + text.ljust(NPY_HEADER_BYTES - 11).encode("latin-1") + b"\n"

    def start(self, fields, records, dim, first_number, arrow_schema=None):
        super().start(fields, records, dim, first_number)
        return self.header(0, dim)

    def rows(self, records, embeddings, first_number):
        return embeddings.astype("<f4", copy=False).tobytes()

    def finish(self, file, rows, temporary):
        file.seek(0)
        file.write(self.header(rows, self.state["dim"]))
        file.flush()
        os.fsync(file.fileno())
        return Path(file.name)


class JsonlFormat(RowFormat):
    name = ".jsonl"

    def start(self, fields, records, dim, first_number, arrow_schema=None):
        super().start(fields, records, dim, first_number)
        self.state["fields"] = None  # every object is carried as it is
        return b""

    def rows(self, records, embeddings, first_number):
        key, numbers = json_text(self.embedding_field), _number_format(embeddings.shape[1])
        lines = []
        for record, row in zip(records, embeddings.tolist(), strict=True):
            body = escape_line_breaks(json.dumps(record, ensure_ascii=False, default=str))
            separator = ", " if len(body) > 2 else ""
            lines.append(f"{body[:-1]}{separator}{key}: [{numbers % tuple(row)}]}}\n")
        return "".join(lines).encode("utf-8")


class CsvFormat(RowFormat):
    name = ".csv"

    def start(self, fields, records, dim, first_number, arrow_schema=None):
        super().start(fields, records, dim, first_number)
        columns = [f"dim_{i}" for i in range(dim)]
        clash = sorted(set(columns) & set(fields))
        if clash:
            raise InputError(f"input field(s) {clash[:3]} clash with the CSV embedding columns dim_0..dim_{dim - 1}")
        return self._lines([list(fields) + columns], [""])

    @staticmethod
    def _lines(rows, tails):
        """CSV lines: each row's cells quoted by the csv module, then its preformatted tail (numbers). The
        writer keeps its default line terminator, "\r\n": it quotes a cell holding "\r" or "\n" only when
        they are line-ending characters to it (an empty terminator would leave them bare and split the row);
        the terminator is then moved after the tail."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        for row, tail in zip(rows, tails, strict=True):
            writer.writerow(row)
            buffer.seek(buffer.tell() - 2)
            buffer.write(tail + "\r\n")
        return buffer.getvalue().encode("utf-8")

    def rows(self, records, embeddings, first_number):
        fields, numbers = self.state["fields"], "," + _number_format(embeddings.shape[1])
        cells = [[_cell(record.get(field)) for field in fields] for record in records]
        return self._lines(cells, [numbers % tuple(row) for row in embeddings.tolist()])


def _unstorable(records, first_number, schema, err):
    """InputError naming the first record and field that Parquet cannot store: by `schema`'s column types
    (those the first chunk fixed), or as Arrow infers them when `schema` is None. Only run after a
    conversion failed: it finds the shortest failing prefix of each column by bisection."""
    import pyarrow as pa

    failures = (pa.ArrowException, TypeError, OverflowError)
    names = schema.names if schema is not None else list(dict.fromkeys(k for r in records for k in r))
    for name in names:
        column_type = schema.field(name).type if schema is not None else None
        values = [record.get(name) for record in records]
        try:
            pa.array(values, type=column_type)
            continue
        except failures:
            pass
        good, bad = 0, len(values)  # values[:good] convert, values[:bad] do not
        while bad - good > 1:
            middle = (good + bad) // 2
            try:
                pa.array(values[:middle], type=column_type)
                good = middle
            except failures:
                bad = middle
        try:
            pa.array(values[:bad], type=column_type)
        except failures as reason:
            column = f"the Parquet column {name!r} ({column_type})" if column_type is not None else "Parquet"
            return InputError(f"input record {first_number + bad - 1}: field {name!r} cannot be stored in "
                              f"{column}: {str(reason)[:200]}")
    return InputError(f"cannot store the input fields in Parquet: {str(err)[:200]}")


class ParquetFormat(RowFormat):
    name = ".parquet"

    def start(self, fields, records, dim, first_number, arrow_schema=None):
        import pyarrow as pa

        super().start(fields, records, dim, first_number)
        if arrow_schema is None:  # no schema in the input: infer the columns' types from the first chunk
            try:
                arrow_schema = pa.Table.from_pylist(records).schema
            except (pa.ArrowException, TypeError, OverflowError) as err:
                raise _unstorable(records, first_number, None, err) from err
        # Categorical (dictionary) columns as their values: an Arrow stream would need every chunk's own
        # dictionary as a message of its own, and Parquet dictionary-encodes repeated values anyway.
        schema = pa.schema([field.with_type(field.type.value_type) if pa.types.is_dictionary(field.type) else field
                            for field in arrow_schema], metadata=arrow_schema.metadata)
        schema = schema.append(pa.field(self.embedding_field, pa.list_(pa.float32(), dim)))
        self._schema = schema
        message = schema.serialize().to_pybytes()
        self.state["schema"] = base64.b64encode(message).decode("ascii")
        return message

    @property
    def schema(self):
        if getattr(self, "_schema", None) is None:
            import pyarrow as pa

            self._schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(self.state["schema"])))
        return self._schema

    def rows(self, records, embeddings, first_number):
        import pyarrow as pa

        schema = self.schema
        field_schema = pa.schema(list(schema)[:-1], metadata=schema.metadata)
        try:
            fields = pa.RecordBatch.from_pylist(records, schema=field_schema)
        except (pa.ArrowException, TypeError, OverflowError) as err:
            raise _unstorable(records, first_number, field_schema, err) from err
        dim = embeddings.shape[1]
        flat = pa.array(embeddings.astype("float32", copy=False).reshape(-1), type=pa.float32())
        vectors = pa.FixedSizeListArray.from_arrays(flat, dim)
        batch = pa.RecordBatch.from_arrays([*fields.columns, vectors], schema=schema)
        return batch.serialize().to_pybytes()

    def finish(self, file, rows, temporary):
        import pyarrow as pa
        import pyarrow.parquet as pq

        file.seek(0)
        with pq.ParquetWriter(str(temporary), self.schema) as writer:
            for batch in pa.ipc.open_stream(pa.PythonFile(file, mode="r")):
                writer.write_batch(batch)
        return temporary


OUTPUT_FORMATS = {format_.name: format_ for format_ in (NpyFormat, JsonlFormat, CsvFormat, ParquetFormat)}
