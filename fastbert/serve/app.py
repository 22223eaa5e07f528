"""build_app: the server as an ASGI app any host can run (uvicorn in `fastbert serve`, Ray Serve, a test).

The models load when the app is built; the executors (one thread per device, fastbert.serve.batching)
start on the lifespan's startup and, on shutdown, finish the queued work (bounded by drain_seconds) before
they stop. One pure-ASGI middleware runs in front of the routes: the API key, the payload limit, the
concurrency limit (429), and the request metrics."""

import contextlib
import hmac
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI

from . import errors
from .batching import Executor, Scheduler
from .metrics import Metrics
from .registry import load_models
from .routes_openai import router as openai_router
from .routes_tei import router as tei_router
from .settings import ServedModelSpec, ServeSettings

log = logging.getLogger("fastbert.serve")

# Routes that run a model: these count toward max_concurrent_requests. Everything else is cheap.
INFERENCE_ROUTES = frozenset({"/v1/embeddings", "/embeddings", "/embed", "/rerank", "/predict"})
KNOWN_ROUTES = INFERENCE_ROUTES | {"/tokenize", "/decode", "/info", "/health", "/metrics", "/v1/models"}
# Consecutive failed batches after which /health reports the server unhealthy.
UNHEALTHY_AFTER_FAILURES = 3


class ServerState:
    """What the routes reach through request.app.state.serve."""

    def __init__(self, registry, settings):
        self.registry, self.settings = registry, settings
        self.metrics = Metrics()
        self.scheduler = Scheduler(settings.max_batch_tokens, self.metrics.on_batch)
        self.executors = [Executor(self.scheduler, device, self._run, device) for device in registry.devices]
        # One tokenizer thread per model: a Tokenizer must not be called from two threads at once.
        self._tokenizers = {name: ThreadPoolExecutor(1, thread_name_prefix=f"fastbert-tokenize-{index}")
                            for index, name in enumerate(registry.models)}
        self.in_flight = 0
        self.started = False

    def _run(self, model_name, group, sequences, device):
        return self.registry.models[model_name].run(group, sequences, device)

    def tokenizer_pool(self, name):
        return self._tokenizers[name]

    def accepting(self):
        """Whether work can be queued: started, with an executor alive (failing batches do not stop it: a
        batch that succeeds is what makes the server healthy again)."""
        return self.started and any(e.alive for e in self.executors)

    def healthy(self):
        return self.started and all(e.alive and e.failures_in_a_row < UNHEALTHY_AFTER_FAILURES
                                    for e in self.executors)

    def start(self):
        for executor in self.executors:
            executor.start()
        self.started = True

    def stop(self):
        """Finish what is queued (within drain_seconds), then stop the executors and tokenizer threads."""
        self.scheduler.close()
        deadline = time.monotonic() + self.settings.drain_seconds
        for executor in self.executors:
            if not executor.join(max(0.0, deadline - time.monotonic())):
                log.warning("executor on %s still busy after %.0f s; leaving it", executor.device,
                            self.settings.drain_seconds)
        for pool in self._tokenizers.values():
            pool.shutdown(wait=False, cancel_futures=True)
        self.started = False


class _Guard:
    """Auth, payload limit, concurrency limit and request metrics, before any route runs."""

    def __init__(self, app, state):
        self.app, self.state = app, state
        key = state.settings.api_key
        self._expected = None if key is None else f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        route = path if path in KNOWN_ROUTES else "other"
        status = {"code": 500}

        async def counted_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        refused = self._refusal(scope)
        inference = refused is None and path in INFERENCE_ROUTES and scope["method"] == "POST"
        if inference and self.state.in_flight >= self.state.settings.max_concurrent_requests:
            inference = False  # refused: it never counted as in flight
            refused = errors.error_response(path, 429, "too many concurrent requests: the server is at its "
                                            f"max_concurrent_requests of {self.state.settings.max_concurrent_requests}",
                                            "Overloaded", code="rate_limit_exceeded")
        started = time.perf_counter()
        try:
            if refused is not None:
                await refused(scope, receive, counted_send)
                return
            if inference:
                self.state.in_flight += 1
                self.state.metrics.in_flight.set(self.state.in_flight)
            await self.app(self._as_json(scope), self._limited(receive, path), counted_send)
        finally:
            if inference:
                self.state.in_flight -= 1
                self.state.metrics.in_flight.set(self.state.in_flight)
                self.state.metrics.request_seconds.observe(time.perf_counter() - started)
            code = str(status["code"])
            self.state.metrics.requests.labels(route, code).inc()
            if status["code"] >= 400:
                self.state.metrics.errors.labels(route, code).inc()

    @staticmethod
    def _as_json(scope):
        """Every POST body is JSON, whatever its content-type says (`curl -d` sends a form's), as in TEI."""
        if scope["method"] != "POST":
            return scope
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
        return {**scope, "headers": [*headers, (b"content-type", b"application/json")]}

    def _refusal(self, scope):
        path = scope["path"]
        headers = dict(scope["headers"])
        if self._expected is not None and path != "/health":
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                return errors.error_response(path, 401, "missing or wrong API key: send Authorization: Bearer KEY",
                                             "Validation", code="invalid_api_key",
                                             headers={"www-authenticate": "Bearer"})
        length = headers.get(b"content-length")
        limit = self.state.settings.payload_limit
        if length is not None and (not length.isdigit() or int(length) > limit):
            return errors.error_response(path, 413, f"the request body is larger than the server's payload "
                                                    f"limit of {limit} bytes", "Validation")
        return None

    def _limited(self, receive, path):
        """receive() that refuses a body growing past the payload limit (chunked bodies name no length)."""
        limit, seen = self.state.settings.payload_limit, [0]

        async def limited():
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > limit:
                    raise errors.ServeError(413, f"the request body is larger than the server's payload limit of "
                                                 f"{limit} bytes")
            return message

        return limited


def _specs(models):
    if isinstance(models, (str, ServedModelSpec)):
        models = [models]
    specs = [m if isinstance(m, ServedModelSpec) else ServedModelSpec(str(m)) for m in models]
    if not specs:
        raise ValueError("give at least one model to serve")
    return specs


def build_app(models, settings=None):
    """The server for `models` (ServedModelSpec, or paths / Hub ids) -> a FastAPI app. The models load now;
    the executors run from the app's lifespan startup to its shutdown."""
    settings = settings or ServeSettings()
    if not isinstance(settings, ServeSettings):
        raise TypeError(f"settings must be a ServeSettings, got {type(settings).__name__}")
    state = ServerState(load_models(_specs(models), settings), settings)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.start()
        try:
            yield
        finally:
            state.stop()

    app = FastAPI(title="fastbert serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state
    errors.install(app)
    app.include_router(openai_router)
    app.include_router(tei_router)
    app.add_middleware(_Guard, state=state)
    return app
