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

Sentence corpora (encode benchmarks): CORPUS_LENGTHS_DIST below, words drawn uniformly from WORDS; a
random checkpoint becomes a sentence-transformers folder with `add_sentence_files` (an offline WordPiece
tokenizer, mean pooling and normalisation, as all-MiniLM-L6-v2 declares them), so fastbert,
transformers and sentence-transformers all load it without a network.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch

from benchmarks.flops import BERT_BASE, MINILM_L6, MODERNBERT_BASE, EncoderShape

# name: (shape, vocab size, max positions)
MODELS = {
    "bert-base": (BERT_BASE, 30522, 512),
    "minilm": (MINILM_L6, 30522, 512),
    "tiny": (EncoderShape(layers=2, hidden=64, heads=2, intermediate=128), 128, 64),
    # all-mpnet-base-v2's shapes: BERT-base plus the relative-position bias; 514 positions serve 512 tokens.
    "mpnet-base": (BERT_BASE, 30527, 514),
    "modernbert-base": (MODERNBERT_BASE, 50368, 8192),
}
# The transformers config and model class of each benchmark model (default: BERT's), so a random checkpoint
# of another family has that family's layers, and transformers runs it through its own classes.
_TRANSFORMERS_CLASSES = {"mpnet-base": ("MPNetConfig", "MPNetModel"),
                         "modernbert-base": ("ModernBertConfig", "ModernBertModel")}
LENGTHS_DIST = "first = S; rest stratified uniform[mS - w, mS + w], m = ((1-p)B-1)/(B-1), w = min(m, 1-m)S"


def random_checkpoint(name: str, root: Path) -> Path:
    """A transformers BertModel (MPNetModel for mpnet-base, ModernBertModel for modernbert-base, in
    ModernBERT-base's default config) with the named shapes and random weights, saved as a checkpoint folder."""
    import transformers

    shape, vocab, positions = MODELS[name]
    config_class, model_class = (getattr(transformers, c) for c in
                                 _TRANSFORMERS_CLASSES.get(name, ("BertConfig", "BertModel")))
    activation = {"hidden_activation" if shape.glu else "hidden_act": "gelu"}
    config = config_class(
        vocab_size=vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, intermediate_size=shape.intermediate,
        max_position_embeddings=positions, **activation)
    torch.manual_seed(0)
    folder = Path(root) / name
    model_class(config).eval().save_pretrained(folder)
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
    """The checkpoint's transformers base model (BertModel, MPNetModel, ModernBertModel) with attn_implementation
    'eager' or 'sdpa'."""
    import transformers

    model = transformers.AutoModel.from_pretrained(path, attn_implementation=attention, dtype=dtype)
    return model.to(device).eval()


def best_attention(path: Path) -> str:
    """'sdpa' where the checkpoint's transformers class has it, else 'eager' (MPNet's attention, with its
    relative-position bias, is eager only)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    model_class = transformers.MODEL_MAPPING[type(config)]
    return "sdpa" if getattr(model_class, "_supports_sdpa", False) else "eager"


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


# Retrieval corpora are mostly short passages with a long tail (MS MARCO passages average ~55 words,
# titles and queries far fewer); every word of WORDS is one token, so tokens ~ words + 2 before truncation.
CORPUS_WORDS = (8, 200)  # clip range of words per text
CORPUS_MEDIAN_WORDS, CORPUS_SIGMA = 32, 0.7
CORPUS_LENGTHS_DIST = (f"words per text = round(lognormal(median {CORPUS_MEDIAN_WORDS}, sigma {CORPUS_SIGMA})) "
                       f"clipped to [{CORPUS_WORDS[0]}, {CORPUS_WORDS[1]}] (mean ~41, ~0.5% at the clip), "
                       "seeded; words uniform from benchmarks.models.WORDS")


def corpus(count: int, seed: int = 0) -> list[str]:
    """`count` texts whose lengths follow CORPUS_LENGTHS_DIST (the same texts for every seed-sharing call)."""
    rng = random.Random(f"corpus-{seed}")
    low, high = CORPUS_WORDS
    lengths = [min(high, max(low, round(rng.lognormvariate(math.log(CORPUS_MEDIAN_WORDS), CORPUS_SIGMA))))
               for _ in range(count)]
    return [" ".join(rng.choice(WORDS) for _ in range(n)) for n in lengths]


_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
ST_MAX_SEQ_LENGTH = 256  # all-MiniLM-L6-v2's sentence_bert_config.json


def benchmark_vocab(size: int) -> list[str]:
    """BERT WordPiece vocabulary of at most `size` entries: the special tokens, punctuation, single letters
    and their ## pieces (so any lowercase word tokenizes), then WORDS. Cut at the model's vocabulary size
    (the tiny model's 128 keeps 71 whole words; the rest split into letters); a larger model's ids past
    the vocabulary are simply never produced."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    entries = [*_SPECIAL_TOKENS, ".", ",", "?", "!", "'", *letters, *(f"##{c}" for c in letters), *WORDS]
    return list(dict.fromkeys(entries))[:size]


def add_sentence_files(folder: Path, name: str) -> Path:
    """Make a random_checkpoint folder a sentence-transformers model, offline: vocab.txt and
    tokenizer_config.json (transformers' BertTokenizer and fastbert's Tokenizer both build WordPiece from
    them), and the module files of all-MiniLM-L6-v2: Transformer -> mean Pooling -> Normalize, with
    max_seq_length 256 (the model's position count if smaller). Idempotent; returns the folder."""
    folder = Path(folder)
    shape, vocab, positions = MODELS[name]
    (folder / "vocab.txt").write_text("\n".join(benchmark_vocab(vocab)) + "\n", encoding="utf-8")
    tokens = dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), _SPECIAL_TOKENS))
    _write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "BertTokenizer", "do_lower_case": True, "tokenize_chinese_chars": True,
        "strip_accents": None, "model_max_length": positions, **tokens})
    _write_json(folder / "sentence_bert_config.json",
                {"max_seq_length": min(ST_MAX_SEQ_LENGTH, positions), "do_lower_case": False})
    _write_json(folder / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}])
    (folder / "1_Pooling").mkdir(exist_ok=True)
    _write_json(folder / "1_Pooling" / "config.json", {
        "word_embedding_dimension": shape.hidden, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False})
    (folder / "2_Normalize").mkdir(exist_ok=True)
    return folder


def sentence_checkpoint(name: str, root: Path) -> Path:
    """random_checkpoint plus add_sentence_files: a folder every library here loads without a network."""
    return add_sentence_files(random_checkpoint(name, root), name)


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
