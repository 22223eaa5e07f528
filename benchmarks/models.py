"""Models and inputs for the encoder benchmarks: random-weight checkpoints, the implementations under
comparison, seeded variable-length batches and synthetic sentences.

Variable-length batches (the padding distribution, stated once): for a target padding ratio p over a
[B, S] batch, the first sequence has length S (so the padded length is exactly S) and the other B-1
are drawn uniformly from [mS - w, mS + w], rounded and clipped to [1, S], where m = ((1-p)B - 1)/(B-1)
makes the expected real fraction 1-p overall and w = min(m, 1-m)*S. The draws are stratified (one in
each of B-1 equal slices of that range, then shuffled) so that the realised padding sits close to p
even for small batches. Seeded per (B, S, p), so every
implementation and every run sees the same batch. The realised padding ratio (1 - real tokens / B*S)
is recorded with each result.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from benchmarks.flops import BERT_BASE, MINILM_L6, EncoderShape

# name: (shape, vocab size, max positions)
MODELS = {
    "bert-base": (BERT_BASE, 30522, 512),
    "minilm": (MINILM_L6, 30522, 512),
    "tiny": (EncoderShape(layers=2, hidden=64, heads=2, intermediate=128), 128, 64),
}
LENGTHS_DIST = "first = S; rest stratified uniform[mS - w, mS + w], m = ((1-p)B-1)/(B-1), w = min(m, 1-m)S"


def random_checkpoint(name: str, root: Path) -> Path:
    """A transformers BertModel with the named shapes and random weights, saved as a checkpoint folder."""
    import transformers

    shape, vocab, positions = MODELS[name]
    config = transformers.BertConfig(
        vocab_size=vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, intermediate_size=shape.intermediate,
        max_position_embeddings=positions, hidden_act="gelu")
    torch.manual_seed(0)
    folder = Path(root) / name
    transformers.BertModel(config).eval().save_pretrained(folder)
    return folder


def sample_lengths(batch: int, seq: int, padding: float) -> list[int]:
    """Seeded sequence lengths for a [batch, seq] batch with about `padding` of it padding."""
    if padding <= 0 or batch == 1:
        return [seq] * batch
    rng = random.Random(f"{batch}-{seq}-{padding:.3f}")
    real = max(0.0, ((1 - padding) * batch - 1) / (batch - 1))  # mean real fraction of the other rows
    mean, half_width = real * seq, min(real, 1 - real) * seq
    slices = [(i + rng.random()) / (batch - 1) for i in range(batch - 1)]  # stratified in [0, 1)
    rng.shuffle(slices)
    return [seq] + [min(seq, max(1, round(mean - half_width + 2 * half_width * u))) for u in slices]


def padded_batch(lengths: list[int], seq: int, vocab: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask [B, seq]: random ids on the first `length` positions, pad id 0 after."""
    generator = torch.Generator().manual_seed(len(lengths) * 7919 + seq)
    ids = torch.randint(5, vocab, (len(lengths), seq), generator=generator)
    mask = (torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]).long()
    return (ids * mask).to(device), mask.to(device)


def load_fastbert(path: Path, dtype: torch.dtype, device: torch.device, backend: str):
    import fastbert

    return fastbert.FastBertModel.from_pretrained(path, dtype=dtype, device=device, backend=backend)


def load_hf(path: Path, dtype: torch.dtype, device: torch.device, attention: str):
    """transformers BertModel with attn_implementation 'eager' or 'sdpa'."""
    import transformers

    model = transformers.BertModel.from_pretrained(path, attn_implementation=attention, dtype=dtype)
    return model.to(device).eval()


# Single words that BERT's uncased WordPiece vocabulary keeps whole: n words ~ n tokens.
WORDS = ("the of and to in is was for on are with as by at from his that had not but have this they which "
         "one you were all her she there would their we him been has when who will more no if out so said "
         "what up its about into than them can only other new some could time these two may then do first "
         "any my now such like our over man me even most made after also did many before must through back "
         "years where much your way well down should because each just those people how too little state "
         "good very make world still own see men work long get here between both life being under never day "
         "same another know while last might us great old year off come since against go came right").split()


def sentences(count: int, words: int, seed: int = 0) -> list[str]:
    """`count` synthetic sentences of about `words` tokens each (plus [CLS] and [SEP])."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(count)]
