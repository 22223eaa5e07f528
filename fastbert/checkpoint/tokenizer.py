"""Text to BERT inputs on the `tokenizers` library, without transformers.

Gives the same ids, attention mask and token-type ids as
`transformers.AutoTokenizer.from_pretrained(path)(texts, pairs, padding=True, truncation=True,
max_length=..., return_tensors="pt")`.

Truncation length: by default the model's own maximum: tokenizer_config.json's model_max_length, as
transformers truncates, but never more tokens than the model's position embeddings serve (config.json's
max_position_embeddings, less the RoBERTa family's position offset), where transformers would fail.
sentence-transformers truncates shorter for some models (all-MiniLM-L6-v2: max_seq_length 256 in
sentence_bert_config.json); that value is exposed as `Tokenizer.max_seq_length` but not applied by default — pass
`max_length=tok.max_seq_length` (to the constructor or the call) to reproduce SentenceTransformer.encode.
A max_length above the model's maximum is clamped to it (transformers would only warn, then fail in the
model's position embedding).

A long text costs what is kept: when a call truncates, only a prefix of each text that provably yields the
same tokens is tokenized (fastbert.checkpoint.pretruncate); without a length limit every text is tokenized
whole.

Pairs are truncated longest-first, by the same rule as `tokenizers`, but in our own code: see
Tokenizer._encode_bert. A call sets the wrapped tokenizer's truncation only for non-BERT post-processors,
so one Tokenizer should not be called from several threads at once.
"""

import re
from pathlib import Path

import torch
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from fastbert.jsonio import read_json

from .pretruncate import Prefixer

# transformers writes int(1e30) as model_max_length when a tokenizer has no limit of its own.
_NO_LIMIT = int(1e20)
_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class UntokenizableTextError(ValueError):
    """A text the tokenizer cannot take (a lone surrogate: not valid Unicode). `indices`: the positions of
    every such text in the batch."""

    def __init__(self, message, indices):
        super().__init__(message)
        self.indices = indices

    def shifted(self, offset):
        """The same error with its texts[i] and indices counted `offset` texts further on: a chunk's error
        told in the positions of the whole input."""
        message = re.sub(r"texts\[(\d+)\]", lambda m: f"texts[{offset + int(m.group(1))}]", str(self))
        return UntokenizableTextError(message, [offset + index for index in self.indices])


class Tokenizer:
    """BERT WordPiece tokenizer returning int64 tensors input_ids, attention_mask, token_type_ids [B, S]."""

    def __init__(
        self,
        tokenizer: _HFTokenizer,
        pad_token: str = "[PAD]",
        model_max_length: int | None = None,
        max_length: int | None = None,
        max_seq_length: int | None = None,
    ):
        pad_id = tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"pad_token={pad_token!r} is not in the tokenizer's vocabulary")
        # A tokenizer.json may carry its own truncation and padding (all-MiniLM's: fixed 128); each call
        # decides both itself, as transformers does.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tok = tokenizer
        self._special = _bert_special_ids(tokenizer)  # (cls, sep), or None: not BERT's template
        self._prefixer = Prefixer(tokenizer)
        self.pad_token, self.pad_token_id = pad_token, pad_id
        self.model_max_length = model_max_length
        self.max_seq_length = max_seq_length
        self.max_length = self._resolve_max_length(max_length, "max_length")

    @classmethod
    def from_pretrained(cls, path, max_length: int | None = None) -> "Tokenizer":
        """Load tokenizer.json from a checkpoint folder, or build BERT's WordPiece from vocab.txt."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"tokenizer folder {path} does not exist")
        tok_config = _read_json(path / "tokenizer_config.json")
        if (path / "tokenizer.json").is_file():
            try:
                tokenizer = _HFTokenizer.from_file(str(path / "tokenizer.json"))
            except Exception as err:  # the library raises a bare Exception for malformed files
                raise ValueError(f"{path / 'tokenizer.json'} is not a valid tokenizer file") from err
        elif (path / "vocab.txt").is_file():
            tokenizer = _wordpiece_from_vocab(path / "vocab.txt", tok_config)
        else:
            raise FileNotFoundError(f"no tokenizer.json or vocab.txt in {path}")

        model_max = tok_config.get("model_max_length")
        if not isinstance(model_max, int) or isinstance(model_max, bool) or not 0 < model_max < _NO_LIMIT:
            model_max = None
        # A tokenizer may allow more tokens than the model has positions for (a checkpoint trimmed to fewer
        # positions, or a RoBERTa whose 514 positions serve 512 tokens): the model's limit wins.
        limits = [n for n in (model_max, _position_limit(path)) if n is not None]
        model_max = min(limits) if limits else None
        st_max = _read_json(path / "sentence_bert_config.json").get("max_seq_length")
        return cls(
            tokenizer,
            pad_token=tok_config.get("pad_token")
            if isinstance(tok_config.get("pad_token"), str)
            else "[PAD]",
            model_max_length=model_max if isinstance(model_max, int) else None,
            max_length=max_length,
            max_seq_length=st_max if isinstance(st_max, int) else None,
        )

    def special_token_ids(self) -> set[int]:
        """Ids of the special tokens ([CLS], [SEP], [PAD], ...): sentence-transformers leaves a trailing one
        out when it counts a prompt's tokens."""
        return {i for i, token in self._tok.get_added_tokens_decoder().items() if token.special}

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __call__(
        self,
        texts: str | list[str],
        text_pairs: str | list[str] | None = None,
        max_length: int | None = None,
        padding: bool | str = True,
    ) -> dict[str, torch.Tensor]:
        """Tokenize a text or a batch (with optional second segments), truncating longest-first.

        max_length: overrides this tokenizer's length for this call; never more than model_max_length.
        padding: True / "longest" pads right to the longest sequence, "max_length" to the truncation
        length, False pads nothing (so every sequence must come out the same length).
        """
        texts = _as_batch("texts", texts)
        if text_pairs is not None:
            text_pairs = _as_batch("text_pairs", text_pairs)
            if len(text_pairs) != len(texts):
                raise ValueError(f"text_pairs has {len(text_pairs)} entries but texts has {len(texts)}")
        if padding not in (True, False, "longest", "max_length"):
            raise ValueError(f"padding must be True, False, 'longest' or 'max_length', got {padding!r}")
        limit = self.max_length if max_length is None else self._resolve_max_length(max_length, "max_length")
        if padding == "max_length" and limit is None:
            raise ValueError("padding='max_length' needs a max_length: this tokenizer has no length limit")

        if self._special is not None:
            rows = self._encode_bert(texts, text_pairs, limit)
        else:
            rows = self._encode_library(texts, text_pairs, limit)

        lengths = [len(ids) for ids, _ in rows]
        if limit is not None and max(lengths) > limit:
            raise ValueError(f"cannot fit the sequences within max_length={limit}")
        width = limit if padding == "max_length" else max(lengths)
        if padding is False and min(lengths) != width:
            raise ValueError(
                f"padding=False but the sequences have different lengths ({min(lengths)} to {width}); "
                "use padding=True"
            )
        B = len(rows)
        input_ids = torch.full((B, width), self.pad_token_id, dtype=torch.int64)
        attention_mask = torch.zeros((B, width), dtype=torch.int64)
        token_type_ids = torch.zeros((B, width), dtype=torch.int64)
        for row, ((ids, type_ids), n) in enumerate(zip(rows, lengths, strict=True)):
            input_ids[row, :n] = torch.tensor(ids, dtype=torch.int64)
            attention_mask[row, :n] = 1
            token_type_ids[row, :n] = torch.tensor(type_ids, dtype=torch.int64)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}

    def _encode_bert(self, texts, text_pairs, limit) -> list[tuple[list[int], list[int]]]:
        """[CLS] A [SEP] (B [SEP]), truncated longest-first here rather than by `tokenizers`: the
        library also builds every overflow window and, for pairs, their cross product, which takes
        seconds to minutes once both segments run to thousands of tokens. Same result, linear time."""
        cls_id, sep_id = self._special
        if text_pairs is None:
            if limit is not None:
                texts = self._prefixer.prefixes(texts, limit + 1)
            firsts = [e.ids for e in _encode_batch(self._tok, "texts", texts)]
            budget = None if limit is None else limit - 2
            return [([cls_id, *a[:budget], sep_id], [0] * (len(a[:budget]) + 2)) for a in firsts]
        if limit is not None and limit < 3:
            raise ValueError(f"max_length={limit} leaves no room for a pair's [CLS] A [SEP] B [SEP]")
        if limit is not None:
            texts, text_pairs = self._prefixer.pair_prefixes(texts, text_pairs, limit + 1, limit - 3)
        firsts = [e.ids for e in _encode_batch(self._tok, "texts", texts)]
        seconds = [e.ids for e in _encode_batch(self._tok, "text_pairs", text_pairs)]
        rows = []
        for a, b in zip(firsts, seconds, strict=True):
            if limit is not None:
                a, b = _truncate_longest_first(a, b, limit - 3)
            rows.append(([cls_id, *a, sep_id, *b, sep_id], [0] * (len(a) + 2) + [1] * (len(b) + 1)))
        return rows

    def _encode_library(self, texts, text_pairs, limit) -> list[tuple[list[int], list[int]]]:
        """Any other post-processor: let `tokenizers` apply it and truncate."""
        if limit is None:
            self._tok.no_truncation()
        elif text_pairs is None:
            texts = self._prefixer.prefixes(texts, limit + 1)
        else:
            budget = limit - self._tok.num_special_tokens_to_add(is_pair=True)
            texts, text_pairs = self._prefixer.pair_prefixes(texts, text_pairs, limit + 1, budget)
        if limit is not None:
            self._tok.enable_truncation(max_length=limit, strategy="longest_first")
        inputs = texts if text_pairs is None else list(zip(texts, text_pairs, strict=True))
        try:
            encodings = self._tok.encode_batch(inputs, add_special_tokens=True)
        except Exception as err:  # `tokenizers` raises a bare Exception, e.g. when pairs cannot fit
            # ...or a TypeError naming no text for one that is not valid Unicode: name it (checked only
            # after a failure, so that good batches pay nothing).
            check_encodable("texts", texts)
            if text_pairs is not None:
                check_encodable("text_pairs", text_pairs)
            raise ValueError(f"cannot tokenize within max_length={limit}: {err}") from err
        finally:
            self._tok.no_truncation()
        return [(e.ids, e.type_ids) for e in encodings]

    def token_spans(self, text: str, add_special_tokens: bool = True) -> list[tuple[int, str, int, int, bool]]:
        """One text's tokens, untruncated, as (id, token, start, stop, special): character offsets into
        `text` (a special token's span is empty). What a server's /tokenize shows."""
        try:
            encoding = self._tok.encode(text, add_special_tokens=add_special_tokens)
        except Exception:  # a bare TypeError that names no text: say which
            check_encodable("texts", [text])
            raise
        special = self.special_token_ids()
        return [(i, token, start, stop, i in special)
                for i, token, (start, stop) in zip(encoding.ids, encoding.tokens, encoding.offsets, strict=True)]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """Token ids back to text, as transformers' decode (with clean-up of tokenization spaces)."""
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def _resolve_max_length(self, max_length, name) -> int | None:
        if max_length is None:
            return self.model_max_length
        if not isinstance(max_length, int) or isinstance(max_length, bool):
            raise TypeError(f"{name} must be an int, got {type(max_length).__name__}")
        # [CLS] and [SEP] always fit, plus one more [SEP] and a token of each segment for pairs.
        if max_length < 2:
            raise ValueError(f"{name} must be at least 2 (room for [CLS] and [SEP]), got {max_length}")
        if self.model_max_length is not None:
            return min(max_length, self.model_max_length)
        return max_length


def _encode_batch(tokenizer: _HFTokenizer, name: str, texts: list[str]):
    """`tokenizers`' encode_batch without special tokens; a text it cannot take is named by its index."""
    try:
        return tokenizer.encode_batch(texts, add_special_tokens=False)
    except Exception:  # the library raises a bare TypeError/Exception that names no text
        check_encodable(name, texts)
        raise


def check_encodable(name: str, texts: list[str]) -> None:
    """Raise UntokenizableTextError naming every text that is not valid Unicode (a lone surrogate such as
    '\\ud800', which Python strings allow but UTF-8, and so `tokenizers`, cannot carry)."""
    bad = []
    for index, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            bad.append((index, err.start, text[err.start]))
    if bad:
        shown = ", ".join(f"{name}[{index}] (a lone surrogate {char!r} at character {start})"
                          for index, start, char in bad[:8])
        more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
        raise UntokenizableTextError(
            f"cannot tokenize {shown}{more}: not valid Unicode text; remove or replace the surrogates "
            "(e.g. text.encode('utf-8', 'replace').decode())", [index for index, _, _ in bad])


def _position_limit(path: Path) -> int | None:
    """How many tokens the position embeddings of the model in `path` serve, when config.json says."""
    from .config import BertConfig

    try:
        config = BertConfig.from_pretrained(path)
    except (OSError, ValueError, TypeError, KeyError):  # not a model fastbert loads: the raw field, if any
        positions = _read_json(path / "config.json").get("max_position_embeddings")
        return positions if isinstance(positions, int) and not isinstance(positions, bool) and positions > 0 else None
    # max_sequence_length: positions less the RoBERTa family's offset (fastbert.checkpoint.config).
    return config.max_sequence_length


def _bert_special_ids(tokenizer: _HFTokenizer) -> tuple[int, int] | None:
    """(cls id, sep id) when the post-processor lays out [CLS] A [SEP] and [CLS] A [SEP] B [SEP]
    with token types 0 for A and 1 for B (every BERT checkpoint's), else None."""
    a = tokenizer.encode("hello world", add_special_tokens=False).ids
    b = tokenizer.encode("good day", add_special_tokens=False).ids
    single = tokenizer.encode("hello world", add_special_tokens=True)
    pair = tokenizer.encode("hello world", "good day", add_special_tokens=True)
    if len(single.ids) != len(a) + 2:
        return None
    cls_id, sep_id = single.ids[0], single.ids[-1]
    bert_single = single.ids == [cls_id, *a, sep_id] and single.type_ids == [0] * (len(a) + 2)
    bert_pair = pair.ids == [cls_id, *a, sep_id, *b, sep_id] and pair.type_ids == [0] * (len(a) + 2) + [1] * (
        len(b) + 1
    )
    return (cls_id, sep_id) if bert_single and bert_pair else None


def _truncate_longest_first(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """`tokenizers`' LongestFirst rule: trim the longer segment first; when even that is not enough,
    split the budget in half (the extra token, if odd, to the longer one). Keeps each segment's head."""
    if len(a) + len(b) <= budget:
        return a, b
    n1, n2 = sorted((len(a), len(b)))
    n2 = n1 if n1 > budget else max(n1, budget - n1)
    if n1 + n2 > budget:
        n1 = budget // 2
        n2 = n1 + budget % 2
    if len(a) > len(b):
        n1, n2 = n2, n1
    return a[:n1], b[:n2]


def _wordpiece_from_vocab(vocab_file: Path, tok_config: dict) -> _HFTokenizer:
    """BERT's tokenizer as transformers' BertTokenizer builds it from vocab.txt."""
    vocab = {}
    with open(vocab_file, encoding="utf-8") as f:
        for index, line in enumerate(f):
            vocab[line.rstrip("\n")] = index  # a repeated token keeps its last index, as in transformers
    missing = [t for t in _SPECIAL if t not in vocab]
    if missing:
        raise ValueError(f"{vocab_file} lacks the special tokens {missing}")
    tokenizer = _HFTokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=tok_config.get("tokenize_chinese_chars", True),
        strip_accents=tok_config.get("strip_accents"),
        lowercase=tok_config.get("do_lower_case", True),
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.BertProcessing(("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"]))
    tokenizer.add_special_tokens(list(_SPECIAL))
    return tokenizer


def _read_json(file: Path) -> dict:
    """The JSON object in `file`, {} when there is no such file."""
    return read_json(file, default={})


def _as_batch(name: str, texts) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"{name} must be a str or a list of str")
    if not texts:
        raise ValueError(f"{name} is empty")
    return list(texts)
