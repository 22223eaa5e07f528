"""Hugging Face text-embeddings-inference's routes, in its request and response shapes: /embed, /rerank,
/predict, /tokenize, /decode, /info, /health, /metrics."""

import torch
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from fastbert import __version__

from . import inference
from .errors import ServeError
from .schemas import DecodeRequest, EmbedRequest, PredictRequest, RerankRequest, TokenizeRequest

router = APIRouter()


def _truncate(state, requested):
    return state.settings.auto_truncate if requested is None else requested


@router.post("/embed")
async def embed(body: EmbedRequest, request: Request):
    state = request.app.state.serve
    model = state.registry.get(body.model, "embed")
    kind, inputs = inference.split_inputs(body.inputs)
    inference.check_count(state, len(inputs), "inputs")
    timing = inference.Timing()
    if kind == "texts":
        timing.characters = sum(len(text) for text in inputs)
        group, sequences = await inference.prepare(
            state, model, timing, model.prepare_texts, inputs, prompt_name=body.prompt_name,
            truncate=_truncate(state, body.truncate), direction=body.truncation_direction.lower())
    else:
        group, sequences = (model.name, 0), model.check_ids(inputs)
    vectors = await inference.run(state, request, model, group, sequences, timing)
    # TEI's normalize=true (its default) L2-normalizes; false returns the vectors before any Normalize.
    embeddings = inference.finish_embeddings(model, vectors, body.dimensions, normalize=body.normalize)
    return JSONResponse(embeddings.tolist(), headers=timing.headers())


async def _classify(state, request, model, firsts, seconds, truncate, direction, timing):
    timing.characters = sum(map(len, firsts)) + (sum(map(len, seconds)) if seconds else 0)
    group, sequences = await inference.prepare(state, model, timing, model.prepare_pairs, firsts, seconds,
                                               truncate=truncate, direction=direction)
    return torch.stack(await inference.run(state, request, model, group, sequences, timing))


@router.post("/rerank")
async def rerank(body: RerankRequest, request: Request):
    state = request.app.state.serve
    model = state.registry.get(body.model, "classify")
    if model.num_labels != 1:
        raise ServeError(400, f"model {model.name!r} has {model.num_labels} labels; reranking needs a model with one "
                              "score (use /predict)")
    inference.check_count(state, len(body.texts), "texts")
    timing = inference.Timing()
    logits = await _classify(state, request, model, [body.query] * len(body.texts), body.texts,
                             _truncate(state, body.truncate), body.truncation_direction.lower(), timing)
    scores = model.scores(logits, raw=body.raw_scores)[:, 0].tolist()
    ranks = []
    for index, score in sorted(enumerate(scores), key=lambda pair: -pair[1]):
        rank = {"index": index, "score": score}
        if body.return_text:
            rank["text"] = body.texts[index]
        ranks.append(rank)
    return JSONResponse(ranks, headers=timing.headers())


@router.post("/predict")
async def predict(body: PredictRequest, request: Request):
    state = request.app.state.serve
    model = state.registry.get(body.model, "classify")
    inputs = body.inputs
    single = isinstance(inputs, str) or (len(inputs) == 2 and all(isinstance(t, str) for t in inputs))
    batch = [inputs] if single else list(inputs)
    inference.check_count(state, len(batch), "inputs")
    firsts, seconds = [], []
    for index, item in enumerate(batch):
        if isinstance(item, str):
            item = [item]
        if len(item) not in (1, 2):
            raise ServeError(422, f"inputs[{index}] must be a text or a pair of texts, got {len(item)} texts")
        firsts.append(item[0])
        seconds.append(item[1] if len(item) == 2 else None)
    if any(s is None for s in seconds) and any(s is not None for s in seconds):
        raise ServeError(422, "inputs mixes single texts and pairs: send one kind per request")
    timing = inference.Timing()
    logits = await _classify(state, request, model, firsts, None if seconds[0] is None else seconds,
                             _truncate(state, body.truncate), body.truncation_direction.lower(), timing)
    scores = model.scores(logits, raw=body.raw_scores).tolist()
    labels = [model.id2label.get(i, str(i)) for i in range(model.num_labels)]
    results = [sorted(({"score": s, "label": label} for s, label in zip(row, labels)), key=lambda p: -p["score"])
               for row in scores]
    return JSONResponse(results[0] if single else results, headers=timing.headers())


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request):
    state = request.app.state.serve
    model = state.registry.get(body.model, "embed") if body.model or _has(state, "embed") else \
        state.registry.get(None, "classify")
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    inference.check_count(state, len(texts), "inputs")
    prompt = ""
    if body.prompt_name is not None:
        if model.kind != "embed":
            raise ServeError(422, "prompt_name applies to embedding models")
        try:
            prompt = model.pipeline.resolve_prompt(None, body.prompt_name) or ""
        except ValueError as err:
            raise ServeError(422, str(err)) from None

    def spans():
        return [[{"id": i, "text": token, "special": special, "start": None if special else start,
                  "stop": None if special else stop}
                 for i, token, start, stop, special in model.tokenizer.token_spans(prompt + text,
                                                                                   body.add_special_tokens)]
                for text in texts]

    return await inference.prepare(state, model, inference.Timing(), spans)


def _has(state, kind):
    return any(model.kind == kind for model in state.registry.models.values())


@router.post("/decode")
async def decode(body: DecodeRequest, request: Request):
    state = request.app.state.serve
    model = state.registry.get(body.model, "embed") if body.model or _has(state, "embed") else \
        state.registry.get(None, "classify")
    sequences = [body.ids] if not body.ids or isinstance(body.ids[0], int) else body.ids
    inference.check_count(state, len(sequences), "ids")
    for index, ids in enumerate(sequences):
        bad = next((i for i in ids if not 0 <= i < model.vocab_size), None)
        if bad is not None:
            raise ServeError(422, f"ids[{index}] holds token id {bad}, outside this model's vocabulary of "
                                  f"{model.vocab_size} ids")
    return [model.tokenizer.decode(ids, body.skip_special_tokens) for ids in sequences]


@router.get("/info")
async def info(request: Request, model: str | None = None):
    state = request.app.state.serve
    served = state.registry.models
    chosen = served.get(model) if model else next(iter(served.values()))
    if chosen is None:
        raise ServeError(404, f"model {model!r} is not served here; served: {sorted(served)}")
    settings = state.settings
    return {"model_id": chosen.name, "model_sha": None, "model_dtype": chosen.dtype, "model_type": chosen.info(),
            "max_concurrent_requests": settings.max_concurrent_requests, "max_input_length": chosen.max_length,
            "max_batch_tokens": settings.max_batch_tokens, "max_batch_requests": None,
            "max_client_batch_size": settings.max_client_batch_size, "auto_truncate": settings.auto_truncate,
            "tokenization_workers": 1, "version": __version__, "devices": state.registry.devices,
            "served_models": [{"name": m.name, "kind": m.kind, "path": str(m.path)} for m in served.values()]}


@router.get("/health")
async def health(request: Request):
    state = request.app.state.serve
    if not state.healthy():
        raise ServeError(503, "unhealthy: an executor has stopped or its last batches failed", "Unhealthy")
    return Response(status_code=200)


@router.get("/metrics")
async def metrics(request: Request):
    return Response(request.app.state.serve.metrics.render(), media_type="text/plain; version=0.0.4")
