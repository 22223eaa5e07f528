"""Pre-truncation gives exactly what full tokenization + truncation gives, for every tokenizer kind.

Three tiny tokenizers are trained here with `tokenizers` (no downloads): WordPiece with BERT normalization
(lowercase, accent stripping, CJK split, control characters removed), byte-level BPE with RoBERTa's
template, and Unigram/Metaspace with XLM-R's normalizer (NFKC, space runs collapsed) and template; plus the
bundled all-MiniLM-L6-v2. The reference is the same Tokenizer with pre-truncation off: today's full
tokenization followed by truncation.
"""

import copy
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Regex, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import BPE, Unigram, WordPiece

from fastbert.checkpoint.pretruncate import Prefixer
from fastbert.checkpoint.tokenizer import Tokenizer

CORPUS = [
    "the quick brown fox jumps over the lazy dog", "naïve café crème brûlée à la française",
    "東京大学 自然语言处理 서울은 한국의 수도", "emoji 🚀 🍕 👩‍👩‍👧 and flags 🇫🇷", "it's a test, isn't it?",
    "ΣΑΣ σας ﬁne ① ½ İstanbul", "numbers 12345 3.14 and e-mail a.b@c.com",
] * 20
# Pieces no tokenizer can join across at a space, and ones it must never be cut at or before.
HOSTILE = [
    "word", "Quick", "café", "e\u0301", "\u0301", "a\u0301\u0327", "東京", "中", "🚀", "👩\u200d👩\u200d👧",
    "\u200d", "\u200b", "\u200c", "\ufeff", "\x00", "\x1c", "\x85", "\x7f", "\u3000", "\xa0", "\u2028",
    "\t", "\n", " ", "  ", "     ", ".", "'s", "ΣΑΣ", "ﬁ", "①", "\u1100\u1161", "İ", "[SEP]", "<mask>",
    "a" * 99, "b" * 100, "c" * 101, "x" * 300, "y.z," * 40, "\ufffd",
]
PIECE_TEXTS = st.lists(st.sampled_from(HOSTILE), min_size=1, max_size=160).map("".join)
WORDY = st.lists(st.sampled_from(HOSTILE[:30] + [" "] * 30), min_size=50, max_size=400).map("".join)
TEXTS = st.one_of(PIECE_TEXTS, WORDY)
LIMIT = 64  # the tiny tokenizers' model_max_length


def _wordpiece():
    tok = HFTokenizer(WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")),
                                                   ("[CLS]", tok.token_to_id("[CLS]")))
    return tok, "[PAD]"


def _byte_level_bpe():
    tok = HFTokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return tok, "<pad>"


def _unigram_metaspace():
    tok = HFTokenizer(Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(vocab_size=200, special_tokens=specials,
                                                            unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return tok, "<pad>"


KINDS = {"wordpiece": _wordpiece, "byte_level_bpe": _byte_level_bpe, "unigram_metaspace": _unigram_metaspace}


@pytest.fixture(scope="module", params=sorted(KINDS))
def tokenizers_pair(request):
    """(pre-truncating Tokenizer, reference Tokenizer with pre-truncation off, raw library tokenizer)."""
    raw, pad = KINDS[request.param]()
    fast = Tokenizer(copy.deepcopy(raw), pad_token=pad, model_max_length=LIMIT)
    reference = Tokenizer(copy.deepcopy(raw), pad_token=pad, model_max_length=LIMIT)
    reference._prefixer.enabled = False
    assert fast._prefixer.enabled, f"{request.param}: pre-truncation should cover this pipeline"
    return fast, reference, raw


def _same(fast, reference, *args, **kwargs):
    got, want = fast(*args, **kwargs), reference(*args, **kwargs)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert got[key].tolist() == want[key].tolist(), key


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS, need=st.sampled_from([1, 2, 3, 7, 20, LIMIT + 1]))
def test_prefix_tokens_are_the_whole_texts_first_tokens(tokenizers_pair, text, need):
    """The core property, offsets included: the prefix's tokens are the whole text's first ones, and at
    least `need` of them unless the prefix is the whole text."""
    _, _, raw = tokenizers_pair
    prefix = Prefixer(raw).prefixes([text], need)[0]
    assert text.startswith(prefix)
    whole, part = raw.encode(text, add_special_tokens=False), raw.encode(prefix, add_special_tokens=False)
    if len(prefix) < len(text):
        assert len(part.ids) >= need
    n = len(part.ids) if len(prefix) == len(text) else need
    assert part.ids[:n] == whole.ids[:n]
    assert part.offsets[:n] == whole.offsets[:n]
    assert part.type_ids[:n] == whole.type_ids[:n]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(TEXTS, min_size=1, max_size=4), max_length=st.sampled_from([2, 3, 5, 17, LIMIT]))
def test_single_texts_match_full_tokenization(tokenizers_pair, texts, max_length):
    fast, reference, _ = tokenizers_pair
    _same(fast, reference, texts, max_length=max_length)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(TEXTS, TEXTS), min_size=1, max_size=3),
       max_length=st.sampled_from([8, 9, 16, 33, LIMIT]))
def test_pairs_match_longest_first_truncation(tokenizers_pair, pairs, max_length):
    """Odd and even budgets: with an odd one, the longer segment gets the odd token, so the prefixes must
    also tell which segment is longer."""
    fast, reference, _ = tokenizers_pair
    _same(fast, reference, [a for a, _ in pairs], [b for _, b in pairs], max_length=max_length)


@pytest.mark.parametrize("max_length", [3, 4, 5])
def test_pairs_of_two_long_texts_at_the_smallest_budgets(tokenizers_pair, max_length):
    """Two long segments, one a token longer than the other: the odd token goes to the longer one. (Kept
    to a few hundred tokens: the library's own truncation, the reference here, builds every overflow
    window of both segments and their cross product.)"""
    fast, reference, _ = tokenizers_pair
    if fast._special is None and max_length < 5:
        pytest.skip("the library template takes 4 special tokens for a pair")
    a, b = "word " * 200, "word " * 200 + "fox"
    _same(fast, reference, [a, b, a], [b, a, a], max_length=max_length)


@pytest.mark.parametrize("need", [1, 8, 40])
def test_a_word_of_the_wordpiece_limit_across_the_window_edge(tokenizers_pair, need):
    """Words of 99, 100 and 101 characters (WordPiece turns those over 100 into [UNK]) placed so that the
    first window ends inside them."""
    fast, reference, raw = tokenizers_pair
    edge = 8 * need + 64  # the first window's length
    for length in (99, 100, 101):
        for shift in (1, 50, length - 1):
            text = "w " * ((edge - shift) // 2) + "q" * length + " tail" * 300
            prefix = Prefixer(raw).prefixes([text], need)[0]
            whole = raw.encode(text, add_special_tokens=False).ids
            assert raw.encode(prefix, add_special_tokens=False).ids[:need] == whole[:need]
            _same(fast, reference, [text], max_length=min(need + 2, LIMIT))


def test_no_safe_cut_falls_back_to_the_whole_text(tokenizers_pair):
    _, _, raw = tokenizers_pair
    text = "x" * 20_000 + " end"
    assert Prefixer(raw).prefixes([text], 4) == [text]


def test_a_lone_surrogate_past_the_prefix_still_fails_the_text(tokenizers_pair):
    from fastbert.checkpoint.tokenizer import UntokenizableTextError

    fast, _, _ = tokenizers_pair
    with pytest.raises(UntokenizableTextError, match=r"texts\[1\]"):
        fast(["fine", "word " * 5000 + "\ud800"], max_length=8)


def test_pipelines_the_proof_does_not_cover_are_left_whole():
    raw, _ = _wordpiece()
    raw.pre_tokenizer = pre_tokenizers.Split(Regex(r"[^\r\n\p{L}\p{N}]?\p{L}+|\s+"), behavior="isolated")
    assert not Prefixer(raw).enabled
    raw, _ = _unigram_metaspace()
    raw.pre_tokenizer = pre_tokenizers.Metaspace(split=False)
    assert not Prefixer(raw).enabled
    raw, _ = _wordpiece()
    raw.normalizer = normalizers.Sequence([normalizers.Strip(), normalizers.Lowercase()])
    assert not Prefixer(raw).enabled


def test_bundled_minilm_long_text_matches_and_costs_what_is_kept(minilm_path):
    fast = Tokenizer.from_pretrained(minilm_path, max_length=256)
    reference = Tokenizer.from_pretrained(minilm_path, max_length=256)
    reference._prefixer.enabled = False
    text = "Crème brûlée, 東京 and e\u0301 words\u3000again " * 2000  # ~80 KB
    _same(fast, reference, [text, "short"])
    _same(fast, reference, ["what is it?", text], [text, text[:5000]])
    big = text * 100  # ~8 MB: fully tokenized this takes tens of seconds
    start = time.perf_counter()
    kept = fast([big])
    assert time.perf_counter() - start < 1.0
    assert kept["input_ids"].tolist() == fast([text])["input_ids"].tolist()


def _assert_same_embedding(ours, reference):
    from tests.tolerances import SENTENCE_COSINE

    ours, reference = (torch.as_tensor(side).float() for side in (ours, reference))
    cosine = torch.nn.functional.cosine_similarity(ours, reference, dim=-1)
    assert cosine.min().item() >= SENTENCE_COSINE, cosine


MEGABYTE_TEXT = "Crème brûlée, 東京 and e\u0301 words\u3000again, the quick brown fox. " * 40_000  # ~2.4 MB


@pytest.mark.slow
def test_a_multi_megabyte_text_embeds_as_sentence_transformers_does_minilm(minilm_path):
    import fastbert

    st = pytest.importorskip("sentence_transformers")
    ours = fastbert.from_pretrained(minilm_path, device="cpu", dtype=torch.float32, backend="torch")
    reference = st.SentenceTransformer(str(minilm_path), device="cpu")
    texts = [MEGABYTE_TEXT, "short one"]
    _assert_same_embedding(ours.encode(texts), reference.encode(texts))


@pytest.mark.slow
def test_a_multi_megabyte_text_embeds_as_sentence_transformers_does_xlm_roberta(tmp_path):
    """A random XLM-RoBERTa with the Unigram/Metaspace tokenizer above, in a sentence-transformers
    pipeline that sentence-transformers itself saves."""
    import json

    import fastbert
    from tests.bert_factory import random_bert
    from tests.st_factory import save_pipeline

    st = pytest.importorskip("sentence_transformers")
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    raw, pad = _unigram_metaspace()
    random_bert(encoder, model_class="XLMRobertaModel", vocab_size=raw.get_vocab_size(), pad_token_id=1,
                type_vocab_size=1)
    raw.save(str(encoder / "tokenizer.json"))
    (encoder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": pad, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": 78}))
    folder = save_pipeline(tmp_path / "pipeline", encoder)
    ours = fastbert.from_pretrained(folder, device="cpu", dtype=torch.float32, backend="torch")
    reference = st.SentenceTransformer(str(folder), device="cpu")
    texts = [MEGABYTE_TEXT, "short one", "word " * 100_000 + "x" * 1000]
    _assert_same_embedding(ours.encode(texts), reference.encode(texts))
