"""The fast byte-level BPE path (tkc.runtime.data.bpe) gives exactly the Rust pipeline's ids, offsets and rows."""

import functools
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from tkc.runtime.data import bpe as bpe_mod
from tkc.runtime.data import encode as E
from tkc.runtime.data.bpe import ByteLevelBPE
from tkc.runtime.data.build import _BadRecords, _convert
from tkc.runtime.data.readers import read_entry

_spec = importlib.util.spec_from_file_location(
    "data_helpers", Path(__file__).parents[1] / "fixtures/data/data_helpers.py"
)
H = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(H)
needs_shared = pytest.mark.skipif(
    not H.SHARED.is_dir(), reason=f"shared demo datasets not found at {H.SHARED}"
)
# The benchmark's tokenizer: Qwen2's pre-tokenizer (Split regex + ByteLevel) and NFC normalizer, ChatML specials
QWEN_TINY = Path(__file__).parents[2] / "recipes" / "assets" / "tiny-qwen2"
KTO_TAGS = {"role": "role", "content": "content", "user": "user", "assistant": "assistant"}
SHARED_SETS = {  # (file, format, kind, columns, tags)
    "alpaca": ("alpaca_en_demo.json", "alpaca", "sft", None, None),
    "glaive": ("glaive_toolcall_en_demo.json", "sharegpt", "sft", {"tools": "tools"}, None),
    "dpo": ("dpo_en_demo.json", "sharegpt", "preference", None, None),
    "kto": ("kto_en_demo.json", "sharegpt", "kto", {"messages": "messages"}, KTO_TAGS),
}
UNICODE_TEXTS = [
    "<|im_start|>user\ncaf\u00e9 na\u00efve \u65e5\u672c\u8a9e\u306e\u6587\u3002<|im_end|>\n",
    "\U0001f389\U0001f680 emoji\u200d\U0001f469\u200d\U0001f4bb  \u00a0\u3000 \u0663\u0664\u0665 \u03a9\u03bc\u03ad\u03b3\u03b1",
    "tabs\t\tand\r\n\r\nnewlines \n\n\n  trailing spaces   ",
    "decomposed e\u0301 (NFD) needs the normalizer",  # not NFC: declined, so the Rust pipeline takes it
    "<|im_end|><|im_start|><|endoftext|>adjacent specials<|im_end|>",
    "",
]

ASCII = [chr(c) for c in range(128)]


def _qwen_tiny():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(QWEN_TINY))


def _variant(tok, **changes):
    """The same tokenizer with some tokenizer.json fields replaced."""
    spec = {**json.loads(tok.backend_tokenizer.to_str()), **changes}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )


@functools.cache
def _items(name: str) -> list:
    path, fmt, kind, columns, tags = SHARED_SETS[name]
    e = H.entry(name, path, fmt, kind, H.SHARED, columns=columns, tags=tags)
    raw = read_entry(e, H.SHARED, verify=False)
    items, n = _convert(e, raw, H.SHARED, _BadRecords([e])), len(raw)
    assert len(items) == n > 100
    return items


@functools.cache
def _texts(name: str) -> list[str]:
    items = _items(name)
    chat = E.ChatTemplate(H.template_text("qwen2_5"))
    if name == "dpo":
        convs = [[*ex["messages"], ex[side]] for _, ex in items for side in ("chosen", "rejected")]
        return [chat.spans(c, None)[0] for c in convs]
    return [chat.spans(ex["messages"], ex.get("tools"))[0] for _, ex in items]


def _reference(tok, text: str):
    """One call of the Rust pipeline per text: ids and each token's start character."""
    enc = tok.backend_tokenizer.encode(text, add_special_tokens=False)
    return enc.ids, [o[0] for o in enc.offsets]


def _assert_same(tok, texts: list[str], min_fast: float) -> None:
    fast = ByteLevelBPE.from_tokenizer(tok)
    assert fast is not None
    got = fast.encode_batch(texts)
    assert sum(g is not None for g in got) >= min_fast * len(texts)  # the fast path really ran
    refs = [_reference(tok, text) for text in texts]
    for text, g, ref in zip(texts, got, refs, strict=True):
        if g is not None:
            assert (g[0].tolist(), g[1].tolist()) == ref, text[:80]
    # encode_texts (fast path + Rust for the declined texts) gives the reference ids and label lookups
    for text, e, (ids, starts) in zip(texts, E.encode_texts(tok, texts), refs, strict=True):
        assert e.ids.tolist() == ids
        chars = sorted({0, len(text), *starts[::7], *(s + 1 for s in starts[::11])})
        want = [int(np.searchsorted(starts, c, "left")) if c < len(text) else len(ids) for c in chars]
        assert [e.first_token_at(c) for c in chars] == want


@needs_shared
@pytest.mark.parametrize("name", sorted(SHARED_SETS))
@pytest.mark.parametrize("which", ["qwen_tiny", "gpt2_regex"])
def test_same_ids_and_offsets_as_the_rust_pipeline_on_real_data(name, which):
    tok = (
        _qwen_tiny() if which == "qwen_tiny" else H.tokenizer()
    )  # H's: ByteLevel(use_regex=True), no normalizer
    texts = _texts(name)
    _assert_same(tok, texts, min_fast=0.9)


@pytest.mark.parametrize("which", ["qwen_tiny", "gpt2_regex"])
def test_same_ids_on_unicode_whitespace_and_adjacent_specials(which):
    tok = _qwen_tiny() if which == "qwen_tiny" else H.tokenizer()
    _assert_same(tok, UNICODE_TEXTS, min_fast=0.6)
    if which == "qwen_tiny":  # NFC normalizer: the decomposed text is the Rust pipeline's
        assert ByteLevelBPE.from_tokenizer(tok).encode(UNICODE_TEXTS[3]) is None


def test_tokenizers_it_cannot_reproduce_get_no_fast_path():
    tok = _qwen_tiny()
    spec = json.loads(tok.backend_tokenizer.to_str())
    assert ByteLevelBPE.from_tokenizer(tok) is not None
    stripped = [{**t, "lstrip": True} if t["content"] == "<|im_end|>" else t for t in spec["added_tokens"]]
    assert ByteLevelBPE.from_tokenizer(_variant(tok, added_tokens=stripped)) is None
    assert ByteLevelBPE.from_tokenizer(_variant(tok, normalizer={"type": "Lowercase"})) is None
    trim = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    assert ByteLevelBPE.from_tokenizer(_variant(tok, post_processor=trim)) is None
    assert ByteLevelBPE.from_tokenizer(_variant(tok, model={**spec["model"], "dropout": 0.1})) is None
    meta = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": True}
    assert ByteLevelBPE.from_tokenizer(_variant(tok, pre_tokenizer=meta)) is None


def _rows(kind, items, tok, opts):
    chat = E.ChatTemplate(H.template_text("qwen2_5"))
    counters = E.Counters()
    if kind == "preference":
        rows = E.encode_pairwise(items, tok, chat, opts, print, counters)
    else:
        rows = E.encode_sft(items, tok, chat, opts, print, counters, kto=kind == "kto")
    return rows, counters


@needs_shared
@pytest.mark.parametrize("name", sorted(SHARED_SETS))
@pytest.mark.parametrize(
    "cutoff,truncation,mask_history",
    [(4096, "keep_response", False), (96, "keep_response", True), (64, "right", False)],
)
def test_rows_identical_to_one_rust_call_per_text(monkeypatch, name, cutoff, truncation, mask_history):
    """Rows (ids, labels, truncation, drops) from the fast path equal those of the plain Rust pipeline."""
    tok, kind = _qwen_tiny(), SHARED_SETS[name][2]
    items = _items(name)[:300]
    opts = E.EncodeOptions(cutoff, mask_history=mask_history, truncation=truncation)
    fast_rows, fast_counts = _rows(kind, items, tok, opts)
    assert E.fast_bpe(tok) is not None
    monkeypatch.setattr(E, "fast_bpe", lambda tokenizer: None)
    ref_rows, ref_counts = _rows(kind, items, tok, opts)
    assert fast_counts == ref_counts
    if cutoff < 100:  # the truncation rules really ran (a cut that leaves no answer drops the row)
        assert ref_counts.truncated + ref_counts.dropped_no_labels > len(items) // 4
    assert len(fast_rows) == len(ref_rows) > 0
    for f, r in zip(fast_rows, ref_rows, strict=True):
        assert f.keys() == r.keys()
        for k in f:
            assert np.array_equal(f[k], r[k]), k


def test_memos_that_fill_up_start_over_without_losing_a_batch(monkeypatch):
    tok = H.tokenizer()
    fast = ByteLevelBPE.from_tokenizer(tok)
    monkeypatch.setattr(bpe_mod, "_MAX_WORDS", 12)  # each batch below holds more distinct words than that
    monkeypatch.setattr(bpe_mod, "_MAX_PIECES", 3)
    batches = [["the cat sat on the mat", "a dog ran"], ["the cat ran far away today", "<|im_end|> x y z w"]]
    for texts in batches:
        for text, (ids, starts) in zip(texts, fast.encode_batch(texts), strict=True):
            assert (ids.tolist(), starts.tolist()) == tuple(map(list, _reference(tok, text)))
    assert len(fast._words) <= 12 + 12 and len(fast._pieces) <= 3


QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
LLAMA3_SPLIT = QWEN2_SPLIT.replace(r"|\p{N}|", r"|\p{N}{1,3}|")


@pytest.mark.parametrize("pattern", [bpe_mod.GPT2_PATTERN, QWEN2_SPLIT, LLAMA3_SPLIT])
def test_ascii_translation_splits_ascii_text_as_the_unicode_pattern_does(pattern):
    import random

    import regex

    rng = random.Random(0)
    texts = [*UNICODE_TEXTS, *("".join(rng.choice(ASCII) for _ in range(200)) for _ in range(300))]
    texts = [t for t in texts if t.isascii()] + ["It's 2024:\tWE'LL  see...\r\n\n  x  \x1c\x1f\x0b end "]
    ascii_rx = bpe_mod._ascii_pattern(pattern)
    assert ascii_rx is not None
    unicode_rx = regex.compile(pattern)
    assert all(ascii_rx.findall(t) == unicode_rx.findall(t) for t in texts)


def test_ascii_translation_declines_what_it_does_not_spell_out():
    for pattern in (r"[\p{Lu}\p{Ll}]+", r"\w+", r"\d+", r"[a-z&&[^aeiou]]", r"[^\S\r\n]+", r"\b\p{L}+"):
        assert bpe_mod._ascii_pattern(pattern) is None, pattern
    # a `]` first in a class is a member, not its end; any later `]` (even after a `^`) ends the class
    got = bpe_mod._ascii_pattern(r"[]\p{L}]+|[^]\s]|[.^]\p{L}")
    assert got.pattern == r"[]A-Za-z]+|[^]\t\n\x0b\x0c\r\x20]|[.^][A-Za-z]"


def test_a_wrong_ascii_translation_is_caught_by_the_probe(monkeypatch):
    tok = H.tokenizer()
    assert ByteLevelBPE.from_tokenizer(tok)._ascii_rx is not None  # the fast path takes `re` for ASCII text
    monkeypatch.setattr(bpe_mod, "_ascii_pattern", lambda p: re.compile(r"[a-z]+|[^a-z]"))  # splits "It's" wrongly
    fast = ByteLevelBPE.from_tokenizer(tok)
    assert fast is not None and fast._ascii_rx is None  # back to the `regex` module for every text
    _assert_same(tok, [t for t in UNICODE_TEXTS if t.isascii()] + ["It's ASCII, isn't it?"], min_fast=1.0)
