"""Grid planning shared by the GEMM launchers (kernels/linear.py, kernels/linear_persistent.py): how many
programs a tile config gives, which configs keep every SM busy, and the split-K plan where none does (the
pruning rule they are given is _common.pruning_rule). Host-side only; imports torch and triton."""

import functools
from typing import NamedTuple

import torch
import triton


def tiles_of(config: triton.Config, M: int, N: int) -> int:
    """Output tiles (programs without a split) of an [M, N] product in this config's tile shape."""
    return triton.cdiv(M, config.kwargs["BLOCK_M"]) * triton.cdiv(N, config.kwargs["BLOCK_N"])


def filling_mask(configs, M, N, num_sms, fits=lambda config: True) -> int:
    """Bitmask of the configs (by position) that fit and give at least num_sms tiles for an [M, N] output."""
    return sum(1 << i for i, config in enumerate(configs) if fits(config) and tiles_of(config, M, N) >= num_sms)


class SplitK(NamedTuple):
    """A launch that splits K: the tile config, and into how many slices (1: no split, the tiles alone fill)."""

    config: triton.Config
    splits: int

    def programs(self, M, N):
        return tiles_of(self.config, M, N) * self.splits


def plan_split_k(M, N, K, num_sms, configs) -> SplitK:
    """The launch for a product whose autotuned tiles all leave SMs idle: the largest tile (of `configs`,
    largest first; row tiles shrunk to M's power of two when M < 64) that reaches num_sms programs with at
    least two K blocks per split, else with one; failing both, the most programs any tile can give. Each
    split is a contiguous run of K blocks; their counts differ by at most one."""
    rows = max(16, triton.next_power_of_2(max(M, 1)))
    shrunk = []
    for config in configs:
        tiles = dict(config.kwargs, BLOCK_M=min(config.kwargs["BLOCK_M"], rows))
        if all(tiles != c.kwargs for c in shrunk):
            shrunk.append(triton.Config(tiles, num_warps=config.num_warps, num_stages=config.num_stages))
    best = None
    for min_blocks in (2, 1):
        for config in shrunk:
            tiles = tiles_of(config, M, N)
            k_blocks = triton.cdiv(K, config.kwargs["BLOCK_K"])
            plan = SplitK(config, max(1, min(triton.cdiv(num_sms, tiles), k_blocks // min_blocks)))
            if plan.programs(M, N) >= num_sms:
                return plan
            if best is None or plan.programs(M, N) > best.programs(M, N):
                best = plan
    return best


class LaunchPlan(NamedTuple):
    """How a product is launched: autotuned among the configs in the `filling` bitmask (each gives at least
    one program per SM), or, when none does (filling == 0), as the split-K launch `split`."""

    filling: int
    split: SplitK | None


def plan_launch(M, N, K, num_sms, configs, split_configs, fits=lambda config: True) -> LaunchPlan:
    """The launcher's grid decision for an [M, K] x [K, N] product on num_sms SMs, given the autotuner's
    configs, the split-K tiles and the pruning rule `fits` (shared memory and registers on the GPU)."""
    filling = filling_mask(configs, M, N, num_sms, fits)
    if filling:
        return LaunchPlan(filling, None)
    return LaunchPlan(0, plan_split_k(M, N, K, num_sms, [config for config in split_configs if fits(config)]))


@functools.cache
def _device_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def check_num_sms(num_sms):
    """num_sms: None or a positive Python int."""
    if num_sms is not None and (isinstance(num_sms, bool) or not isinstance(num_sms, int) or num_sms < 1):
        raise ValueError(f"num_sms must be a positive int, got {num_sms!r}")


def resolve_num_sms(device, num_sms=None) -> int:
    """The SM count grids are sized for: num_sms if given, else the GPU's own (read at launch, cached per
    device); under the interpreter 1, i.e. no split unless a test asks for one by passing num_sms."""
    if num_sms is not None:
        check_num_sms(num_sms)
        return num_sms
    if device.type != "cuda":
        return 1
    return _device_sms(device.index if device.index is not None else torch.cuda.current_device())


def reduce_block_m(M, N, num_sms, block_n=128) -> int:
    """Rows per program of the split-K reduction: the most (up to 16) that still give num_sms programs."""
    for rows in (16, 8, 4, 2):
        if triton.cdiv(M, rows) * triton.cdiv(N, block_n) >= num_sms:
            return rows
    return 1
