"""An exact, faster path through byte-level BPE tokenizers (Qwen2, Llama-3, GPT-2 shape).

Why: the Rust `tokenizers` pipeline spends most of its time on chat data in its pre-tokenizer regex
(oniguruma) and in building offset-carrying Encodings. This path splits on the added tokens, runs the same
regex with the `regex` module (or, for ASCII-only text, with Python's `re` and the pattern's classes spelled
out as their ASCII members), and gives each distinct pre-token to the tokenizer's own BPE model once
(memoised by text: chat data repeats its words and its system prompt). Token start
positions come from the vocab's byte lengths. Every step is the one the Rust pipeline performs for such a
tokenizer, so ids and offsets are the same. `from_tokenizer` accepts only tokenizers whose every stage it
reproduces (and checks itself against the Rust pipeline on a probe text, and on its ASCII characters alone for
the `re` path); `encode_batch` declines (None)
a text the normalizer would change or holding characters unassigned in Python's Unicode tables, where
the two regex engines' tables could disagree: the caller tokenizes those with the Rust pipeline.
"""

from __future__ import annotations

import json
import re
import unicodedata
from array import array
from functools import lru_cache

import numpy as np

# tokenizers' ByteLevel pre-tokenizer regex (use_regex=True), src/pre_tokenizers/byte_level.rs
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_MAX_WORDS = 1_000_000  # memoised pre-tokens kept before the memo starts over
# texts between added tokens this short have their pre-tokens memoised, up to this many of them
_MEMO_PIECE, _MAX_PIECES = 256, 100_000
# normalizers that leave a text unchanged when it is already in their form (ASCII always is)
_UNICODE_FORMS = {"NFC", "NFD", "NFKC", "NFKD"}
_PROBE = (
    "Hello, World! It's 2024: we'll see... \t\n\n  x  \r\n"
    + "".join(chr(c) for c in range(128))
    + " ".join(chr(c) * 2 + "a" + chr(c) + "1" + chr(c) for c in range(128))
    + "I'M HE'S they'RE  a1b22c333 __init__ <tag> 'quoted' \"dq\" end  "
    + "caf\u00e9 na\u00efve \u65e5\u672c\u8a9e\u3002 \U0001f389\U0001f389 \u00a0x\u3000y \u03a9mega \u0663\u0664 \u2028 end"
)


@lru_cache(maxsize=1)
def _byte_chars() -> list[str]:
    """GPT-2's bytes_to_unicode: the printable character each byte is written as in the vocab."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def _split_pattern(pre: dict | None) -> str | None:
    """The pre-token regex when the pre-tokenizer is one this path reproduces, else None."""
    if pre is None:
        return None
    if pre.get("type") == "ByteLevel":
        return GPT2_PATTERN if pre.get("use_regex", True) and not pre.get("add_prefix_space") else None
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not steps or len(steps) != 2:
        return None
    split, level = steps
    ok = (
        split.get("type") == "Split"
        and "Regex" in (split.get("pattern") or {})
        and split.get("behavior") == "Isolated"
        and not split.get("invert")
        and level.get("type") == "ByteLevel"
        and not level.get("add_prefix_space")
        and not level.get("use_regex", True)
    )
    return split["pattern"]["Regex"] if ok else None


# ASCII members of the classes byte-level pre-tokenizer patterns use (Unicode White_Space, L, N)
_ASCII_SPACE = r"\t\n\x0b\x0c\r\x20"
_ASCII_CLASSES = {r"\p{L}": "A-Za-z", r"\p{N}": "0-9", r"\s": _ASCII_SPACE}
# escapes whose ASCII meaning is not spelled out here (other classes, anchors, back-references, code points)
_ASCII_REFUSED = re.compile(r"\\[pPdDwWbBhHXARzZGkKgNuUx0-9]")


def _ascii_pattern(pattern: str) -> re.Pattern | None:
    r"""The pattern for ASCII-only text, for Python's `re` (~2x faster than `regex` there), or None.

    `\p{L}`, `\p{N}`, `\s` and `\S` become their ASCII members, spelled out, inside and outside classes;
    any other escape that names a class or an anchor declines. A wrong translation would still be caught:
    `ByteLevelBPE.from_tokenizer` checks this path against the Rust pipeline on an ASCII probe.
    """
    out, i, in_class, class_body = [], 0, False, 0
    while i < len(pattern):
        for name, members in _ASCII_CLASSES.items():
            if pattern.startswith(name, i):
                out.append(members if in_class else f"[{members}]")
                i += len(name)
                break
        else:
            if pattern.startswith(r"\S", i):
                if in_class:
                    return None
                out.append(f"[^{_ASCII_SPACE}]")
                i += 2
                continue
            if _ASCII_REFUSED.match(pattern, i):
                return None
            if pattern[i] == "\\":
                out.append(pattern[i : i + 2])
                i += 2
                continue
            if pattern[i] == "[" and in_class:
                return None  # a nested class or a set operation (`&&[...]`)
            if pattern[i] == "[":
                in_class = True
                class_body = i + 2 if pattern.startswith("[^", i) else i + 1
            elif pattern[i] == "]" and in_class and i > class_body:  # a `]` first in a class is literal
                in_class = False
            out.append(pattern[i])
            i += 1
    try:
        return re.compile("".join(out))
    except re.error:
        return None


def _post_ok(post: dict | None) -> bool:
    # with add_special_tokens=False a post-processor only matters when it moves offsets (trim_offsets)
    if post is None:
        return True
    kind = post.get("type")
    if kind == "Sequence":
        return all(_post_ok(p) for p in post.get("processors") or [])
    if kind == "ByteLevel":
        return not post.get("trim_offsets")
    return kind == "TemplateProcessing"


def _forms(norm: dict | None) -> list[str] | None:
    """The Unicode normal forms the normalizer applies ([] for none), or None when it does anything else."""
    if norm is None:
        return []
    if norm.get("type") == "Sequence":
        steps = [_forms(n) for n in norm.get("normalizers") or []]
        return None if any(f is None for f in steps) else [f for step in steps for f in step]  # type: ignore[union-attr]
    return [norm["type"]] if norm.get("type") in _UNICODE_FORMS else None


class ByteLevelBPE:
    """`encode_batch(texts)`: per text (ids, start character of each token) as the Rust pipeline gives them, or None."""

    def __init__(self, backend, spec: dict, pattern: str):
        import regex

        self._rx = regex.compile(pattern)
        self._ascii_rx = _ascii_pattern(pattern)
        added = sorted(spec.get("added_tokens") or [], key=lambda t: -len(t["content"]))
        self._added = {t["content"]: array("i", [t["id"]]).tobytes() for t in added}
        # leftmost-longest over the added tokens, as tokenizers' AddedVocabulary (aho-corasick) matches
        self._added_rx = (
            regex.compile("(" + "|".join(regex.escape(t["content"]) for t in added) + ")") if added else None
        )
        self._to_bytes = str.maketrans({chr(b): c for b, c in enumerate(_byte_chars())})  # latin-1 -> vocab
        self._forms = _forms(spec.get("normalizer"))
        self._known: dict[str, bool] = {}
        bare = {**spec, "normalizer": None, "pre_tokenizer": None, "post_processor": None, "added_tokens": []}
        self._model = type(backend).from_str(json.dumps({**bare, "decoder": None})).model
        vocab = backend.get_vocab(with_added_tokens=False)
        lengths = np.zeros(max([*vocab.values(), *(t["id"] for t in added), 0]) + 1, dtype=np.int64)
        for token, i in vocab.items():
            lengths[i] = len(token)  # one vocab character per byte
        for t in added:
            lengths[t["id"]] = len(t["content"].encode())
        self._lengths = lengths
        self._words: dict[str, bytes] = {}  # pre-token -> its ids as native int32 bytes
        # short piece -> its pre-tokens (role headers, newlines, system prompts)
        self._pieces: dict[str, list[str]] = {}

    @classmethod
    def from_tokenizer(cls, tokenizer) -> ByteLevelBPE | None:
        """The fast path for this tokenizer, or None when any stage is one it does not reproduce exactly."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None or getattr(backend, "encode_special_tokens", False):
            return None
        spec = json.loads(backend.to_str())
        model, pattern = spec.get("model") or {}, _split_pattern(spec.get("pre_tokenizer"))
        if (
            model.get("type") != "BPE"
            or model.get("dropout") not in (None, 0.0)
            or pattern is None
            or _forms(spec.get("normalizer")) is None
            or not _post_ok(spec.get("post_processor"))
            or spec.get("truncation") is not None
            or spec.get("padding") is not None
        ):
            return None
        added = spec.get("added_tokens") or []
        if any(t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in added):
            return None  # they change the text around the token
        if len({bool(t.get("normalized")) for t in added}) > 1:
            return None  # matched in two passes (raw text, then normalized pieces): not one leftmost-longest

        try:
            fast = cls(backend, spec, pattern)
        except Exception:  # a regex the `regex` module reads differently: keep the Rust pipeline
            return None
        probe = _PROBE + "".join(t["content"] + " x" for t in added)
        ascii_probe = "".join(c for c in probe if c.isascii())  # takes the `re` path, when there is one
        ascii_ok = fast._agrees(backend, ascii_probe)
        if not ascii_ok and fast._ascii_rx is not None:
            fast._ascii_rx = None  # a translation the probe disproves: the `regex` module for every text
            ascii_ok = fast._agrees(backend, ascii_probe)
        return fast if ascii_ok and fast._agrees(backend, probe) else None

    def _agrees(self, backend, text: str) -> bool:
        self._pieces.clear()  # pre-tokens memoised by a path that is being tested or was just dropped
        mine = self.encode(text)
        ref = backend.encode(text, add_special_tokens=False)
        return (
            mine is not None
            and mine[0].tolist() == ref.ids
            and mine[1].tolist() == [o[0] for o in ref.offsets]
        )

    def _pre_tokens(self, piece: str) -> list[str]:
        if len(piece) <= _MEMO_PIECE:
            hit = self._pieces.get(piece)
            if hit is None:
                if len(self._pieces) >= _MAX_PIECES:
                    self._pieces.clear()
                hit = self._pieces[piece] = self._split(piece)
            return hit
        return self._split(piece)

    def _split(self, piece: str) -> list[str]:
        if not piece:
            return []
        rx = self._ascii_rx if self._ascii_rx is not None and piece.isascii() else self._rx
        words = rx.findall(piece)
        if "".join(words) == piece:
            return words
        out, pos = [], 0  # "Isolated": the text between matches is a pre-token too
        for m in rx.finditer(piece):
            if m.start() > pos:
                out.append(piece[pos : m.start()])
            out.append(m.group())
            pos = m.end()
        return [*out, piece[pos:]] if pos < len(piece) else out

    def _learn(self, words: set[str]) -> None:
        """BPE of new pre-tokens by the tokenizer's own model, one `tokenize` call per distinct word.

        The model alone is what the Rust pipeline applies to each pre-token after the byte mapping (no
        normalizer, pre-tokenizer or added tokens are involved), so one Encoding of all the words, which
        also builds offsets and word ids, is not needed.
        """
        todo = [w for w in words if w not in self._words]
        if not todo:
            return
        if len(self._words) + len(todo) > _MAX_WORDS:
            self._words.clear()
            todo = list(words)  # the batch's other words were in the memo just cleared
        tokenize, to_bytes = self._model.tokenize, self._to_bytes

        def ids(word: str) -> bytes:
            return array(
                "i", [t.id for t in tokenize(word.encode().decode("latin-1").translate(to_bytes))]
            ).tobytes()

        self._words.update((w, ids(w)) for w in todo)

    def _eligible(self, text: str) -> bool:
        """ASCII, or text the normalizer leaves as it is, made of characters both regex engines know."""
        if text.isascii():
            return True
        if not all(unicodedata.is_normalized(form, text) for form in self._forms):
            return False
        known = self._known
        for c in set(text):
            if c not in known:
                # unassigned in Python's Unicode tables: the Rust crates' newer tables may classify it
                known[c] = ord(c) < 128 or unicodedata.category(c) not in ("Cn", "Cs", "Co")
            if not known[c]:
                return False
        return True

    def encode_batch(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Per text: (ids, start char of each token), or None for a text this path declines."""
        split = self._added_rx.split if self._added_rx is not None else (lambda t: [t])
        parts = [split(t) if self._eligible(t) else None for t in texts]
        words = [None if p is None else [self._pre_tokens(x) for x in p[::2]] for p in parts]
        self._learn({w for ws in words if ws is not None for part in ws for w in part})
        return self._join(texts, parts, words)

    def _join(self, texts: list[str], parts: list, words: list) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """The memoised word ids of every text laid end to end in one array, then cut per text (views)."""
        cached, join, texts_ids = self._words.__getitem__, b"".join, []
        for p, ws in zip(parts, words, strict=True):
            seq: list[bytes] = []
            if ws is not None:
                for k, part_words in enumerate(ws):
                    if k:
                        seq.append(self._added[p[2 * k - 1]])
                    seq.extend(map(cached, part_words))
            texts_ids.append(join(seq))
        all_ids = np.frombuffer(join(texts_ids), dtype=np.int32).copy()  # writable, like any other row array
        token_ends = np.cumsum(np.fromiter(map(len, texts_ids), dtype=np.int64, count=len(texts_ids)))
        token_ends //= all_ids.itemsize
        # byte offset of every token from the start of its text: an exclusive cumsum restarted per text
        offsets = np.zeros(len(all_ids) + 1, dtype=np.int64)
        np.cumsum(self._lengths[all_ids], out=offsets[1:])
        out: list[tuple[np.ndarray, np.ndarray] | None] = []
        start = 0
        for text, ws, end in zip(texts, words, token_ends, strict=True):
            if ws is None:
                out.append(None)
                continue
            starts = offsets[start:end] - offsets[start]
            if not text.isascii():
                utf8 = np.frombuffer(text.encode(), dtype=np.uint8)
                starts = (np.cumsum((utf8 & 0xC0) != 0x80) - 1)[starts]  # the character each byte belongs to
            out.append((all_ids[start:end], starts))
            start = end
        return out

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray] | None:
        return self.encode_batch([text])[0]
