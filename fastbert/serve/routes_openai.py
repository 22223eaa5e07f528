"""OpenAI's embeddings API: POST /v1/embeddings (and /embeddings), GET /v1/models."""

import base64
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from . import inference
from .errors import ServeError
from .schemas import EmbeddingRequest

router = APIRouter()
_CREATED = int(time.time())


@router.post("/v1/embeddings")
@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request):
    state = request.app.state.serve
    model = state.registry.get(body.model, "embed")
    kind, inputs = inference.split_inputs(body.input)
    inference.check_count(state, len(inputs), "input")
    timing = inference.Timing()
    if kind == "texts":
        empty = next((i for i, text in enumerate(inputs) if not text), None)
        if empty is not None:  # as OpenAI's API: an empty string is no input
            raise ServeError(400, f"input[{empty}] is an empty string", "Empty", param="input")
        timing.characters = sum(len(text) for text in inputs)
        group, sequences = await inference.prepare(state, model, timing, model.prepare_texts, inputs,
                                                   truncate=state.settings.auto_truncate)
    else:
        group, sequences = (model.name, 0), model.check_ids(inputs)
    vectors = await inference.run(state, request, model, group, sequences, timing)
    embeddings = inference.finish_embeddings(model, vectors, body.dimensions).numpy()
    if body.encoding_format == "base64":
        # The official SDKs decode base64 as little-endian float32.
        data = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in embeddings]
    else:
        data = [row.tolist() for row in embeddings]
    content = {"object": "list", "model": model.name,
               "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
               "usage": {"prompt_tokens": timing.tokens, "total_tokens": timing.tokens}}
    return JSONResponse(content, headers=timing.headers())


@router.get("/v1/models")
async def models(request: Request):
    registry = request.app.state.serve.registry
    return {"object": "list", "data": [{"id": name, "object": "model", "created": _CREATED, "owned_by": "fastbert"}
                                       for name in registry.models]}
