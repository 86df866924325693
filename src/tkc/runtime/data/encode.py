"""Tokenize canonical examples per stage kind: labels from the template's assistant spans, truncation policies.

Rows are dicts of numpy int32 arrays (converted to Arrow columns by `tkc.runtime.data.store`).

Truncation (`data.truncation`):
* `keep_response` (default): whole earlier turns go first, then the prompt keeps its start (system prompt,
  tool definitions, the first turn's start) and the response its start; rows calling a tool whose definition
  was cut are dropped (`stats["dropped_tool_defs"]`). See `tkc.runtime.data.truncation`. Each changed row is
  reported in `stats["cuts"]` (the first 50: where, turns dropped, tokens cut, dropped and why).
* `right`: keep the first cutoff_len tokens.
A row whose labels are all -100 after truncation trains nothing (and makes a NaN loss); it is dropped
and counted in `stats["dropped_no_labels"]`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from tkc.bundle.chat import ChatTemplate, Span
from tkc.runtime.data.bpe import ByteLevelBPE
from tkc.runtime.data.errors import BadRecord
from tkc.runtime.data.truncation import Cut, called_tools, keep_response_bounds, select_prompt, tool_def_ends

IGNORE = -100


@dataclass
class EncodeOptions:
    cutoff_len: int
    train_on_prompt: bool = False
    mask_history: bool = False
    truncation: str = "keep_response"
    media: tuple[str, ...] = ()  # media columns passed through to sft/kto rows (lists of absolute paths)

    def __post_init__(self):
        if self.truncation not in ("keep_response", "right"):
            raise ValueError(
                f"unknown data.truncation {self.truncation!r}; expected 'keep_response' or 'right'"
            )
        if self.cutoff_len < 2:
            raise ValueError(f"data.cutoff_len must be at least 2, got {self.cutoff_len}")


_MAX_CUTS = 50  # per-row truncation reports kept in the stats (the counts cover every row)


@dataclass
class Counters:
    truncated: int = 0
    dropped_no_labels: int = 0
    dropped_tool_defs: int = 0  # rows whose kept assistant turns call a tool whose definition was cut
    cuts: list = field(default_factory=list)  # the first _MAX_CUTS rows truncation changed: where and what

    def note(self, where, cut: Cut | None, dropped: str | None = None) -> None:
        if cut is None:
            return
        self.truncated += 1
        if len(self.cuts) < _MAX_CUTS:
            self.cuts.append({"where": str(where), **asdict(cut), "missing_tools": list(cut.missing_tools),
                              "dropped": dropped})  # fmt: skip

    def merge(self, other: Counters) -> None:
        self.truncated += other.truncated
        self.dropped_no_labels += other.dropped_no_labels
        self.dropped_tool_defs += other.dropped_tool_defs
        self.cuts += other.cuts[: _MAX_CUTS - len(self.cuts)]


# ---------------------------------------------------------------- tokenizer access


class Encoded:
    """Token ids of one text and a map from character positions to token indices."""

    __slots__ = ("ids", "_enc", "_starts", "_text_len")

    def __init__(self, ids: np.ndarray, text_len: int, enc=None, starts: np.ndarray | None = None):
        self.ids, self._enc, self._starts, self._text_len = ids, enc, starts, text_len

    def first_token_at(self, char: int) -> int:
        """Index of the first token that starts at or after `char` (len(ids) when none does)."""
        if char >= self._text_len:
            return len(self.ids)
        if self._enc is not None:
            # two lookups per span boundary instead of materialising every offset tuple in Python
            t = self._enc.char_to_token(char)
            if t is not None:
                return t if self._enc.token_to_chars(t)[0] >= char else t + 1
            self._starts = _starts(self._enc.offsets)
            self._enc = None
        return int(np.searchsorted(self._starts, char, "left"))


def encode_texts(tokenizer, texts: list[str]) -> list[Encoded]:
    """Tokenize a batch (no special tokens added), keeping char -> token lookups.

    Texts the exact fast path (`tkc.runtime.data.bpe`) takes skip the Rust pipeline; the rest go through it
    in one batch. Both give the same ids and token start positions.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        out = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return [Encoded(np.asarray(i, dtype=np.int32), len(t), starts=_starts(o))
                for i, o, t in zip(out["input_ids"], out["offset_mapping"], texts, strict=True)]  # fmt: skip
    fast = fast_bpe(tokenizer)
    done = fast.encode_batch(texts) if fast is not None else [None] * len(texts)
    rest = [k for k, d in enumerate(done) if d is None]
    encs = dict(
        zip(rest, backend.encode_batch([texts[k] for k in rest], add_special_tokens=False), strict=True)
    )
    return [
        Encoded(np.asarray(encs[k].ids, dtype=np.int32), len(t), enc=encs[k])
        if d is None
        else Encoded(np.asarray(d[0], dtype=np.int32), len(t), starts=d[1])
        for k, (t, d) in enumerate(zip(texts, done, strict=True))
    ]


_FAST: dict[int, tuple] = {}


def fast_bpe(tokenizer) -> ByteLevelBPE | None:
    """The tokenizer's exact fast path (built once per tokenizer; None when it has none)."""
    backend = tokenizer.backend_tokenizer
    hit = _FAST.get(id(backend))
    if hit is None or hit[0] is not backend:
        if len(_FAST) >= 4:
            _FAST.clear()
        hit = _FAST[id(backend)] = (backend, ByteLevelBPE.from_tokenizer(tokenizer))
    return hit[1]


def _starts(offsets) -> np.ndarray:
    return np.fromiter((o[0] for o in offsets), dtype=np.int64, count=len(offsets))


def label_mask(encoded: Encoded, spans: list[Span]) -> np.ndarray:
    """True for tokens whose first character lies inside one of the spans."""
    mask = np.zeros(len(encoded.ids), dtype=bool)
    for s, e, _ in spans:
        mask[encoded.first_token_at(s) : encoded.first_token_at(e)] = True
    return mask


# ---------------------------------------------------------------- truncation


def _token_spans(encoded: Encoded, spans: list[Span]) -> list[tuple[int, int]]:
    return [(encoded.first_token_at(s), encoded.first_token_at(e)) for s, e, _ in spans]


def _head_end(text: str, messages: list[dict], spans: list[Span]) -> int:
    """Where the first user turn's content starts (tool definitions come before it in every template)."""
    first = next((m["content"] for m in messages if m["role"] == "user"), "")
    at = text.rfind(first, 0, spans[0][0]) if first else -1
    return at if at >= 0 else spans[0][0]


@dataclass
class Rendered:
    """One rendered, tokenized conversation: what truncation needs to know about it."""

    encoded: Encoded
    text: str
    spans: list[Span]
    messages: list[dict]
    tools: list[dict] | None

    def cut(self, budget: int, resp_keep: int) -> tuple[np.ndarray, Cut]:
        """Kept token indices and what was cut, for a prompt budget and the response tokens kept."""
        tspans = _token_spans(self.encoded, self.spans)
        start, n = tspans[-1][0], len(self.encoded.ids)
        prompt, dropped, head_kept = select_prompt(tspans, budget, start - self._header_start())
        sel = np.concatenate([prompt, np.arange(start, start + resp_keep)])
        cut = Cut(dropped, start - len(prompt), n - start - resp_keep)
        if self.tools and head_kept < tspans[0][0]:
            ends = tool_def_ends(self.text, self.tools, _head_end(self.text, self.messages, self.spans))
            kept_turns = [self.spans[k][2] for k in _kept_turns(len(tspans), dropped)]
            missing = sorted(n for n in called_tools(self.messages, kept_turns)
                             if n in ends and self.encoded.first_token_at(ends[n]) > head_kept)  # fmt: skip
            cut.missing_tools = tuple(missing)
        return sel, cut


    def _header_start(self) -> int:
        """The first token after the last prompt turn's content (where the response's turn header begins)."""
        i = self.spans[-1][2]
        content = self.messages[i - 1].get("content") if i > 0 else ""
        at = self.text.rfind(content, 0, self.spans[-1][0]) if content else -1
        return self.encoded.first_token_at(at + len(content) if at >= 0 else self.spans[-1][0])


def _kept_turns(k: int, dropped: int) -> list[int]:
    """Assistant turns (by position) left after `dropped` units went, in select_prompt's order."""
    gone = set([*range(1, k - 1), 0][:dropped]) if k > 1 else set()
    return [i for i in range(k) if i not in gone]


def truncate(ids: np.ndarray, labels: np.ndarray, row: Rendered, opts: EncodeOptions):
    """(ids, labels, Cut or None): a row over cutoff_len cut by `data.truncation` (see the module docstring)."""
    n, cutoff = len(ids), opts.cutoff_len
    if n <= cutoff:
        return ids, labels, None
    if opts.truncation == "right":
        return ids[:cutoff], labels[:cutoff], Cut(response_tokens_cut=n - cutoff)
    start = row.encoded.first_token_at(row.spans[-1][0])
    p, r = keep_response_bounds(start, n - start, cutoff)
    sel, cut = row.cut(p, min(r, n - start))
    return ids[sel], labels[sel], cut


def _trains(labels: np.ndarray) -> bool:
    # the first label is never used: a causal LM predicts token t from tokens < t
    return bool((labels[1:] != IGNORE).any())


# ---------------------------------------------------------------- rendering


def render_all(items: list, chat: ChatTemplate, pick: Callable[[dict], list[dict]], on_bad) -> list:
    """[(where, example, text, spans, messages)] for the examples whose conversation renders; others to on_bad."""
    out = []
    for where, ex in items:
        try:
            messages = pick(ex)
            _check_reasoning(messages, chat)
            text, spans = chat.spans(messages, ex.get("tools"))
            if not spans:
                raise BadRecord(
                    "the rendered conversation has no assistant turn to train on", "an assistant turn"
                )
        except BadRecord as exc:
            on_bad(exc.at(where))
            continue
        except Exception as exc:  # TemplateRefused, SpanError, jinja errors: the record, not the run, is bad
            on_bad(
                BadRecord(
                    f"chat template: {type(exc).__name__}: {exc}",
                    "a conversation the template accepts",
                    where,
                )
            )
            continue
        out.append((where, ex, text, spans, messages))
    return out


def _check_reasoning(messages: list[dict], chat: ChatTemplate) -> None:
    """Reasoning only where the template renders it: elsewhere it would vanish from the trained text unseen."""
    if chat.renders_reasoning():
        return
    for i, m in enumerate(messages):
        if m.get("reasoning_content"):
            raise BadRecord(
                f"message {i} carries reasoning, but the chat template has no reasoning field",
                "a template that renders reasoning_content (e.g. qwen3, glm4_5), or records without reasoning",
            )


def _masked(encoded: Encoded, spans: list[Span], train_all: bool, last_only: bool):
    ids = encoded.ids
    if train_all:
        labels = ids.copy()
    else:
        keep = spans[-1:] if last_only else spans
        labels = np.where(label_mask(encoded, keep), ids, IGNORE).astype(np.int32)
    return ids, labels, encoded.first_token_at(spans[-1][0])


# ---------------------------------------------------------------- per stage kind


def encode_sft(
    items, tokenizer, chat: ChatTemplate, opts: EncodeOptions, on_bad, counters: Counters, *, kto=False
):
    """sft rows {input_ids, labels, attention_mask}; kto rows add `label` and train the last turn only."""
    rendered = render_all(items, chat, lambda ex: ex["messages"], on_bad)
    encoded = encode_texts(tokenizer, [r[2] for r in rendered])
    rows = []
    for (where, ex, text, spans, messages), te in zip(rendered, encoded, strict=True):
        ids, labels, _ = _masked(te, spans, opts.train_on_prompt and not kto, opts.mask_history or kto)
        ids, labels, cut = truncate(ids, labels, Rendered(te, text, spans, messages, ex.get("tools")), opts)
        if _dropped(where, cut, labels, counters):
            continue
        row = {"input_ids": ids, "labels": labels, "attention_mask": np.ones(len(ids), dtype=np.int32)}
        if kto:
            row["label"] = int(ex["label"])
        row.update({m: list(ex[m]) for m in opts.media})
        rows.append(row)
    return rows


def _dropped(where, cut: Cut | None, labels: np.ndarray, counters: Counters) -> bool:
    """Count what truncation did to a row; True when the row goes (a cut tool definition, nothing to train)."""
    why = None
    if cut is not None and cut.missing_tools:
        why = f"calls {', '.join(cut.missing_tools)} whose definition did not fit in cutoff_len"
        counters.dropped_tool_defs += 1
    elif not _trains(labels):
        why = "nothing left to train after truncation to cutoff_len"
        counters.dropped_no_labels += 1
    counters.note(where, cut, why)
    return why is not None


def encode_pairwise(items, tokenizer, chat: ChatTemplate, opts: EncodeOptions, on_bad, counters: Counters):
    """rm/dpo rows {chosen_,rejected_}{input_ids, labels, attention_mask}: same prompt, labels on the answer only."""
    sides = {}
    for side in ("chosen", "rejected"):
        rendered = render_all(items, chat, lambda ex, s=side: [*ex["messages"], ex[s]], on_bad)
        sides[side] = {id(r[1]): r for r in rendered}
    both = [ex for _, ex in items if id(ex) in sides["chosen"] and id(ex) in sides["rejected"]]
    texts = [sides[s][id(ex)][2] for ex in both for s in ("chosen", "rejected")]
    encoded = encode_texts(tokenizer, texts)
    rows = []
    for k, ex in enumerate(both):
        pair = []
        for j, s in enumerate(("chosen", "rejected")):
            where, _, text, spans, messages = sides[s][id(ex)]
            te = encoded[2 * k + j]
            pair.append((*_masked(te, spans, False, True), Rendered(te, text, spans, messages, ex.get("tools"))))
        row = _pair_row(where, pair, opts, counters)
        if row is not None:
            row.update({m: list(ex[m]) for m in opts.media})  # one image list for both sides (dpo)
            rows.append(row)
    return rows


def _pair_row(where, pair, opts: EncodeOptions, counters: Counters) -> dict | None:
    """Both sides cut alike: the same prompt tokens, each answer's start (when either side is too long)."""
    if all(len(ids) <= opts.cutoff_len for ids, _, _, _ in pair):
        cuts = [(ids, labels, None) for ids, labels, _, _ in pair]
    else:
        keep = keep_response_bounds(min(p for _, _, p, _ in pair), max(len(i) - p for i, _, p, _ in pair),
                                    opts.cutoff_len)  # fmt: skip
        cuts = [(ids[sel], labels[sel], cut) for ids, labels, plen, r in pair
                for sel, cut in [r.cut(min(keep[0], plen), min(keep[1], len(ids) - plen))]]  # fmt: skip
    worst = max((c for _, _, c in cuts if c), key=lambda c: (bool(c.missing_tools), c.response_tokens_cut),
                default=None)  # fmt: skip
    if any(_dropped_side(cuts)) and _dropped(where, worst, np.zeros(0, np.int32), counters):
        return None
    counters.note(where, worst)
    row = {}
    for side, (ids, labels, _) in zip(("chosen", "rejected"), cuts, strict=True):
        row.update({f"{side}_input_ids": ids, f"{side}_labels": labels,
                    f"{side}_attention_mask": np.ones(len(ids), dtype=np.int32)})  # fmt: skip
    return row


def _dropped_side(cuts) -> list[bool]:
    return [bool(c and c.missing_tools) or not _trains(labels) for _, labels, c in cuts]


def encode_pt(items, tokenizer, opts: EncodeOptions, eos_id: int, batch: int = 1000) -> list[dict]:
    """pt rows: every text + eos, concatenated in order and cut into cutoff_len chunks (the last may be shorter)."""
    eos = np.asarray([eos_id], dtype=np.int32)
    parts = []
    for start in range(0, len(items), batch):
        encoded = encode_texts(tokenizer, [ex["text"] for _, ex in items[start : start + batch]])
        parts += [p for e in encoded for p in (e.ids, eos)]
    stream = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    rows = []
    for start in range(0, len(stream), opts.cutoff_len):
        chunk = stream[start : start + opts.cutoff_len]
        if len(chunk) > 1:  # a one-token chunk predicts nothing
            rows.append(
                {"input_ids": chunk, "labels": chunk.copy(), "attention_mask": np.ones(len(chunk), np.int32)}
            )
    return rows
