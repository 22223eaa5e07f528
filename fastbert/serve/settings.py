"""What a server is told: its knobs (ServeSettings, one field per `fastbert serve` option) and the models it
serves (ServedModelSpec). Plain dataclasses without imports of fastapi or torch, so a caller (the CLI, a
Ray deployment) can build them before anything heavy loads."""

from dataclasses import dataclass

from fastbert.defaults import MAX_BATCH_TOKENS

# "auto" reads the folder: a *ForSequenceClassification checkpoint is a classifier (/rerank, /predict),
# anything else an embedding model (/embed, /v1/embeddings).
MODEL_KINDS = ("auto", "embed", "classify")


@dataclass
class ServeSettings:
    """The server's knobs; `fastbert serve --help` tells each one's meaning.

    max_batch_tokens: real (unpadded) tokens per batch the executors run; a request longer than that is
      split over several batches. max_concurrent_requests: inference requests in flight at once; one more
      is a 429. max_client_batch_size: inputs per request. payload_limit: request body bytes.
    auto_truncate: a too-long input is cut to the model's length (a request's `truncate` overrides it);
      off, it is a 413 naming the limit. api_key: every route but /health wants `Authorization: Bearer KEY`.
    devices: one executor per device, e.g. ["cuda:0", "cuda:1"] (None: the default device).
    drain_seconds: how long shutdown waits for in-flight requests to finish."""

    max_batch_tokens: int = MAX_BATCH_TOKENS
    max_concurrent_requests: int = 512
    max_client_batch_size: int = 2048
    payload_limit: int = 2_000_000
    auto_truncate: bool = True
    api_key: str | None = None
    devices: list | None = None
    dtype: str | None = None
    backend: str = "auto"
    drain_seconds: float = 30.0

    def __post_init__(self):
        for name in ("max_batch_tokens", "max_concurrent_requests", "max_client_batch_size", "payload_limit"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.auto_truncate, bool):
            raise TypeError(f"auto_truncate must be True or False, got {self.auto_truncate!r}")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise ValueError("api_key must be a non-empty string or None")
        if self.devices is not None:
            if isinstance(self.devices, str):
                self.devices = [part.strip() for part in self.devices.split(",")]
            self.devices = list(self.devices)
            if not self.devices:
                raise ValueError("devices must list at least one device, or be None")
        if not self.drain_seconds > 0:
            raise ValueError(f"drain_seconds must be > 0, got {self.drain_seconds!r}")


@dataclass
class ServedModelSpec:
    """One model to serve: a checkpoint folder or Hub id, the name clients ask for it by (default: the Hub id,
    or the folder's name), and its kind (MODEL_KINDS)."""

    path: str
    name: str | None = None
    kind: str = "auto"

    def __post_init__(self):
        self.path = str(self.path)
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        if self.name is not None and (not isinstance(self.name, str) or not self.name.strip()):
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
