import json
import shutil

import pytest
import torch

from fastbert.checkpoint.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

LONG = " ".join(f"word{i} ünïcödé 東京 🚀" for i in range(300))  # well over 512 tokens
TEXTS = [
    "Hello, WORLD! It's an e-mail: a.b@c.com, costs $3.14 (approx.)",
    "Crème brûlée à la française, naïve café — Ångström, Øresund, São Paulo",
    "我爱自然语言处理。東京タワーに行きました。서울은 한국의 수도입니다",
    "I ❤️ 🍕 and 🚀!! 👩‍👩‍👧 flags 🇫🇷",
    "",
    "   \t\n  ",
    "[MASK] is [SEP] here and [UNK] there [CLS]",
    "zero\u200bwidth\x00control\ufeffchars and   multiple   spaces",
    LONG,
    "a",
    "supercalifragilisticexpialidocious antidisestablishmentarianism " + "x" * 120,
]
PAIRS = [
    "what is it?",
    LONG,
    "",
    "Straße und Müller",
    "short",
    "مرحبا بالعالم",
    "   ",
    "another one",
    "tail " * 400,
    "b",
    "c d e",
]


@pytest.fixture(scope="module")
def hf_tok(minilm_path):
    return transformers.AutoTokenizer.from_pretrained(minilm_path, local_files_only=True)


@pytest.fixture(scope="module")
def hf_pairs(hf_tok):
    """transformers' encoding of (TEXTS, PAIRS), once per max_length: it takes seconds at small lengths."""
    cache = {}

    def encode(max_length):
        if max_length not in cache:
            cache[max_length] = hf_tok(
                TEXTS, PAIRS, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
        return cache[max_length]

    return encode


@pytest.fixture(scope="module")
def vocab_only(minilm_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("vocab_only")
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(minilm_path / name, folder / name)
    return folder


@pytest.fixture(scope="module", params=["tokenizer.json", "vocab.txt"])
def ours(request, minilm_path, vocab_only):
    path = minilm_path if request.param == "tokenizer.json" else vocab_only
    return Tokenizer.from_pretrained(path)


def assert_same(batch, expected):
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
    for key in batch:
        assert batch[key].dtype == torch.int64, key
        assert torch.equal(batch[key], expected[key]), key


@pytest.mark.parametrize("max_length", [None, 7, 32, 600])
def test_singles_match_transformers(ours, hf_tok, max_length):
    expected = hf_tok(
        TEXTS, padding=True, truncation=True, max_length=min(max_length or 512, 512), return_tensors="pt"
    )
    batch = ours(TEXTS, max_length=max_length)
    assert_same(batch, expected)
    if max_length is None:
        assert batch["input_ids"].shape[1] == 512  # LONG was truncated to the model's maximum


@pytest.mark.parametrize("max_length", [None, 9, 40])
def test_pairs_match_transformers(ours, hf_pairs, max_length):
    expected = hf_pairs(max_length or 512)
    batch = ours(TEXTS, PAIRS, max_length=max_length)
    assert_same(batch, expected)
    assert batch["token_type_ids"].max() == 1


def test_single_string_and_max_length_padding(ours, hf_tok):
    assert_same(ours("Just one sentence."), hf_tok(["Just one sentence."], return_tensors="pt"))
    expected = hf_tok(TEXTS[:3], padding="max_length", truncation=True, max_length=48, return_tensors="pt")
    assert_same(ours(TEXTS[:3], max_length=48, padding="max_length"), expected)
    same_length = ours(["a b", "c d"], padding=False)
    assert same_length["attention_mask"].all()


def test_vocab_folder_matches_its_own_transformers_tokenizer(vocab_only):
    hf = transformers.AutoTokenizer.from_pretrained(vocab_only, local_files_only=True)
    expected = hf(TEXTS, PAIRS, padding=True, truncation=True, max_length=64, return_tensors="pt")
    assert_same(Tokenizer.from_pretrained(vocab_only)(TEXTS, PAIRS, max_length=64), expected)


def test_lengths_and_attributes(minilm_path, vocab_only):
    tok = Tokenizer.from_pretrained(minilm_path)
    assert (tok.model_max_length, tok.max_length, tok.max_seq_length) == (512, 512, 256)
    assert tok.pad_token_id == 0 and tok.vocab_size == 30522
    assert Tokenizer.from_pretrained(minilm_path, max_length=128).max_length == 128
    assert Tokenizer.from_pretrained(minilm_path, max_length=10_000).max_length == 512
    short = Tokenizer.from_pretrained(minilm_path, max_length=tok.max_seq_length)
    assert short([LONG])["input_ids"].shape == (1, 256)
    assert short([LONG], max_length=20)["input_ids"].shape == (1, 20)
    # tokenizer.json's own truncation/padding (fixed 128 in all-MiniLM's file) must not leak through.
    assert tok(["a"])["input_ids"].shape == (1, 3)
    assert Tokenizer.from_pretrained(vocab_only).max_seq_length is None


def test_model_max_length_falls_back_to_config(minilm_path, tmp_path):
    shutil.copy(minilm_path / "vocab.txt", tmp_path / "vocab.txt")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": int(1e30)}))
    assert Tokenizer.from_pretrained(tmp_path).model_max_length is None
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 128}))
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.model_max_length == 128 and tok([LONG])["input_ids"].shape == (1, 128)


def test_missing_and_broken_files(tmp_path, minilm_path):
    with pytest.raises(FileNotFoundError, match="tokenizer folder .*nowhere does not exist"):
        Tokenizer.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json or vocab.txt in"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(ValueError, match="tokenizer.json is not a valid tokenizer file"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(
        ValueError, match=r"vocab.txt lacks the special tokens \['\[CLS\]', '\[SEP\]', '\[MASK\]'\]"
    ):
        Tokenizer.from_pretrained(tmp_path)
    shutil.copy(minilm_path / "vocab.txt", tmp_path / "vocab.txt")
    (tmp_path / "tokenizer_config.json").write_text("not json")
    with pytest.raises(ValueError, match="tokenizer_config.json is not valid JSON"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}))
    with pytest.raises(ValueError, match="pad_token='<pad>' is not in the tokenizer's vocabulary"):
        Tokenizer.from_pretrained(tmp_path)


@pytest.fixture(scope="module")
def tok(minilm_path):
    return Tokenizer.from_pretrained(minilm_path)


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((3,), {}, TypeError, "texts must be a str or a list of str"),
        ((["a", None],), {}, TypeError, "texts must be a str or a list of str"),
        (([],), {}, ValueError, "texts is empty"),
        ((["a", "b"], ["c"]), {}, ValueError, "text_pairs has 1 entries but texts has 2"),
        ((["a"], [1]), {}, TypeError, "text_pairs must be a str or a list of str"),
        ((["a"],), {"padding": "longest_first"}, ValueError, "padding must be True, False, 'longest' or"),
        ((["a"],), {"max_length": 1}, ValueError, r"max_length must be at least 2 .*got 1"),
        ((["a"],), {"max_length": 12.0}, TypeError, "max_length must be an int, got float"),
        (
            (["a", "b c d"],),
            {"padding": False},
            ValueError,
            "padding=False but the sequences have different lengths",
        ),
        ((["a b c"], ["d e f"]), {"max_length": 2}, ValueError, "max_length=2 leaves no room for a pair"),
    ],
)
def test_bad_calls(tok, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        tok(*args, **kwargs)


def test_bad_constructor_max_length(minilm_path):
    with pytest.raises(ValueError, match="max_length must be at least 2"):
        Tokenizer.from_pretrained(minilm_path, max_length=0)


def test_long_pairs_truncate_in_linear_time(tok, hf_tok):
    # `tokenizers` alone takes ~25 s on this (overflow windows of both segments, crossed).
    a, b = "x " * 2000, "y z " * 1000
    batch = tok([a, "short"], [b, "y " * 3000], max_length=9)
    expected = hf_tok(["short"], ["y " * 30], truncation=True, max_length=9, return_tensors="pt")
    assert batch["input_ids"].shape == (2, 9)
    assert torch.equal(batch["input_ids"][1], expected["input_ids"][0])


X_ID, Y_ID = 1060, 1061  # "x" and "y" in all-MiniLM's vocabulary


@pytest.mark.parametrize("budget", range(0, 9))
def test_longest_first_rule_matches_tokenizers(tok, budget):
    """Our truncation rule against the library's own, on every small length combination."""
    from fastbert.checkpoint.tokenizer import _truncate_longest_first

    for n_a, n_b in [(0, 5), (5, 0), (3, 3), (7, 2), (2, 7), (4, 5), (1, 1), (9, 9)]:
        a, b = " ".join(["x"] * n_a), " ".join(["y"] * n_b)
        tok._tok.enable_truncation(max_length=budget + 3, strategy="longest_first")
        try:
            enc = tok._tok.encode(a, b)
        finally:
            tok._tok.no_truncation()
        ours_a, ours_b = _truncate_longest_first([1] * n_a, [2] * n_b, budget)
        assert (len(ours_a), len(ours_b)) == (enc.ids.count(X_ID), enc.ids.count(Y_ID)), (n_a, n_b)


def test_non_bert_post_processor_uses_the_library(minilm_path, tmp_path, hf_tok):
    spec = json.loads((minilm_path / "tokenizer.json").read_text())
    spec["post_processor"] = None
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    shutil.copy(minilm_path / "tokenizer_config.json", tmp_path / "tokenizer_config.json")
    plain = Tokenizer.from_pretrained(tmp_path)
    assert plain._special is None
    expected = hf_tok(
        TEXTS[:4],
        PAIRS[:4],
        add_special_tokens=False,
        padding=True,
        truncation=True,
        max_length=12,
        return_tensors="pt",
    )
    assert_same(plain(TEXTS[:4], PAIRS[:4], max_length=12), expected)


@pytest.mark.parametrize("post_processor", ["bert", "library"])
def test_lone_surrogates_are_a_value_error_naming_the_texts(minilm_path, tmp_path, post_processor):
    from fastbert.checkpoint.tokenizer import UntokenizableTextError

    path = minilm_path
    if post_processor == "library":
        spec = json.loads((minilm_path / "tokenizer.json").read_text())
        spec["post_processor"] = None
        (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
        path = tmp_path
    tok = Tokenizer.from_pretrained(path)
    texts = ["fine", "a\ud800b", "also fine", "\udfff"]
    with pytest.raises(UntokenizableTextError, match=r"texts\[1\] \(a lone surrogate '\\ud800' at character 1\), "
                                                     r"texts\[3\] \(a lone surrogate '\\udfff' at character 0\)"
                       ) as caught:
        tok(texts)
    assert isinstance(caught.value, ValueError) and caught.value.indices == [1, 3]
    with pytest.raises(UntokenizableTextError, match=r"text_pairs\[0\]"):
        tok(["a", "b"], ["x\ud8ff", "y"])
    assert tok(["a\U0001f600b"])["input_ids"].shape[0] == 1  # a proper surrogate pair's character is fine


def test_truncation_never_exceeds_the_position_embeddings(minilm_path, tmp_path):
    # A tokenizer allowing 512 tokens on a model with 40 positions: truncate to 40, where transformers
    # would pass 512 ids to an embedding table of 40 rows.
    from fastbert import FastBertModel
    from tests.bert_factory import random_bert

    random_bert(tmp_path, vocab_size=30522, max_position_embeddings=40, hidden_size=32, num_attention_heads=2)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(minilm_path / name, tmp_path / name)
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256}))
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["model_max_length"] == 512
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.model_max_length == 40 and tok([LONG])["input_ids"].shape == (1, 40)
    assert tok([LONG], max_length=300)["input_ids"].shape == (1, 40)
    model = FastBertModel.from_pretrained(tmp_path, backend="torch", device="cpu")
    assert model.encode([LONG, "short"]).shape == (2, 32)
    assert model.encode([LONG], max_length=500).shape == (1, 32)


def test_encode_and_cli_name_an_untokenizable_text(minilm_path, tmp_path, capsys):
    from fastbert import FastBertModel
    from fastbert.cli.main import main

    model = FastBertModel.from_pretrained(minilm_path, backend="torch", device="cpu")
    with pytest.raises(ValueError, match=r"cannot tokenize texts\[2\] \(a lone surrogate"):
        model.encode(["one", "two", "bad \ud800 text"])
    corpus = tmp_path / "in.jsonl"
    corpus.write_text('{"text": "fine"}\n{"text": "bad \\ud800"}\n', encoding="utf-8")
    code = main(["encode", "--model", str(minilm_path), "--input", str(corpus), "--backend", "torch",
                 "--device", "cpu", "--output", str(tmp_path / "out.npy")])
    err = capsys.readouterr().err
    assert code == 2 and r"texts[1] (a lone surrogate '\ud800' at character 4)" in err, err
    assert not (tmp_path / "out.npy").exists()
