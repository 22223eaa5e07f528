"""Pooling on packed tokens against sentence-transformers' Pooling on the padded batch."""

import pytest
import torch

from fastbert.sentence.pooling import POOLING_MODES, pool
from tests.tolerances import POOLING_FP32, POOLING_HALF_INPUT

st_modules = pytest.importorskip("sentence_transformers.sentence_transformer.modules")

LENGTHS = [1, 7, 63, 2, 5]


def padded_and_packed(lengths, hidden_size=24, seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(len(lengths), max(lengths), hidden_size, generator=generator, dtype=torch.float64)
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    hidden[mask == 0] = float("nan")  # padding must never be read
    offsets = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    return hidden, mask, hidden[mask.bool()], offsets


@pytest.mark.parametrize("modes", [(mode,) for mode in POOLING_MODES] + [tuple(POOLING_MODES), ("mean", "cls")])
@pytest.mark.parametrize("skip", [0, 3])
def test_packed_pooling_matches_sentence_transformers(modes, skip):
    hidden, mask, packed, offsets = padded_and_packed(LENGTHS)
    reference_module = st_modules.Pooling(hidden.shape[-1], pooling_mode=modes, include_prompt=skip == 0)
    features = {"token_embeddings": torch.nan_to_num(hidden, nan=0.0), "attention_mask": mask}
    if skip:
        features["prompt_length"] = skip
    reference = reference_module(features)["sentence_embedding"]
    ours = pool(packed.float(), offsets, modes, skip)
    assert ours.dtype == torch.float32 and ours.shape == (len(LENGTHS), hidden.shape[-1] * len(modes))
    # fp32 sums of at most 63 terms of O(1) against an fp64 reference.
    torch.testing.assert_close(ours.double(), reference, **POOLING_FP32)


def test_half_precision_hidden_states_are_pooled_in_fp32():
    """Sums of fp16 hidden states accumulate in fp32 (as sentence-transformers does): the result is the
    fp64 pooling of the fp16 values to fp32 rounding, not to fp16's."""
    hidden, mask, packed, offsets = padded_and_packed(LENGTHS)
    modes = ("mean", "weightedmean")
    ours = pool(packed.half(), offsets, modes)
    features = {"token_embeddings": torch.nan_to_num(hidden, nan=0.0).half().double(), "attention_mask": mask}
    reference = st_modules.Pooling(hidden.shape[-1], pooling_mode=modes)(features)["sentence_embedding"]
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), reference, **POOLING_HALF_INPUT)
