"""HFEngine, the infer stage and `tkc chat` on a real compiled bundle: tiny Qwen2, a LoRA sft stage, real generation."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "assets" / "tiny-qwen2"
RECIPE = """\
schema_version: 1
name: infer_test
model: {path: assets/tiny, init: pretrained}
template: auto
data:
  datasets:
    arith_sft: {path: data/arith_sft.jsonl, format: alpaca, max_samples: 16}
    arith_eval: {path: data/arith_eval.jsonl, format: alpaca, max_samples: 3}
  cutoff_len: 64
stages:
  - {kind: sft, name: sft, datasets: [arith_sft], train: {learning_rate: 1.0e-3, max_steps: 2, global_batch_size: 8}}
  - {kind: infer, name: infer, datasets: [arith_eval], max_new_tokens: 6}
finetuning: {method: lora, lora: {rank: 8, alpha: 16, targets: all}}
hardware: cpu
"""
CHAT = [
    [{"role": "user", "content": "What is 2+3?"}],
    [{"role": "user", "content": "Hello, what is 12+30 then?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
]


def save_untied_tiny(target: Path) -> None:
    """The tiny Qwen2 with seeded random weights and an untied lm_head: a random tied model only repeats its input."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    shutil.copytree(TINY, target)
    config = AutoConfig.from_pretrained(TINY)
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(target)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A compiled bundle (pretrained tiny model, LoRA sft, infer) whose sft stage has run."""
    from tkc.bundle.io import write_bundle
    from tkc.compiler import compile_recipe
    from tkc.runtime.infer import open_context
    from tkc.runtime.stages import sft

    src = tmp_path_factory.mktemp("infer-src")
    save_untied_tiny(src / "assets" / "tiny")
    (src / "data").mkdir()
    for name in ("arith_sft.jsonl", "arith_eval.jsonl"):
        shutil.copy(REPO / "recipes" / "data" / name, src / "data" / name)
    (src / "recipe.yaml").write_text(RECIPE, encoding="utf-8")
    compiled = compile_recipe(src / "recipe.yaml")
    out = tmp_path_factory.mktemp("infer-bundle") / "run"
    write_bundle(
        out,
        compiled.files,
        {"source_root": str(compiled.source_root)},
        compiled.plan.inputs.tkc_version,
        False,
        compiled.sources,
    )
    ctx = open_context(out)
    assert sft.run(ctx, ctx.stage_by_name("sft")) == 0
    assert (out / "outputs" / "sft" / "model" / "adapter_config.json").exists()
    return out


@pytest.fixture(scope="module")
def engine(bundle):
    from tkc.runtime.infer import load_engine

    return load_engine(bundle, "sft")


def test_helpers_cut_and_hold_back():
    from tkc.runtime.infer.engine import cut_at_stop, held_back

    assert cut_at_stop("a\n\nb###c", ["###", "\n\n"]) == ("a", True)
    assert cut_at_stop("abc", ["x"]) == ("abc", False)
    assert (
        held_back("answer: 4#", ["###"]) == 1
        and held_back("4##", ["###"]) == 2
        and held_back("4", ["###"]) == 0
    )


def test_stops_split_into_ids_and_strings(engine):
    ids, strings = engine.stops(["\n\n", "<|endoftext|>"])
    tok = engine.tok
    assert ids == {tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")}
    assert strings == ["\n\n"]


def test_prompt_rendered_with_bundle_template(engine, bundle):
    from tkc.bundle.chat import render

    text = (bundle / "template" / "chat_template.jinja").read_text(encoding="utf-8")
    expected = render(text, CHAT[0], add_generation_prompt=True, eos_token="<|im_end|>")
    assert engine.tok.decode(engine.encode(CHAT[0])) == expected
    assert expected.endswith("<|im_start|>assistant\n")


def test_greedy_is_deterministic_and_batching_does_not_change_it(engine):
    first = engine.generate(CHAT, max_new_tokens=12)
    again = engine.generate(CHAT, max_new_tokens=12)
    alone = [engine.generate([p], max_new_tokens=12)[0] for p in CHAT]
    assert [c.text for c in first] == [c.text for c in again] == [c.text for c in alone]
    assert [c.tokens for c in first] == [c.tokens for c in alone]
    assert all(c.tokens for c in first), "the tiny model generated nothing"
    for c in first:
        assert c.finish_reason in ("stop", "length") and len(c.tokens) <= 12
        assert c.text == engine.tok.decode(c.tokens, skip_special_tokens=True)


def test_seeded_sampling_is_reproducible(engine):
    kw = {"max_new_tokens": 12, "temperature": 1.0, "top_p": 0.95}
    a = engine.generate(CHAT, seed=7, **kw)
    b = engine.generate(CHAT, seed=7, **kw)
    c = engine.generate(CHAT, seed=8, **kw)
    assert [x.tokens for x in a] == [x.tokens for x in b]
    assert [x.tokens for x in a] != [x.tokens for x in c]


def test_stop_string_cuts_the_reply(engine):
    full = engine.generate(["12+30="], max_new_tokens=16)[0]
    assert len(full.text) >= 4, full
    stop = full.text[2:4]
    cut = engine.generate(["12+30="], max_new_tokens=16, stop=[stop])[0]
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.finish_reason == "stop" and stop in engine.tok.decode(cut.tokens)
    assert len(cut.tokens) < len(full.tokens)


def test_stop_token_ends_generation(engine):
    """A special stop token ends the reply by id and never shows in it; the template's <|im_end|> is one."""
    import torch

    from tkc.runtime.infer.hf import HFEngine

    model = copy.deepcopy(engine.model)
    eot = engine.tok.convert_tokens_to_ids("<|endoftext|>")
    with torch.no_grad():  # make <|endoftext|> likely: its logit is h . w[eot]
        model.get_output_embeddings().weight[eot] *= 8
    biased = HFEngine(model, engine.tok, engine.fmt)
    free = biased.generate(CHAT, max_new_tokens=16)
    hits = [(c, c.tokens.index(eot)) for c in free if eot in c.tokens]
    assert hits, "the biased model never produced <|endoftext|>"
    stopped = biased.generate([CHAT[free.index(hits[0][0])]], max_new_tokens=16, stop=["<|endoftext|>"])[0]
    assert stopped.tokens == hits[0][0].tokens[: hits[0][1]] and stopped.finish_reason == "stop"
    im_end = engine.tok.convert_tokens_to_ids("<|im_end|>")
    assert all(im_end not in c.tokens for c in free)


def test_stream_deltas_join_to_generate(engine):
    full = engine.generate([CHAT[1]], max_new_tokens=12)[0].text
    assert len(full) >= 6, full
    multi = full[
        3:6
    ]  # a stop string several characters long: its first characters are held back, never emitted
    for kw in ({}, {"temperature": 1.0, "seed": 3}, {"stop": ["1"]}, {"stop": [multi]}):
        deltas = list(engine.stream(CHAT[1], max_new_tokens=12, **kw))
        assert "".join(deltas) == engine.generate([CHAT[1]], max_new_tokens=12, **kw)[0].text
        assert len(deltas) >= 1
    assert "".join(engine.stream(CHAT[1], max_new_tokens=12, stop=[multi])) == full[: full.find(multi)]


def test_adapter_stage_output_differs_from_base(engine, bundle):
    """The sft stage saved a LoRA adapter; the engine merged it into the pretrained weights."""
    import torch

    from tkc.runtime.infer import load_engine

    base = load_engine(bundle, None)
    ids = torch.tensor([engine.encode(CHAT[0])])
    with torch.no_grad():
        assert not torch.allclose(base.model(ids).logits, engine.model(ids).logits)
    assert base.generate(CHAT[:1], max_new_tokens=4)[0].tokens  # the base model generates too
    assert load_engine(bundle, "infer").model is not None  # an infer stage means the model it reads


def test_infer_stage_writes_predictions(bundle, engine):
    from tkc.runtime.infer import open_context
    from tkc.runtime.stages import infer

    ctx = open_context(bundle)
    assert infer.run(ctx, ctx.stage_by_name("infer")) == 0
    out = bundle / "outputs" / "infer"
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    first = json.loads((REPO / "recipes" / "data" / "arith_eval.jsonl").read_text(encoding="utf-8").splitlines()[0])
    question = "\n".join(x for x in (first["instruction"], first["input"]) if x)  # alpaca: instruction + input
    assert len(rows) == 3 and rows[0]["prompt"] == [{"role": "user", "content": question}]
    assert rows[0]["reference"] == first["output"]
    want = engine.generate([r["prompt"] for r in rows], max_new_tokens=6)
    assert [r["prediction"] for r in rows] == [c.text for c in want]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["count"] == 3 and metrics["model"] == "sft" and metrics["tokens_per_second"] > 0
    assert sum(metrics["finish_reasons"].values()) == 3
    assert (out / "DONE").read_text().strip() == ctx.bundle_hash


def test_chat_cli_pipe_mode(bundle, engine):
    """`python -m tkc.cli.chat` (tkc chat) in a real subprocess: one reply per input line, history kept."""
    lines = ["What is 2+3?", "/reset", "What is 2+3?", "and 4+4?"]
    proc = subprocess.run(
        [sys.executable, "-m", "tkc.cli.chat", str(bundle), "--stage", "sft", "--max-new-tokens", "8"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    replies = proc.stdout.split("\n")[:-1]
    assert len(replies) == 3, proc.stdout
    first = engine.generate([[{"role": "user", "content": "What is 2+3?"}]], max_new_tokens=8)[0].text
    from tkc.cli.chat import escape_line, sanitize

    assert replies[0] == replies[1] == escape_line(sanitize(first))  # printed cleaned; the history keeps it raw
    history = [
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "and 4+4?"},
    ]
    second = engine.generate([history], max_new_tokens=8)[0].text
    assert replies[2] == escape_line(sanitize(second))


def test_chat_cli_unknown_stage_is_a_clear_error(bundle):
    proc = subprocess.run(
        [sys.executable, "-m", "tkc.cli.chat", str(bundle), "--stage", "nope"],
        input="",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "no stage named 'nope'" in proc.stderr


@pytest.mark.slow
def test_chat_cli_interactive_on_a_terminal(bundle, engine):
    """On a TTY `tkc chat` is a rich REPL: the reply streams after the prompt, /reset and /exit work."""
    import pty
    import re
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tkc.cli.chat", str(bundle), "--max-new-tokens", "8"],
        stdin=slave,
        stdout=slave,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200", "TERM": "xterm"},
    )
    os.close(slave)
    os.write(master, b"What is 2+3?\n/reset\n/exit\n")
    chunks = []
    while proc.poll() is None or select.select([master], [], [], 0.2)[0]:
        if select.select([master], [], [], 0.2)[0]:
            try:
                chunks.append(os.read(master, 4096))
            except OSError:  # the child closed the terminal
                break
    os.close(master)
    assert proc.wait(timeout=120) == 0
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode("utf-8", "replace"))
    assert "tkc chat" in screen and "infer_test / sft (hf)" in screen and "(conversation cleared)" in screen
    reply = engine.generate([[{"role": "user", "content": "What is 2+3?"}]], max_new_tokens=8)[0].text
    printable = "".join(ch for ch in reply if ch.isprintable()).strip()
    assert printable[:3] in screen


def test_prompt_tokens_match_the_training_rows(bundle, engine):
    """What the model sees at inference is exactly the prompt part of a training row (same template, same ids)."""
    from tkc.runtime.infer import open_context
    from tkc.runtime.stages.common import load_rows
    from tkc.runtime.stages.infer import load_prompts

    ctx = open_context(bundle)
    sft = ctx.stage_by_name("sft")
    rows, _ = load_rows(ctx, sft)
    prompts = load_prompts(ctx, sft)
    assert len(rows) == len(prompts) == 16
    trained = {}
    for row in rows:  # the pipeline shuffles: match rows to prompts by their ids
        first = next(i for i, x in enumerate(row["labels"]) if x != -100)
        trained[tuple(row["input_ids"][:first])] = engine.tok.decode(row["input_ids"][first:])
    for messages, reference in prompts:
        assert trained[tuple(engine.encode(messages))].startswith(reference)


def test_chat_session_commands_and_history(engine):
    from tkc.cli.chat import ChatSession, escape_line, pipe_loop

    session = ChatSession(engine, system="Be brief.", max_new_tokens=6, temperature=0.0, top_p=1.0, seed=0)
    written: list[str] = []
    pipe_loop(session, iter(["Hi\n", "\n", "/exit\n", "never read\n"]), written.append)
    reply = engine.generate([CHAT[2]], max_new_tokens=6)[0].text
    assert "".join(written) == escape_line(reply) + "\n"
    assert session.messages() == [*CHAT[2], {"role": "assistant", "content": reply}]
    pipe_loop(session, iter(["/reset\n"]), written.append)
    assert session.messages() == [CHAT[2][0]]
    assert escape_line("a\\nb\nc") == "a\\\\nb\\nc"
