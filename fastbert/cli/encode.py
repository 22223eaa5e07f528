"""`fastbert encode`: its options (a table, one row per option) and the command, which streams records
through fastbert.corpus: readers (input records), run (the chunked encode), partial (the partial output,
resume, signals) and writers (output formats); with --ray, through fastbert.parallel.ray. The model helpers
it shares with the other commands live in fastbert.cli.common."""

import argparse
import sys
import time
from pathlib import Path

from fastbert.defaults import CHUNK_TEXTS, MAX_BATCH_TOKENS, POOLING_MODE_NAMES
from fastbert.errors import InputError

from .common import load_model as load_pretrained
from .common import max_length, model_path, one_line, positive_int, resolve_runtime
from .textio import print_embeddings

# Inputs at least this long get a progress bar on an interactive stderr (about a second of work on a CPU);
# a stream of unknown length always does.
PROGRESS_MIN_TEXTS = 256


def _progress_bar(args, reader):
    total = getattr(reader, "total", None)
    show = args.progress
    if show is None:
        show = sys.stderr.isatty() and (total is None or total >= PROGRESS_MIN_TEXTS)
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="encode", unit="text")


def _device_list(text):
    devices = [part.strip() for part in text.split(",")]
    if not all(devices):
        raise argparse.ArgumentTypeError(f"must be devices separated by commas, such as cuda:0,cuda:1, got {text!r}")
    return devices


def _check_devices(args):
    """--devices: each device checked as --device is, before anything loads."""

    if args.device is not None:
        raise InputError("give --device (one device) or --devices (a worker per device), not both")
    for device in args.devices:
        resolve_runtime(device, args.dtype, args.backend)


def _start_pool(path, args):
    """--devices: one worker process per device (fastbert.parallel.pool), standing in for the model."""
    from fastbert.parallel.pool import EncodePool

    try:
        return EncodePool(path, args.devices, dtype=args.dtype, backend=args.backend, gemm=args.gemm)
    except Exception as err:
        raise InputError(f"cannot start workers with the model in {path}: {one_line(err)}") from err


def _load_model(path, device, dtype, backend, gemm):
    """The model with its sentence-transformers pipeline: a module fastbert cannot reproduce is a InputError
    here, before the first row is written, not a failure in the middle of the encode."""
    from fastbert.sentence.stream import sentence_pipeline

    model = load_pretrained(path, device, dtype, backend, gemm)
    try:
        sentence_pipeline(model)
    except (ValueError, OSError) as err:
        raise InputError(f"cannot encode with the model in {path}: {one_line(err)}") from err
    return model


def ray_model(option):
    """--ray: the default model or a local folder, checked here; a Hub id goes to the actors as it is, since
    each node fetches it into its own cache (the driver needs no copy, nor access to the Hub)."""
    if option is not None and not Path(option).expanduser().exists():
        return option
    return model_path(option)


def _encode_with_ray(args, model):
    """`fastbert encode --ray [ADDRESS]`: the options checked, then fastbert.parallel.ray.encode_files;
    `model` a checked folder or a Hub id -> exit code."""
    from fastbert.parallel.ray import encode_files, input_format, output_format, start_ray

    if args.texts or args.input in (None, "-") or args.output is None:
        raise InputError("--ray reads --input and writes --output (files or folders, local or URIs such as "
                         "s3://...), not TEXT arguments or stdin")
    if args.devices:
        raise InputError("--ray places its workers itself: give --ray-actors N, not --devices")
    if args.resume or args.overwrite:
        raise InputError(f"{'--resume' if args.resume else '--overwrite'} does not apply to --ray: Ray Data "
                         "writes a new output folder in one job")
    if args.input_format not in (None, "parquet", "jsonl"):
        raise InputError(f"--ray reads Parquet or JSONL, not --input-format {args.input_format}")
    source_format = {"parquet": "parquet", "jsonl": "json"}.get(args.input_format)
    if args.device not in (None, "cpu", "cuda"):
        raise InputError(f"--device with --ray is cpu or cuda (Ray assigns each actor its GPU), got {args.device!r}")
    try:
        import ray
        import ray.data  # noqa: F401 - the extra installs both; fail here, not inside a job
    except ImportError as err:
        raise InputError("--ray needs Ray Data: pip install 'fastbert[ray]'") from err
    try:
        output_format(args.output, args.input, source_format or input_format(args.input))
    except (ValueError, OSError) as err:
        raise InputError(str(err)) from err
    started = start_ray(args.ray or None)
    try:
        written = encode_files(args.input, args.output, model, source_format=source_format,
                               actors=args.ray_actors, device=args.device, text_column=args.text_field,
                               embedding_column=args.embedding_field, dtype=args.dtype, backend=args.backend,
                               gemm=args.gemm, pooling=args.pooling, normalize=args.normalize,
                               max_length=args.max_length, batch_size=args.batch_size, max_tokens=args.max_tokens,
                               chunk_size=args.chunk_size)
    finally:
        if started:
            ray.shutdown()
    print(f"wrote the embeddings of {args.input} to folder {args.output} ({written}, through Ray Data)",
          file=sys.stderr)
    return 0


def cmd_encode(args):
    import functools

    from fastbert.corpus.partial import check_output
    from fastbert.corpus.readers import open_reader, require_pyarrow

    if args.ray is not None:  # Ray Data reads and writes: fastbert.parallel.ray
        return _encode_with_ray(args, ray_model(args.model))
    if args.devices:
        _check_devices(args)
    # Everything a user gave is checked before the model loads; the output before anything is written.
    output = suffix = None
    if args.output is not None:
        output, suffix = check_output(args.output, args.input)
        if suffix == ".parquet":
            require_pyarrow("Parquet output")
    elif args.resume or args.overwrite:
        raise InputError(f"{'--resume' if args.resume else '--overwrite'} applies to an --output file: "
                         "give --output")
    if args.texts and args.input is not None:
        raise InputError("give texts as arguments or with --input, not both")
    path = model_path(args.model)
    # Imported once the options and the model folder are checked: fastbert.corpus.run imports torch.
    from fastbert.corpus.run import encode_records, write_corpus

    device, dtype, backend = resolve_runtime(args.device, args.dtype, args.backend)
    reader = open_reader(args.input, args.texts, args.input_format, args.text_field)
    # pooling and normalize None: what the folder's sentence-transformers modules say.
    pooling = args.pooling
    options = dict(batch_size=args.batch_size, max_tokens=args.max_tokens, pooling=pooling,
                   normalize=args.normalize, max_length=args.max_length)
    load_model = functools.partial(_load_model, path, device, dtype, backend, args.gemm)
    pools = []  # --devices: the worker pool that stands in for the model, closed however the run ends
    if args.devices:
        def load_model():
            pools.append(_start_pool(path, args))
            return pools[-1]
    progress = _progress_bar(args, reader)
    start = time.perf_counter()
    try:
        if output is None:
            model = load_model()
            encode_records(reader, model, options, args.text_field, args.chunk_size,
                           on_rows=lambda first, records, embeddings: print_embeddings(
                               [record[args.text_field] for record in records], embeddings, first),
                           progress_bar=progress)
            return 0
        # What shapes the rows: a resumed run must match it (device, backend and batching may change), and
        # the model folder's file digests, which the progress record adds once the output is locked.
        settings = {"model": str(path.resolve()), "dtype": str(dtype).removeprefix("torch."), "pooling": pooling,
                    "normalize": args.normalize, "max_length": args.max_length, "text_field": args.text_field,
                    "embedding_field": args.embedding_field, "format": suffix}
        rows, dim, model = write_corpus(output, suffix, settings, args.resume, reader, load_model, options,
                                        args.text_field, args.embedding_field, args.chunk_size, progress,
                                        overwrite=args.overwrite, model_folder=path)
    finally:
        if progress is not None:
            progress.close()
        for pool in pools:
            pool.close()
    seconds = time.perf_counter() - start
    where = (f"workers {model.summary}" if args.devices else
             f"{model.backend}, {model.device}, {str(model.dtype).removeprefix('torch.')}")
    print(f"wrote {rows} x {dim} float32 embeddings to {output} ({where}; {seconds:.1f} s)", file=sys.stderr)
    return 0


def encode_arguments():
    """`fastbert encode`'s own options as a table of (flags, add_argument keywords): one row per option."""
    from fastbert.corpus.readers import INPUT_FORMATS
    from fastbert.corpus.writers import OUTPUT_FORMATS

    return [
        (("texts",), dict(nargs="*", metavar="TEXT", help="texts to embed")),
        (("--input", "-i"), dict(metavar="FILE", help="read records from FILE ('-' for stdin)")),
        (("--input-format",), dict(choices=INPUT_FORMATS,
                                   help="default: by suffix (.jsonl/.ndjson, .csv, .parquet), else text lines "
                                        "(JSONL when the first non-blank line is a JSON object)")),
        (("--text-field",), dict(default="text", metavar="NAME",
                                 help="the field (JSONL) or column (CSV, Parquet) holding the text (default: text)")),
        (("--output", "-o"), dict(metavar="FILE", help=f"write embeddings to FILE: {', '.join(OUTPUT_FORMATS)}")),
        (("--embedding-field",), dict(default="embedding", metavar="NAME",
                                      help="JSONL field / Parquet column of the embedding (default: embedding)")),
        (("--resume",), dict(action="store_true",
                             help="continue an interrupted run from the rows complete in FILE.partial (same "
                                  "input, model files and options); keep them if this run is interrupted too")),
        (("--overwrite",), dict(action="store_true",
                                help="replace FILE when it exists (default: refuse, leaving it as it is)")),
        (("--chunk-size",), dict(type=positive_int, default=CHUNK_TEXTS, metavar="N",
                                 help=f"records read, embedded and written at a time (default {CHUNK_TEXTS}; "
                                      "the first chunks are smaller so that rows appear early)")),
        (("--pooling",), dict(choices=POOLING_MODE_NAMES,
                              help="default: what the model folder declares (1_Pooling/config.json), else mean")),
        (("--normalize",), dict(action=argparse.BooleanOptionalAction, default=None,
                                help="unit-length vectors, or (--no-normalize) without the folder's final "
                                     "Normalize (default: as the folder's sentence-transformers modules say)")),
        (("--max-tokens",), dict(type=positive_int, default=MAX_BATCH_TOKENS, metavar="N",
                                 help=f"padded tokens per batch (default {MAX_BATCH_TOKENS})")),
        (("--batch-size",), dict(type=positive_int, default=None, metavar="N",
                                 help="at most N texts per batch (default: --max-tokens alone decides)")),
        (("--max-length",), dict(type=max_length, metavar="N",
                                 help="truncate texts to N tokens (default: the model folder's max_seq_length)")),
        (("--progress",), dict(action=argparse.BooleanOptionalAction, default=None,
                               help=f"progress bar on stderr (default: on a terminal, unless fewer than "
                                    f"{PROGRESS_MIN_TEXTS} texts are known to come)")),
        (("--devices",), dict(type=_device_list, metavar="LIST",
                              help="one worker process per device, input order kept: cuda:0,cuda:1 (or cpu,cpu)")),
        (("--ray",), dict(nargs="?", const="", metavar="ADDRESS",
                          help="run on a Ray cluster through Ray Data (pip install 'fastbert[ray]'): --input and "
                               "--output are Parquet or JSONL files or folders (local or s3://...), the output a "
                               "folder; ADDRESS as ray.init takes it ('auto', 'ray://head:10001'), default "
                               "$RAY_ADDRESS or a local cluster")),
        (("--ray-actors",), dict(type=positive_int, metavar="N",
                                 help="with --ray: encoder actors (default: one per GPU of the cluster, else "
                                      "CPUs - 1)")),
    ]
