"""fastbert on a Ray cluster: Ray Data reads, schedules and writes; fastbert embeds on every GPU.

    import ray
    import fastbert.parallel.ray

    ds = ray.data.read_parquet("s3://bucket/corpus/")
    ds = ds.map_batches(fastbert.parallel.ray.Embedder, fn_constructor_kwargs={"model": "/models/all-MiniLM-L6-v2"},
                        concurrency=8, num_gpus=1, batch_size=1024)
    ds.write_parquet("s3://bucket/embeddings/")

Each actor loads the model once (from a folder every node can read) and turns a batch's `text` column
into an `embedding` column (float32 [H] per row); other columns pass through. `encode_files` is
`fastbert encode --ray`. Ray is an optional extra (pip install 'fastbert[ray]'), imported only when
used: this module is `fastbert.parallel.ray`, and every `import ray` in it means the Ray package (absolute).

A driver that dies, even by SIGKILL, takes its actors with it by Ray's own guarantees, so fastbert adds no
watch of its own here (an actor's parent process is Ray's worker machinery, not the driver): the actors
of a Ray Data job are owned by the driver, and Ray ends an owner's non-detached actors when the owner
dies; a local cluster that start_ray started (ray.init without an address) shares the driver's fate (on
Linux its processes get the kernel's parent-death signal, elsewhere Ray's reaper stops them)."""

import os
from pathlib import Path

from fastbert.defaults import CHUNK_TEXTS

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "json", ".json": "json", ".ndjson": "json"}
JSON_COMPRESSIONS = (".gz", ".br", ".zst", ".lz4")


class Embedder:
    """A callable class for `ray.data.Dataset.map_batches`: embeds `text_column` into `embedding_column`.

    model: checkpoint folder (a path every node can read), or a Hugging Face Hub id (each node fetches it
    into its own cache). device, dtype, backend, gemm: as
    FastBertModel.from_pretrained (default: the GPU Ray assigned the actor, else CPU).
    encode_options: passed to encode (pooling, normalize, max_length, batch_size, max_tokens, ...).
    Batches may be dicts of NumPy arrays (Ray's default), pandas DataFrames or pyarrow Tables."""

    def __init__(self, model, *, text_column="text", embedding_column="embedding", device=None, dtype=None,
                 backend="auto", gemm="auto", **encode_options):
        from fastbert.engine.model import Encoder
        from fastbert.sentence.stream import encode

        if not isinstance(model, (str, os.PathLike)):
            raise TypeError(f"model must be a checkpoint folder or a Hub id, got {type(model).__name__} "
                            "(Ray ships constructor arguments to every actor: pass the folder, not a model)")
        for name, column in (("text_column", text_column), ("embedding_column", embedding_column)):
            if not isinstance(column, str) or not column:
                raise TypeError(f"{name} must be a non-empty string, got {column!r}")
        if text_column == embedding_column:
            raise ValueError(f"embedding_column must differ from text_column ({text_column!r}): the texts are kept")
        placement = {"devices", "pool"} & set(encode_options)
        if placement:
            raise ValueError(f"{sorted(placement)} do not apply under Ray: map_batches' concurrency and num_gpus "
                             "place the actors")
        self.text_column, self.embedding_column = text_column, embedding_column
        self.model = Encoder.from_pretrained(model, dtype=dtype, device=device, backend=backend, gemm=gemm)
        self.encode_options = encode_options
        encode(self.model, [], **encode_options)  # a bad option fails when the actor starts, not on a batch
        self.model.get_tokenizer()

    def __repr__(self):
        return f"Embedder({self.model!r}, {self.text_column!r} -> {self.embedding_column!r})"

    def __call__(self, batch):
        if isinstance(batch, dict):
            self._check_columns(batch.keys())
            embeddings = self._embed(self._texts(batch[self.text_column].tolist()))
            return {**batch, self.embedding_column: embeddings}
        module = type(batch).__module__.split(".")[0]
        if module == "pandas":
            self._check_columns(batch.columns)
            embeddings = self._embed(self._texts(batch[self.text_column].tolist()))
            return batch.assign(**{self.embedding_column: list(embeddings)})
        if module == "pyarrow":
            from ray.data.extensions import ArrowTensorArray

            self._check_columns(batch.column_names)
            embeddings = self._embed(self._texts(batch.column(self.text_column).to_pylist()))
            return batch.append_column(self.embedding_column, ArrowTensorArray.from_numpy(embeddings))
        raise TypeError(f"Embedder takes a dict of NumPy arrays, a pandas DataFrame or a pyarrow Table, "
                        f"got {type(batch).__name__}")

    def _check_columns(self, columns):
        columns = list(columns)
        if self.text_column not in columns:
            raise KeyError(f"the batch has no column {self.text_column!r} (columns: {columns}); "
                           "pass text_column= in fn_constructor_kwargs")
        if self.embedding_column in columns:
            raise ValueError(f"the batch already has a column {self.embedding_column!r}; pass another "
                             "embedding_column= in fn_constructor_kwargs rather than overwrite it")

    def _texts(self, values):
        for position, value in enumerate(values):
            if not isinstance(value, str):
                raise TypeError(f"column {self.text_column!r} row {position} of this batch is "
                                f"{type(value).__name__} ({value!r}), not a string")
        return values

    def _embed(self, texts):
        import numpy as np

        from fastbert.sentence.stream import encode

        return np.asarray(encode(self.model, texts, **self.encode_options))  # a CPU tensor or an array


# ---------------------------------------------------------------------------------------------------
# fastbert encode --ray: files (local or any URI pyarrow reads, s3:// gs:// hdfs://) through Ray Data


def _absolute(location):
    """A URI as given, a local path made absolute (what Ray's readers and writers take)."""
    location = os.fspath(location)
    return location if "://" in location else str(Path(location).expanduser().resolve())


def _filesystem(location):
    """(pyarrow FileSystem, path inside it) for a local path or a URI."""
    from pyarrow import fs

    return fs.FileSystem.from_uri(_absolute(location))


def _format_of(name):
    stem, suffix = os.path.splitext(name.rstrip("/").lower())
    if suffix in JSON_COMPRESSIONS:  # corpus.jsonl.gz: Ray reads compressed JSON lines by their suffix
        return "json" if FORMATS.get(os.path.splitext(stem)[1]) == "json" else None
    return FORMATS.get(suffix)


def input_format(location):
    """'parquet' or 'json' for a file, or a folder of such files; ValueError / FileNotFoundError."""
    from pyarrow import fs

    filesystem, path = _filesystem(location)
    info = filesystem.get_file_info(path)
    if info.type == fs.FileType.NotFound:
        raise FileNotFoundError(f"--input {location} does not exist")
    if info.type == fs.FileType.File:
        names = [path]
    else:  # a folder: its data files (Spark's _SUCCESS, .crc and other side files are not data)
        names = [f.path for f in filesystem.get_file_info(fs.FileSelector(path, recursive=True))
                 if f.type == fs.FileType.File and not f.base_name.startswith((".", "_"))]
    found = {_format_of(name) for name in names} - {None}
    if not found:
        raise ValueError(f"--input {location}: with --ray, give Parquet (.parquet) or JSONL (.jsonl, .json, "
                         ".ndjson) files, or a folder of them")
    if len(found) > 1:
        raise ValueError(f"--input {location} mixes Parquet and JSONL files: give one format")
    return found.pop()


def output_format(location, source, source_format):
    """The format of output folder `location` (its suffix, else the input's); refuses to overwrite
    anything or to write inside the input."""
    from pyarrow import fs

    filesystem, path = _filesystem(location)
    suffix = os.path.splitext(path.rstrip("/"))[1].lower()
    if suffix and suffix not in FORMATS:
        raise ValueError(f"--output {location}: with --ray the output is a folder of Parquet or JSONL files; "
                         f"name it *.parquet or *.jsonl, or without a suffix for the input's format")
    target, origin = _absolute(location).rstrip("/"), _absolute(source).rstrip("/")
    for inner, outer in ((target, origin), (origin, target)):
        if inner == outer or inner.startswith(outer + "/"):
            raise ValueError(f"--output {location} and --input {source} overlap: the input would be overwritten")
    info = filesystem.get_file_info(path)
    if info.type == fs.FileType.File or (
            info.type == fs.FileType.Directory and filesystem.get_file_info(fs.FileSelector(path))):
        raise FileExistsError(f"--output {location} already exists: fastbert does not overwrite; remove it or "
                              "choose another folder")
    return FORMATS[suffix] if suffix else source_format


def start_ray(address=None):
    """Connect to the cluster at `address` ('auto', 'ray://host:10001', ...) or start a local one; True
    when this call started Ray (and should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=address)
    return True


def encode_files(source, destination, model, *, source_format=None, actors=None, device=None, dtype=None,
                 backend="auto", gemm="auto", text_column="text", embedding_column="embedding",
                 chunk_size=CHUNK_TEXTS, **encode_options):
    """Read `source` (Parquet or JSONL file or folder), embed its text column with Embedder actors, write
    folder `destination` (Parquet or JSONL, one file per block) in input order -> the output format.
    source_format: 'parquet' or 'json' (default: from the names of the input's files).
    Needs Ray initialised (start_ray). actors: default one per GPU of the cluster; on a cluster without
    GPUs (or device='cpu'), one per CPU but one, each CPU actor taking one CPU. chunk_size: texts per Ray
    Data batch handed to an actor (`fastbert encode --chunk-size`)."""
    import ray
    import ray.data

    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if source_format not in (None, "parquet", "json"):
        raise ValueError(f"source_format must be 'parquet' or 'json', got {source_format!r}")
    # A named format reads every file given; a detected one, only the files named as that format.
    named = source_format is not None
    source_format = source_format or input_format(source)
    extensions = [name.lstrip(".") for name, kind in FORMATS.items() if kind == source_format]
    if source_format == "json":
        extensions += [name + compression for name in extensions for compression in JSON_COMPRESSIONS]
    extensions = None if named else extensions
    destination_format = output_format(destination, source, source_format)
    resources = ray.cluster_resources()
    use_gpus = device != "cpu" and resources.get("GPU", 0) >= 1
    if device == "cuda" and not use_gpus:
        raise ValueError("device='cuda' but the Ray cluster has no GPU")
    if actors is None:
        actors = int(resources["GPU"]) if use_gpus else max(1, int(resources.get("CPU", 1)) - 1)
    placement = {"num_gpus": 1} if use_gpus else {"num_cpus": 1}
    path = _absolute(source)
    if source_format == "parquet":
        dataset = ray.data.read_parquet(path, file_extensions=extensions)
    else:
        dataset = ray.data.read_json(path, file_extensions=extensions)
    constructor = dict(model=str(model), text_column=text_column, embedding_column=embedding_column,
                       device=device, dtype=dtype, backend=backend, gemm=gemm, **encode_options)
    dataset = dataset.map_batches(Embedder, fn_constructor_kwargs=constructor, concurrency=actors,
                                  batch_size=chunk_size, **placement)
    out = _absolute(destination)
    options = ray.data.DataContext.get_current().execution_options
    preserve_order = options.preserve_order
    options.preserve_order = True  # output rows follow input rows (Ray may otherwise emit blocks as they finish)
    try:
        if destination_format == "parquet":
            dataset.write_parquet(out)
        else:
            dataset.write_json(out)
    finally:
        options.preserve_order = preserve_order
    return destination_format
