"""Templates that end an assistant turn with the next role header (GLM, ChatGLM3, Apertus) or whose history turns
lose their end token (GPT-OSS): every trained turn still ends with a token generation stops at."""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from tkc.bundle.chat import ChatTemplate, assistant_spans
from tkc.catalog.chat import list_templates, load_template
from tkc.runtime.data import build_stage_data
from tkc.runtime.data.encode import Counters, EncodeOptions, encode_sft
from tkc.runtime.data.tokenizer import stop_token_ids

_spec = importlib.util.spec_from_file_location(
    "data_helpers", Path(__file__).parents[1] / "fixtures/data/data_helpers.py"
)
H = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(H)

TWO_TURNS = [
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Name a color."},
    {"role": "assistant", "content": "Blue."},
]


def _chat(template_id: str) -> ChatTemplate:
    text, meta = load_template(template_id)
    return ChatTemplate(text, meta["bos_token"], meta["eos_token"], tuple(meta["stop_tokens"]),
                        dict(meta["render_kwargs"]))  # fmt: skip


def _closed_templates() -> list[str]:
    """Templates whose trained spans differ from the bare assistant spans: the ones this closing changes."""
    out = []
    for t in list_templates():
        c = _chat(t)
        raw = assistant_spans(c.text, TWO_TURNS, bos_token=c.bos_token, eos_token=c.eos_token, **c.render_kwargs)
        if c.spans(TWO_TURNS) != raw:
            out.append(t)
    return out


CLOSED = _closed_templates()


def _tokenizer():
    """The data tests' BPE tokenizer, plus every special token the closed templates write (<|user|>, ...) as one
    id each, as the vendors' tokenizers have them; eos <|endoftext|>."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(H.tokenizer().backend_tokenizer.to_str()),
                                  eos_token="<|endoftext|>", pad_token="<|endoftext|>")  # fmt: skip
    specials = set()
    for t in CLOSED:
        c = _chat(t)
        specials |= set(re.findall(r"<\|[a-z_]+\|>|\[gMASK\]|<sop>|</s>", c.text)) | {*c.stop_tokens, c.eos_token}
    tok.add_tokens(sorted(specials - {""}), special_tokens=True)
    return tok


TOK = _tokenizer()


def _blocks(ids, labels) -> list[list[int]]:
    """Maximal runs of trained ids (labels equal to the ids)."""
    trained = np.asarray(labels) != -100
    assert (np.asarray(labels)[trained] == np.asarray(ids)[trained]).all()
    edges = np.flatnonzero(np.diff(np.concatenate([[0], trained.astype(int), [0]])))
    return [list(ids[s:e]) for s, e in zip(edges[::2], edges[1::2], strict=True)]


def test_the_closed_templates_are_the_ones_without_an_end_marker():
    assert {"chatglm3", "glm4", "glm4_hf", "glm4_5", "glm4_6", "apertus"} <= set(CLOSED)
    assert not {"qwen2_5", "llama3", "mistral_v3", "phi3_5", "gemma2"} & set(CLOSED)


@pytest.mark.parametrize("template_id", CLOSED)
def test_each_trained_turn_ends_with_a_stop_token(template_id):
    chat = _chat(template_id)
    stops = {TOK.convert_tokens_to_ids(t) for t in (*chat.stop_tokens, chat.eos_token) if t}
    bad = []
    rows = encode_sft([("r0", {"messages": TWO_TURNS})], TOK, chat, EncodeOptions(cutoff_len=4096), bad.append,
                      Counters())  # fmt: skip
    assert not bad and len(rows) == 1
    ids, labels = rows[0]["input_ids"], rows[0]["labels"]
    blocks = _blocks(ids, labels)
    assert len(blocks) == 2, [TOK.decode(b) for b in blocks]
    for block, answer in zip(blocks, ("Hello! How can I help?", "Blue."), strict=True):
        assert block[-1] in stops, TOK.decode(block)
        assert answer in TOK.decode(block)
    assert labels[-1] == ids[-1] and ids[-1] in stops  # the row ends with the closing token, trained


def _plan(entries, template_id: str, **data):
    from tkc.bundle.plan import structure_plan

    tree = H.resolved_tree(entries, template_id, **data)
    _, meta = load_template(template_id)
    tree["template"].update({k: meta[k] for k in ("bos_token", "eos_token", "stop_tokens", "render_kwargs")})
    return structure_plan(tree)


def _write(root: Path, name: str, records: list[dict]) -> None:
    (root / name).write_text("".join(json.dumps(r) + "\n" for r in records))


def test_glm4_rows_end_with_a_stop_token_id_in_sft_dpo_and_kto(tmp_path):
    """The runtime's data build (what `tkc run` and `tkc data inspect` read) for GLM-4: the last label of every
    row is eos, a token generation stops at; a middle turn's trained tokens end with <|user|>."""
    _write(tmp_path, "s.jsonl", [{"messages": TWO_TURNS}, {"messages": TWO_TURNS[:2]}])
    _write(tmp_path, "p.jsonl", [{"instruction": "What is 2+3?", "input": "", "chosen": "5", "rejected": "6"}])
    _write(tmp_path, "k.jsonl", [{"instruction": "What is 2+3?", "input": "", "output": "6", "label": False}])
    entries = [H.entry("s", "s.jsonl", "openai", "sft", tmp_path), H.entry("p", "p.jsonl", "alpaca", "preference",
               tmp_path), H.entry("k", "k.jsonl", "alpaca", "kto", tmp_path)]  # fmt: skip
    plan, text = _plan(entries, "glm4"), load_template("glm4")[0]
    stops = set(stop_token_ids(TOK, plan.template))
    eos, user = TOK.convert_tokens_to_ids("<|endoftext|>"), TOK.convert_tokens_to_ids("<|user|>")
    assert {eos, user} <= stops

    def build(kind, name):
        return build_stage_data(plan, H.stage(kind, [name]), TOK, tmp_path, tmp_path / "cache", template_text=text)

    sft = build("sft", "s").train
    assert len(sft) == 2
    for row in sft:
        assert row["labels"][-1] == row["input_ids"][-1] == eos
    ends = sorted([b[-1] for b in _blocks(row["input_ids"], row["labels"])] for row in sft)
    assert ends == [[eos], [user, eos]]  # the one-turn row, the two-turn row
    dpo = build("dpo", "p").train[0]
    for side, answer in (("chosen", "5"), ("rejected", "6")):
        ids, labels = dpo[f"{side}_input_ids"], dpo[f"{side}_labels"]
        assert labels[-1] == eos and TOK.decode(_blocks(ids, labels)[-1]) == f"\n{answer}<|endoftext|>"
    kto = build("kto", "k").train[0]
    assert kto["labels"][-1] == kto["input_ids"][-1] == eos
