"""Prometheus metrics, one registry per app (several apps in one process, as tests run them, never share
counters): requests and errors by route and status, queue depth, batch sizes in tokens and sequences, and
latency split into tokenization, queue and inference."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("fastbert_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.errors = Counter("fastbert_request_errors", "Requests answered with a 4xx or 5xx", ["route", "status"],
                              registry=r)
        self.queue_depth = Gauge("fastbert_queue_sequences", "Sequences queued for the executors", registry=r)
        self.in_flight = Gauge("fastbert_requests_in_flight", "Inference requests being served", registry=r)
        self.batch_tokens = Histogram("fastbert_batch_tokens", "Real tokens per batch", registry=r,
                                      buckets=(16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536))
        self.batch_size = Histogram("fastbert_batch_size", "Sequences per batch", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.tokenize_seconds = Histogram("fastbert_tokenization_seconds", "Tokenization time per request",
                                          registry=r, buckets=_SECONDS)
        self.queue_seconds = Histogram("fastbert_queue_seconds", "Time from queued to first batch, per request",
                                       registry=r, buckets=_SECONDS)
        self.inference_seconds = Histogram("fastbert_inference_seconds", "Time from first to last batch, per "
                                           "request", registry=r, buckets=_SECONDS)
        self.request_seconds = Histogram("fastbert_request_seconds", "Total time per inference request",
                                         registry=r, buckets=_SECONDS)

    def on_batch(self, tokens, size, queued):
        """A batch taken from the queue: its size, and the sequences left queued."""
        self.queue_depth.set(queued)
        self.batch_tokens.observe(tokens)
        self.batch_size.observe(size)

    def render(self):
        return generate_latest(self.registry)
