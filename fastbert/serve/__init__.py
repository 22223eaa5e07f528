"""fastbert.serve: an OpenAI- and TEI-compatible HTTP server for embeddings, reranking and classification,
batching requests together under a token budget. `fastbert serve` runs it under uvicorn; any ASGI host can
run `build_app(models, settings)`.

Names load on first use, so `import fastbert.serve` costs no import of fastapi or torch."""

import importlib

_EXPORTS = {
    "build_app": "fastbert.serve.app",
    "ServeSettings": "fastbert.serve.settings",
    "ServedModelSpec": "fastbert.serve.settings",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastbert.serve' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS])
