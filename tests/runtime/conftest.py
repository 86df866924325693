"""Runtime test helpers: hand-written bundles (resolved.json per ARCHITECTURE.md), a tiny pretrained model, data."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
SHARED = Path(os.environ.get("TKC_SHARED", REPO.parent / "shared")) / "datasets"
TINY = RECIPES / "assets" / "tiny-qwen2"
PY = sys.executable
TRAINING_KINDS = ("pt", "sft", "rm", "dpo", "kto", "ppo", "grpo")

TRAIN = {"learning_rate": 1e-3, "lr_scheduler": "constant", "warmup_ratio": 0.0, "epochs": 1.0, "max_steps": 6,
         "global_batch_size": 8, "micro_batch_size": 4, "gradient_accumulation_steps": 2, "world_size": 1,
         "padding": "unpadded",
         "seed": 42, "precision": "fp32", "gradient_checkpointing": False, "save_steps": 2, "save_total_limit": 2,
         "logging_steps": 1, "eval_steps": None, "weight_decay": 0.0, "max_grad_norm": 1.0, "optimizer": "adamw_torch",
         "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8, "neftune_alpha": None, "deterministic": True}
LORA = {"rank": 8, "alpha": 16, "dropout": 0.0, "targets": ["q_proj", "v_proj"], "variant": "lora",
        "init": "default", "plus_ratio": None, "modules_to_save": []}
COLUMNS = {k: None for k in ("prompt", "query", "response", "system", "history", "tools", "messages", "chosen",
                             "rejected", "kto_tag", "images", "videos", "audios", "text")}
TAGS = {"role": "from", "content": "value", "user": "human", "assistant": "gpt", "observation": "observation",
        "function": "function_call", "system": "system"}


def dataset(name: str, path: str, fmt: str, kind: str, file_type: str = "jsonl", max_samples=None, **columns) -> dict:
    cols = {**COLUMNS, **columns}
    return {"name": name, "source": "local", "path": path, "revision": None, "file_type": file_type,
            "files": [{"path": path, "sha256": None, "size": None}], "format": fmt, "kind": kind, "columns": cols,
            "tags": dict(TAGS), "split": "train", "max_samples": max_samples, "weight": 1.0, "on_bad_record": "error"}


DATASETS = {
    "arith_text": dataset("arith_text", "data/arith_text.jsonl", "text", "text", text="text"),
    "arith_sft": dataset("arith_sft", "data/arith_sft.jsonl", "alpaca", "sft", prompt="instruction", query="input",
                         response="output"),
    "arith_eval": dataset("arith_eval", "data/arith_eval.jsonl", "alpaca", "sft", prompt="instruction",
                          query="input", response="output"),
    "arith_pref": dataset("arith_pref", "data/arith_pref.jsonl", "alpaca", "preference", prompt="instruction",
                          query="input", chosen="chosen", rejected="rejected"),
    "alpaca": dataset("alpaca", "../../shared/datasets/alpaca_en_demo.json", "alpaca", "sft", "json", 64,
                      prompt="instruction", query="input", response="output"),
    "dpo_pairs": dataset("dpo_pairs", "../../shared/datasets/dpo_en_demo.json", "sharegpt", "preference", "json", 48,
                         messages="conversations", chosen="chosen", rejected="rejected"),
    "kto": dataset("kto", "../../shared/datasets/kto_en_demo.json", "sharegpt", "kto", "json", 48,
                   messages="messages", kto_tag="label"),
    "c4": dataset("c4", "../../shared/datasets/c4_demo.jsonl", "text", "text", "jsonl", 64, text="text"),
}
DATASETS["kto"]["tags"] = {**TAGS, "role": "role", "content": "content", "user": "user", "assistant": "assistant"}


def stage(name: str, kind: str, index: int, datasets: list[str], *, method: str = "full", init_from=None,
          options=None, lora=None, freeze=None, **train) -> dict:
    """A stage as the compiler resolves it (tkc.bundle.plan): every option of its kind (the schema's default
    unless given); `train` and `finetuning` for training kinds only."""
    st = {"name": name, "kind": kind, "index": index, "datasets": datasets, "init_from": init_from,
          "device": "cpu", "options": _options(kind, options or {})}
    if kind in TRAINING_KINDS:
        st["finetuning"] = {"method": method, **({"lora": {**LORA, **(lora or {})}} if method == "lora" else {}),
                            **({"freeze": freeze} if freeze else {})}
        st["train"] = {**TRAIN, **train}
    return st


def _options(kind: str, given: dict) -> dict:
    import typing

    from tkc.schema.stages import StageBase, StageSpec

    spec = next(t for t in typing.get_args(typing.get_args(StageSpec)[0])
                if t.model_fields["kind"].annotation == typing.Literal[kind])
    schema = {k: f.default for k, f in spec.model_fields.items() if k not in StageBase.model_fields and k != "kind"}
    unknown = set(given) - set(schema) - {"reward_bundle"}
    assert not unknown, f"{kind} stages have no options {sorted(unknown)}"
    extra = {"reward_bundle": given.get("reward_bundle")} if kind in ("ppo", "grpo") else {}
    return {**schema, **given, **extra}


def _with_hashes(ds: dict) -> dict:
    """Fill files[].sha256/size the way the compiler records them (relative to RECIPES, the source root)."""
    import hashlib

    for f in ds["files"]:
        data = (RECIPES / f["path"]).read_bytes()
        f["sha256"], f["size"] = hashlib.sha256(data).hexdigest(), len(data)
    return ds


def _model_files(folder: Path) -> dict:
    """The model folder's files as the compiler records them (tkc run checks the folder against them)."""
    from tkc.compiler.inputs import _model_files as record

    return record(folder)


def resolved(stages: list[dict], *, model_path: str = "assets/tiny-qwen2", init: str = "scratch",
             datasets: list[str] | None = None, cutoff_len: int = 128, seed: int = 42) -> dict:
    used = datasets or sorted({d for s in stages for d in s["datasets"] + s["options"].get("datasets", [])})
    return {
        "format_version": 1, "name": "test", "seed": seed,
        "model": {"source": "local", "path": model_path, "revision": None, "init": init, "family": "qwen2",
                  "model_type": "qwen2", "trust_remote_code": False, "files": _model_files(RECIPES / model_path)},
        "template": {"id": "qwen2_5", "source": "catalog", "file": "template/chat_template.jinja", "bos_token": "",
                     "eos_token": "<|im_end|>", "stop_tokens": ["<|im_end|>"], "supports_system": True,
                     "supports_tools": True, "default_system": None, "render_kwargs": {}},
        "datasets": {d: _with_hashes(copy.deepcopy(DATASETS[d])) for d in used},
        "data": {"cutoff_len": cutoff_len, "packing": False, "train_on_prompt": False, "mask_history": False,
                 "val_size": 0.0, "mix": "concat"},
        "hardware": {"profile": "cpu", "accelerator": "cpu", "devices_per_node": 1, "nodes": 1, "memory_gb": 8.0,
                     "supports_bf16": False, "supports_fp16": False, "interconnect": "none", "lockfile": "cpu",
                     "default_launch": "local", "cpu_threads": 1},
        "launch": {"kind": "local", "backend": "gloo", "nnodes": 1, "nproc_per_node": 1, "world_size": 1,
                   "master_port": 29500, "zero_stage": None, "offload": False, "rdzv_timeout_s": 900,
                   "cpu_threads": 1, "slurm": None, "kubernetes": None},
        "tracking": {"kind": "none", "project": "test"},
        "environment": {"lockfile": "cpu", "file": "env/requirements.lock", "pins": {}},
        "hermetic": True, "non_hermetic_reasons": [], "stages": stages,
        # "/": a hand-written bundle reads its model and data wherever a test put them (tmp folders, shared/)
        "read_roots": ["/"],
    }


def write_bundle(directory: Path, plan: dict, *, source_root: Path = RECIPES) -> Path:
    """A hand-written bundle written by tkc.bundle (manifest + hash): resolved.json, template, volatile.json."""
    from tkc.bundle import write_bundle as write
    from tkc.runtime.tiny import QWEN2_5_CHAT_TEMPLATE

    text = json.dumps(plan, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"
    contents = {"resolved.json": text.encode(), "template/chat_template.jinja": QWEN2_5_CHAT_TEMPLATE.encode()}
    write(directory, contents, {"source_root": str(source_root)}, "test", force=True)
    return directory


# --- data: the real tkc.runtime.data when it exists, else a small tokenizer-based stand-in -----------------------

def _read(path: Path, file_type: str) -> list[dict]:
    if file_type == "json":
        return json.loads(path.read_text(encoding="utf-8"))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _turns(rec: dict, ds: dict) -> list[dict]:
    cols, tags = ds["columns"], ds["tags"]
    if ds["format"] == "alpaca":
        user = rec[cols["prompt"]] + (("\n" + rec[cols["query"]]) if cols["query"] and rec.get(cols["query"]) else "")
        return [{"role": "user", "content": user}, {"role": "assistant", "content": rec[cols["response"]]}]
    roles = {tags["user"]: "user", tags["assistant"]: "assistant", tags["system"]: "system"}
    return [{"role": roles[m[tags["role"]]], "content": m[tags["content"]]} for m in rec[cols["messages"]]]


def _chat_ids(tok, prompt_msgs: list[dict], answer: str, cutoff: int) -> tuple[list[int], list[int]]:
    prompt = tok.apply_chat_template(prompt_msgs, tokenize=False, add_generation_prompt=True)
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    r = tok(answer + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
    p = p[-max(8, cutoff - len(r)):] if len(p) + len(r) > cutoff else p
    r = r[: cutoff - len(p)]
    return p + r, [-100] * len(p) + r


def _row(rec: dict, ds: dict, tok, cutoff: int) -> dict:
    if ds["kind"] == "text":
        ids = tok(rec[ds["columns"]["text"]], add_special_tokens=False)["input_ids"][: cutoff - 1] + [tok.pad_token_id]
        return {"input_ids": ids, "labels": list(ids), "attention_mask": [1] * len(ids)}
    turns = _turns(rec, ds)
    if ds["kind"] == "preference":
        tags = ds["tags"]
        out = {}
        for side in ("chosen", "rejected"):
            ids, labels = _chat_ids(tok, turns, rec[side][tags["content"]], cutoff)
            out[f"{side}_input_ids"], out[f"{side}_labels"] = ids, labels
        return out
    ids, labels = _chat_ids(tok, turns[:-1], turns[-1]["content"], cutoff)
    row = {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}
    if ds["kind"] == "kto":
        row["label"] = bool(rec[ds["columns"]["kto_tag"]])
    return row


class StandInData:
    def __init__(self, train, eval_):
        self.train, self.eval = train, eval_


def stand_in_build_stage_data(plan, stage, tokenizer, source_root, cache_dir, **_):
    from tkc.bundle.plan_converter import converter

    rows = []
    for name in stage.datasets:
        ds = converter.unstructure(plan.datasets[name])
        recs = _read(Path(source_root) / ds["path"], ds["file_type"])
        recs = recs[: ds["max_samples"]] if ds["max_samples"] else recs
        rows += [_row(r, ds, tokenizer, plan.data.cutoff_len) for r in recs]
    return StandInData(rows, [])


def install_data() -> str:
    """Use tkc.runtime.data.build_stage_data when it exists; otherwise install the stand-in. Returns which."""
    from tkc.runtime import data

    if os.environ.get("TKC_TEST_STANDIN_DATA") != "1" and hasattr(data, "build_stage_data"):
        return "tkc.runtime.data"
    data.build_stage_data = stand_in_build_stage_data
    return "stand-in"


def run_in_subprocess(bundle: Path, *extra: str, timeout: float = 300, wait: bool = True, env=None):
    """`python -c` driver: install the data source, run_bundle, exit with its code."""
    code = ("import importlib.util as u, sys, pathlib; "
            f"s = u.spec_from_file_location('tkc_rt_helpers', {__file__!r}); h = u.module_from_spec(s); "
            "s.loader.exec_module(h); h.install_data(); from tkc.runtime.run import run_bundle; "
            f"sys.exit(run_bundle(pathlib.Path({str(bundle)!r})))")
    full_env = {**os.environ, "PYTHONHASHSEED": "0", **(env or {})}
    if not wait:
        return subprocess.Popen([PY, "-c", code, *extra], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    return subprocess.run([PY, "-c", code, *extra], env=full_env, capture_output=True, text=True, timeout=timeout)


def wait_for_step(bundle: Path, step: int, proc, timeout: float = 240, stage: str = "sft") -> None:
    """Block until a running `run_in_subprocess(..., wait=False)` has logged `step` (fails if the process exits)."""
    import time

    path, t0 = bundle / "outputs" / stage / "steps.jsonl", time.time()
    while time.time() - t0 < timeout:
        if path.exists() and any(json.loads(x)["step"] >= step for x in path.read_text().splitlines() if x.strip()):
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    raise AssertionError("training did not reach the step in time")


@pytest.fixture(scope="module")
def rt_module():
    return sys.modules[__name__]


@pytest.fixture
def rt():
    """These helpers as a namespace (conftest modules are not importable under --import-mode=importlib)."""
    return sys.modules[__name__]


@pytest.fixture(autouse=True)
def _data_source():
    install_data()
    yield


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory) -> Path:
    """The tiny Qwen2 with seeded random weights saved as a 'pretrained' local model."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = tmp_path_factory.mktemp("tiny-pretrained")
    for f in TINY.iterdir():
        shutil.copy(f, out / f.name)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY)).save_pretrained(out)
    return out


def steps(bundle: Path, stage_name: str) -> list[dict]:
    path = bundle / "outputs" / stage_name / "steps.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def make_ctx(bundle: Path):
    from tkc.bundle.plan import load_plan
    from tkc.runtime.context import RunContext, load_bundle_hash, resolve_source_root

    return RunContext(bundle, load_plan(bundle), resolve_source_root(bundle, None), load_bundle_hash(bundle))


def train_and_compare(bundle: Path, stage_name: str, head: str = "causal_lm"):
    """Build the stage's model, train it with the stage's task, return (before, after, model, losses)."""
    import importlib

    import torch

    from tkc.runtime import loop
    from tkc.runtime.model import build_optimizer

    ctx = make_ctx(bundle)
    st = ctx.stage_by_name(stage_name)
    torch.manual_seed(st.train.seed)
    module = importlib.import_module(f"tkc.runtime.stages.{st.kind}")
    task, model = module.build_task(ctx, st)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, st)
    from tkc.runtime.stages.common import load_rows

    train_rows, _ = load_rows(ctx, st)
    result = loop.train(ctx, st, model, optimizer, task, train_rows, [])
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return before, after, trainable, model, [r["loss"] for r in result.records if "loss" in r]


def assert_trained(before, after, trainable, losses):
    import math

    import torch

    assert trainable, "nothing trainable"
    assert all(math.isfinite(x) for x in losses), losses
    assert sum(losses[-2:]) < sum(losses[:2]), f"loss did not fall: {losses}"
    changed = {n for n in trainable if not torch.equal(before[n], after[n])}
    assert changed == trainable, f"trainable params that did not change: {sorted(trainable - changed)[:5]}"
    frozen_changed = [n for n in before if n not in trainable and not torch.equal(before[n], after[n])]
    assert not frozen_changed, f"frozen params changed: {frozen_changed[:5]}"
