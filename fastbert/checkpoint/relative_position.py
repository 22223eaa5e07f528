"""MPNet's relative position bias as a table over distances: built once at load from the checkpoint's
bias embedding, read by attention as position_bias[h, clamp(j - i, -R, R) + R] (fastbert/kernels/attention.py
contract), so no layer computes buckets.

The buckets are T5's bidirectional log-spaced ones with the arithmetic of transformers'
MPNetEncoder.relative_position_bucket (fp32 logarithm, truncation toward zero), so a distance lands in the
bucket transformers gives it on the same device. Every distance of magnitude >= max_distance falls in the
last bucket of its direction, so R = max_distance columns on each side cover all of them exactly.

The engine counts distances between tokens of one packed sequence; transformers counts columns of the padded
batch. The two agree wherever a row's real tokens are contiguous (right- or left-padded, as tokenizers pad);
a mask with holes inside a row would shift transformers' distances and not ours."""

import math

import torch


def relative_position_bucket(distance: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """distance (int64, key index - query index) -> bucket index (int64) in [0, num_buckets).

    Half the buckets serve keys after the query; within a half, distances below a quarter of the buckets
    get a bucket each, longer ones share log-spaced buckets up to max_distance."""
    half = num_buckets // 2
    exact = half // 2
    magnitude = distance.abs()
    # log(0) is -inf here, but those entries take the exact branch below.
    log_ratio = torch.log(magnitude.float() / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (half - exact)).to(torch.long)).clamp(max=half - 1)
    return (distance > 0).to(torch.long) * half + torch.where(magnitude < exact, magnitude, far)


def position_bias_table(embedding: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """embedding [buckets, heads] -> contiguous float32 [heads, 2 * max_distance + 1] on the embedding's
    device: column d + max_distance holds the bias of distance d = j - i."""
    if embedding.dim() != 2 or embedding.shape[0] < num_buckets:
        raise ValueError(f"the relative position bias must be [buckets >= {num_buckets}, heads], "
                         f"got {list(embedding.shape)}")
    distance = torch.arange(-max_distance, max_distance + 1, device=embedding.device)
    buckets = relative_position_bucket(distance, num_buckets, max_distance)
    return embedding.detach().float()[buckets].t().contiguous()
