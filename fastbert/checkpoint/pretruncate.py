"""Exact pre-truncation: tokenize only the prefix of a long text that truncation keeps.

A model keeps at most max_length tokens, yet tokenizing a text costs time and memory in its whole length.
`Prefixer.prefixes(texts, need)` returns, for each text, a prefix text[:cut] whose tokens are exactly the
first tokens of the whole text's, and at least `need` of them (or the whole text when it is short, or when
no prefix can be proven). Truncating the prefix's tokens to at most `need` therefore gives the same ids as
truncating the whole text's.

The proof. A `tokenizers` pipeline splits added tokens, normalizes, pre-tokenizes into words, then runs the
model (WordPiece, BPE, Unigram, WordLevel) on each word alone. A cut at `c` is safe when nothing from c on can
change the words before c:
- text[c] is whitespace and text[c - 1] is not (a word ends at c), and no added token contains whitespace,
  so no added token spans the cut;
- the library's own normalizer, run on the characters around the cut, normalizes the two sides apart
  exactly as together (so no combining mark, NFKC composition or run rule reaches across), the left side
  ends in a non-whitespace character and the right side starts with whitespace;
- the pre-tokenizer is one that always ends a word before whitespace: BERT's, Whitespace(Split), byte-level
  BPE's GPT-2 pattern (its only cross-character rules, `\\s+(?!\\S)` and ` ?X+`, start at whitespace), or
  Metaspace with split=True (a word starts at each replaced space); Punctuation and Digits only split more.
A pipeline with any other part (a custom Split pattern, Strip, Metaspace without splitting, ...) is never
pre-truncated: the whole text is tokenized, as before. So is a text with no safe cut (a run of megabytes
without whitespace): correctness first, never a guess.

The window grows by doubling, so the characters tokenized are at most a few times the kept prefix; nothing
of the text past the final window is read or copied, except for one scan for lone surrogates, so that a
text the tokenizer cannot take is still rejected whole.
"""

import json
import re
import sys

# Whitespace as `tokenizers` (Rust's char::is_whitespace, the regex crate's \s) sees it: Python's
# str.isspace also counts U+001C..U+001F, which the library treats as control or punctuation characters.
_SPACE_CLASS = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# A whitespace character right after a non-whitespace one: where a word can end.
_WORD_END = re.compile(f"(?<![{_SPACE_CLASS}])[{_SPACE_CLASS}]")
# Characters encoded per step of the lone-surrogate scan: bounds its memory, whatever the text's size.
_SCAN_CHUNK = 1 << 18
# The size of a one-byte-per-character non-ASCII string less its characters.
_LATIN1_HEADER = sys.getsizeof("\xe9") - 1

# Prepend is left out: it would prepend to each side of the cut in the local check below.
_LOCAL_NORMALIZERS = {"BertNormalizer", "Lowercase", "NFC", "NFD", "NFKC", "NFKD", "StripAccents",
                      "Precompiled", "Nmt"}
_SPLITTING_PRE_TOKENIZERS = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit", "Punctuation", "Digits"}
_MODELS = {"WordPiece", "BPE", "Unigram", "WordLevel"}
# A run rule (collapse repeated spaces) never reaches a non-space character.
_SPACE_RUN_PATTERN = re.compile(r"[ {},0-9+*]+")

# Characters either side of a cut that the normalizer sees: combining sequences and NFKC compositions are
# far shorter.
_CONTEXT = 16
# Candidate cuts tried per window before it is grown (each try normalizes a few characters).
_TRIES = 32
# How far back in a window one regex pass looks for word ends.
_SCAN = 4096


class Prefixer:
    """Finds provably exact prefixes for one `tokenizers.Tokenizer`. `enabled` is False when its pipeline
    has a part the proof does not cover: prefixes() then returns every text whole."""

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self._normalizer = tokenizer.normalizer
        self._metaspace = False  # Metaspace replaces only " ": the right side must start with it
        self.enabled = self._pipeline_is_local()

    def prefixes(self, texts: list[str], need: int) -> list[str]:
        """Each text, or a prefix of it whose tokens are the whole text's first ones and number >= need."""
        if not self.enabled:
            return list(texts)
        start = 8 * need + 64  # characters: a few per token, so most texts need one window
        out = list(texts)
        windows = {i: start for i, text in enumerate(texts) if len(text) > start and not _has_surrogate(text)}
        while windows:
            cuts = {}
            for i, window in list(windows.items()):
                if window >= len(texts[i]):
                    del windows[i]  # no provable prefix short of the whole text: tokenize it all
                    continue
                cut = self._last_safe_cut(texts[i], window)
                if cut is None:
                    windows[i] = 2 * window
                else:
                    cuts[i] = cut
            if not cuts:
                continue
            encodings = self._tok.encode_batch([texts[i][:cut] for i, cut in cuts.items()],
                                               add_special_tokens=False)
            for (i, cut), encoding in zip(cuts.items(), encodings, strict=True):
                if len(encoding.ids) >= need:
                    out[i] = texts[i][:cut]
                    del windows[i]
                else:
                    windows[i] = 2 * windows[i]
        return out

    def pair_prefixes(self, firsts: list[str], seconds: list[str], need: int, budget: int):
        """prefixes() of both segments of each pair, such that longest-first truncation to `budget`
        tokens (need > budget) gives the same result on the prefixes as on the whole texts.

        The rule needs only each segment's head and, when both run over the budget and the budget is odd,
        which one is longer (it gets the odd token): then the prefixes are grown until that is known."""
        a, b = self.prefixes(firsts, need), self.prefixes(seconds, need)
        if budget % 2 == 0:
            return a, b
        for i, (first, second) in enumerate(zip(firsts, seconds, strict=True)):
            cut_a, cut_b = len(a[i]) < len(first), len(b[i]) < len(second)
            if not (cut_a or cut_b):
                continue
            if cut_a and cut_b or self._count(second if cut_a else first) > budget:
                a[i], b[i] = self._ordered(first, second, need)
        return a, b

    def _ordered(self, first: str, second: str, need: int) -> tuple[str, str]:
        """Prefixes of two texts whose token counts compare as the whole texts' do."""
        while True:
            need *= 2
            a, b = self.prefixes([first], need)[0], self.prefixes([second], need)[0]
            if len(a) == len(first) or len(b) == len(second):
                break
        if len(a) == len(first):
            return first, self.prefixes([second], self._count(first) + 1)[0]
        return self.prefixes([first], self._count(second) + 1)[0], second

    def _count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def _last_safe_cut(self, text: str, window: int) -> int | None:
        """The last cut in text[:window] that the proof accepts, or None."""
        tries = 0
        high = window
        while high > 0 and tries < _TRIES:
            low = max(0, high - _SCAN)
            for match in reversed(list(_WORD_END.finditer(text, low, high))):
                cut = match.start()
                if cut == 0:
                    continue
                if self._is_safe(text, cut):
                    return cut
                tries += 1
                if tries >= _TRIES:
                    return None
            high = low
        return None

    def _is_safe(self, text: str, cut: int) -> bool:
        left, right = text[max(0, cut - _CONTEXT):cut], text[cut:cut + _CONTEXT]
        if self._normalizer is None:
            n_left, n_right = left, right
        else:
            n_left, n_right = self._normalizer.normalize_str(left), self._normalizer.normalize_str(right)
            if self._normalizer.normalize_str(left + right) != n_left + n_right:
                return False
        if not n_left or n_left[-1].isspace() or not n_right:
            return False
        return n_right[0] == " " if self._metaspace else n_right[0].isspace()

    def _pipeline_is_local(self) -> bool:
        if type(self._tok.model).__name__ not in _MODELS or self._tok.pre_tokenizer is None:
            return False
        if any(not token.content or any(ch.isspace() for ch in token.content)
               for token in self._tok.get_added_tokens_decoder().values()):
            return False
        normalizer_ok = self._normalizer is None or all(
            _normalizer_is_local(part) for part in _parts(_state(self._normalizer), "normalizers"))
        pre_tokenizers = _parts(_state(self._tok.pre_tokenizer), "pretokenizers")
        return normalizer_ok and all(self._pre_tokenizer_is_local(part) for part in pre_tokenizers)

    def _pre_tokenizer_is_local(self, part: dict) -> bool:
        kind = part.get("type")
        if kind == "ByteLevel":
            return part.get("use_regex", True) is True
        if kind == "Metaspace":
            self._metaspace = True
            return part.get("split", True) is True and part.get("replacement") == "\u2581"
        return kind in _SPLITTING_PRE_TOKENIZERS


def _normalizer_is_local(part: dict) -> bool:
    kind = part.get("type")
    if kind == "Replace":
        pattern = part.get("pattern") or {}
        source = pattern.get("String", pattern.get("Regex"))
        content = part.get("content")
        return (isinstance(source, str) and source.startswith(" ") and _SPACE_RUN_PATTERN.fullmatch(source)
                is not None and isinstance(content, str) and content.strip() == "")
    return kind in _LOCAL_NORMALIZERS


def _state(component) -> dict:
    """A normalizer's or pre-tokenizer's settings, as `tokenizers` serializes them."""
    return json.loads(component.__getstate__())


def _parts(state: dict, key: str) -> list[dict]:
    """The components of a Sequence (nested ones flattened), or the component itself."""
    if state.get("type") != "Sequence":
        return [state]
    return [leaf for part in state.get(key, []) for leaf in _parts(part, key)]


def _has_surrogate(text: str) -> bool:
    """Whether the text holds a lone surrogate, which makes the library reject it whole: such a text is
    left whole so that it still fails, and is named, as before."""
    # A string CPython stores one byte per character (ASCII, Latin-1) cannot hold one; its size says so
    # in O(1). Others are encoded a chunk at a time, the fastest scan CPython offers.
    if text.isascii() or sys.getsizeof(text) - _LATIN1_HEADER <= len(text):
        return False
    for start in range(0, len(text), _SCAN_CHUNK):
        try:
            text[start:start + _SCAN_CHUNK].encode("utf-8")
        except UnicodeEncodeError:
            return True
    return False
