"""A sentence-transformers folder and a CrossEncoder on a random ModernBERT with a ModernBERT-style tokenizer
(byte-level BPE, [CLS] A [SEP] template, as answerdotai/ModernBERT-base ships): fastbert.from_pretrained +
encode and fastbert.optimize against sentence-transformers, fp32 on the torch backend."""

import numpy as np
import pytest
import torch

import fastbert
from tests.modernbert_factory import random_modernbert
from tests.st_factory import PAIRS, TEXTS, save_pipeline
from tests.tolerances import SENTENCE_COSINE

pytest.importorskip("sentence_transformers")

VOCAB_SIZE = 320
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def save_bpe_tokenizer(folder):
    """A byte-level BPE tokenizer.json trained on the test texts, ModernBERT's special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(TEXTS + [q + " " + d for q, d in PAIRS], trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:0 [SEP]:0",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]", model_max_length=48)
    fast.save_pretrained(folder)
    return tokenizer.get_vocab_size()


def modernbert_folder(folder, model_class="ModernBertModel", **overrides):
    folder.mkdir(parents=True, exist_ok=True)
    vocab = save_bpe_tokenizer(folder)
    model = random_modernbert(model_class, vocab_size=max(vocab, VOCAB_SIZE), attn="sdpa", **overrides)
    model.save_pretrained(folder)
    return folder


def cosines(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_sentence_folder_matches_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer

    folder = save_pipeline(tmp_path / "st", modernbert_folder(tmp_path / "encoder"), pooling="mean", normalize=True)
    expected = SentenceTransformer(str(folder), device="cpu").encode(TEXTS)
    model = fastbert.from_pretrained(folder, device="cpu", dtype=torch.float32, backend="torch")
    ours = model.encode(TEXTS)
    assert ours.shape == expected.shape
    assert cosines(ours, expected).min() >= SENTENCE_COSINE


def test_cross_encoder_on_modernbert(tmp_path):
    from sentence_transformers import CrossEncoder

    folder = modernbert_folder(tmp_path / "reranker", "ModernBertForSequenceClassification", num_labels=1)
    reranker = CrossEncoder(str(folder), device="cpu")
    expected = reranker.predict(PAIRS)
    fastbert.optimize(reranker, backend="torch")
    np.testing.assert_allclose(reranker.predict(PAIRS), expected, atol=1e-5, rtol=1e-5)


def test_cli_encode_and_verify(tmp_path, capsys):
    import json

    from fastbert.cli import main as cli

    encoder = modernbert_folder(tmp_path / "encoder")
    folder = save_pipeline(tmp_path / "st", encoder, pooling="mean", normalize=True)
    output = tmp_path / "out.jsonl"
    assert cli.main(["encode", "--model", str(folder), "--backend", "torch", "--device", "cpu", "--output",
                     str(output), *TEXTS[:3]]) == 0
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    model = fastbert.from_pretrained(folder, device="cpu", dtype=torch.float32, backend="torch")
    np.testing.assert_allclose([row["embedding"] for row in rows], model.encode(TEXTS[:3]), atol=1e-6)
    capsys.readouterr()
    assert cli.main(["verify", "--model", str(encoder), "--backend", "torch", "--device", "cpu"]) == 0
    assert "modernbert, 4 layers" in capsys.readouterr().out


def test_tokenizer_matches_transformers_on_byte_level_bpe(tmp_path):
    """fastbert's Tokenizer (the library path: the template is not BERT's typed pair) and its pre-truncation of
    long texts give transformers' ids, singles and pairs, on a ModernBERT-style tokenizer."""
    from transformers import AutoTokenizer

    from fastbert.checkpoint.tokenizer import Tokenizer

    save_bpe_tokenizer(tmp_path)
    ours, theirs = Tokenizer.from_pretrained(tmp_path, max_length=24), AutoTokenizer.from_pretrained(tmp_path)
    texts = [*TEXTS, "the man is playing guitar " * 400, "héllo wörld 🍕 " * 300, "x" * 5000]
    pairs = ([q for q, _ in PAIRS], [d for _, d in PAIRS])
    for args in ((texts,), pairs):
        expected = theirs(*args, padding=True, truncation=True, max_length=24, return_tensors="pt")
        got = ours(*args)
        assert torch.equal(got["input_ids"], expected["input_ids"])
        assert torch.equal(got["attention_mask"], expected["attention_mask"])
