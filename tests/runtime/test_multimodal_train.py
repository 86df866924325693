"""Vision-language training on tiny random models built locally (tkc.runtime.tiny_mm: Qwen2-VL and LLaVA style):
the pixels reach the logits and the projector's gradient, mllm_demo trains end to end through compile and run
(SFT with LoRA on the language model, full with freeze switches, DPO), the saved models reload; the compile rules
MM010-MM012 refuse what would be ignored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

DEMO_IMAGES = ("1.jpg", "2.jpg")


@pytest.fixture(autouse=True)
def _real_data(monkeypatch):
    monkeypatch.delenv("TKC_TEST_STANDIN_DATA", raising=False)
    import torch

    monkeypatch.setattr(torch, "_tkc_threads", torch.get_num_threads(), raising=False)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(torch._tkc_threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Both tiny models with seeded random weights (init: pretrained), built once for the module."""
    from tkc.runtime.tiny_mm import BUILDERS

    root = tmp_path_factory.mktemp("vlm")
    return {kind: build(root / kind, weights=True, seed=1) for kind, build in BUILDERS.items()}


def _project(tmp_path: Path, shared: Path, model: Path) -> Path:
    """A recipe folder: the model, mllm_demo.json with its images, and a preference set built from it."""
    shutil.copytree(model, tmp_path / "model")
    shutil.copy(shared / "mllm_demo.json", tmp_path / "mllm_demo.json")
    shutil.copytree(shared / "mllm_demo_data", tmp_path / "mllm_demo_data")
    records = json.loads((shared / "mllm_demo.json").read_text())
    pairs = []
    for i, rec in enumerate(records):  # the first turn; rejected: the next record's first answer
        user, answer = rec["messages"][0], rec["messages"][1]
        other = records[(i + 1) % len(records)]["messages"][1]
        n = user["content"].count("<image>")
        pairs.append({"conversations": [{"from": "human", "value": user["content"]}],
                      "chosen": {"from": "gpt", "value": answer["content"]},
                      "rejected": {"from": "gpt", "value": other["content"]}, "images": rec["images"][:n]})
    (tmp_path / "mllm_pref.json").write_text(json.dumps(pairs))
    return tmp_path


def _recipe(folder: Path, stages: str, finetuning: str, *, init: str = "pretrained") -> Path:
    text = f"""\
schema_version: 1
name: vlm
model: {{path: model, init: {init}}}
template: auto
data:
  datasets:
    mllm: {{path: mllm_demo.json, format: sharegpt, columns: {{messages: messages, images: images}},
           tags: {{role: role, content: content, user: user, assistant: assistant}}}}
    mllm_pref: {{path: mllm_pref.json, format: sharegpt, kind: preference,
                columns: {{messages: conversations, chosen: chosen, rejected: rejected, images: images}}}}
  cutoff_len: 512
stages:
{stages}
finetuning:
{finetuning}
train: {{seed: 42, learning_rate: 5.0e-3, global_batch_size: 2, max_steps: 4, save_steps: 100,
         lr_scheduler: constant}}
hardware: cpu
"""
    path = folder / "vlm.yaml"
    path.write_text(text)
    return path


def compile_to(recipe: Path, out: Path) -> Path:
    from tkc.bundle.io import write_bundle
    from tkc.compiler.pipeline import compile_recipe

    compiled = compile_recipe(recipe, [])
    write_bundle(out, compiled.files, {"source_root": str(compiled.source_root)}, compiled.plan.inputs.tkc_version,
                 True, compiled.sources)
    return out


def _run(recipe: Path, out: Path) -> Path:
    from tkc.runtime.run import run_bundle

    bundle = compile_to(recipe, out)
    assert run_bundle(bundle) == 0
    return bundle


def _losses(bundle: Path, stage: str) -> list[float]:
    lines = (bundle / "outputs" / stage / "steps.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines if "loss" in json.loads(x)]


def _weights(folder: Path, mm) -> dict:
    """The folder's weights under the model's own parameter names (checkpoints may store older key names)."""
    import torch

    from tkc.runtime.multimodal import model_class

    return dict(model_class(mm).from_pretrained(str(folder), dtype=torch.float32).state_dict())


# ---------------------------------------------------------------- builders and the model's use of pixels


def test_builders_write_the_same_bytes_and_load(tmp_path):
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    from tkc.runtime.tiny_mm import BUILDERS

    for kind, build in BUILDERS.items():
        a, b = build(tmp_path / f"{kind}_a"), build(tmp_path / f"{kind}_b")
        files = sorted(p.name for p in a.iterdir())
        assert files == sorted(p.name for p in b.iterdir()) and "preprocessor_config.json" in files
        assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files), kind
        config, tok = AutoConfig.from_pretrained(a), AutoTokenizer.from_pretrained(a)
        assert tok.convert_ids_to_tokens(config.image_token_id) in ("<|image_pad|>", "<image>")
        assert AutoImageProcessor.from_pretrained(a) is not None


def _forward(model_dir: Path, image: Path):
    """Logits of one fixed conversation about `image`, the loss over its answer, and the model."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer

    from tkc.runtime.multimodal import media_encoder, media_kwargs
    from tkc.runtime.serve.media import MediaLimits, open_image

    config, tok = AutoConfig.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    batch = media_encoder(model_dir, lambda p: open_image(Path(p).read_bytes(), MediaLimits()))([[str(image)]])
    grid = batch.get("image_grid_thw")
    n = int(grid.prod()) // 4 if grid is not None else config.image_seq_length
    image_token = tok.convert_ids_to_tokens(config.image_token_id)
    prompt = tok(f"<|im_start|>user\n{image_token * n}Who are they?<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    answer = tok("They are celebrating.<|im_end|>")["input_ids"]
    ids = torch.tensor([prompt + answer])
    labels = torch.tensor([[-100] * len(prompt) + answer])
    out = model(input_ids=ids, labels=labels, **media_kwargs(model, batch, ids))
    return out.logits[0, len(prompt) - 1:], out.loss, model


@pytest.mark.parametrize("kind", ["qwen2_vl", "llava"])
def test_pixels_change_the_answer_logits_and_the_loss_reaches_the_projector(models, shared_datasets, kind):
    from tkc.catalog.registry import families

    images = [shared_datasets / "mllm_demo_data" / name for name in DEMO_IMAGES]
    first, loss, model = _forward(models[kind], images[0])
    second, _, _ = _forward(models[kind], images[1])
    assert (first - second).abs().max() > 1e-4  # same text, another image: other logits where the answer is
    loss.backward()
    projector = families()[kind].multimodal.projector
    grads = [p.grad for p in model.get_submodule(projector).parameters()]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


# ---------------------------------------------------------------- end to end: compile, run, reload


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["qwen2_vl", "llava"])
def test_lora_sft_on_mllm_demo_trains_the_language_model_and_projector(tmp_path, models, shared_datasets, kind):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoImageProcessor

    from tkc.catalog.registry import families
    from tkc.runtime.multimodal import model_class

    mm = families()[kind].multimodal
    folder = _project(tmp_path, shared_datasets, models[kind])
    recipe = _recipe(folder, "  - {kind: sft, datasets: [mllm]}", "  method: lora\n  lora: {rank: 4, targets: auto}")
    bundle = _run(recipe, tmp_path / "bundle")
    plan = json.loads((bundle / "resolved.json").read_text())
    assert plan["stages"][0]["finetuning"]["multimodal"] == {
        "freeze_vision_tower": True, "freeze_multi_modal_projector": False, "freeze_language_model": False}
    losses = _losses(bundle, "sft")
    assert len(losses) == 4 and losses[-1] < losses[0]
    saved = bundle / "outputs" / "sft" / "model"
    adapter = load_file(str(saved / "adapter_model.safetensors"))
    lora = [k for k in adapter if "lora_" in k]
    assert lora and all(f"{mm.language_model}." in k for k in lora)  # never the vision tower's or projector's
    projector = [k for k in adapter if f"{mm.projector}." in k]
    assert projector and all("lora_" not in k for k in projector)  # trained in full beside the adapter
    assert not any(f"{mm.vision_tower}." in k for k in adapter if not k.startswith(f"base_model.model.{mm.projector}"))
    # the saved folder reloads: the adapter on the base weights, the image processor beside it
    from peft import PeftModel

    base = model_class(mm).from_pretrained(str(models[kind]), dtype=torch.float32)
    before = base.get_submodule(mm.projector).state_dict()
    before = {k: v.clone() for k, v in before.items()}
    tuned = PeftModel.from_pretrained(base, str(saved)).merge_and_unload()
    after = tuned.get_submodule(mm.projector).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert AutoImageProcessor.from_pretrained(saved) is not None


@pytest.mark.slow
def test_freeze_switches_leave_frozen_parts_bit_identical(tmp_path, models, shared_datasets):
    """Full fine-tuning of the LLaVA model with the vision tower and the language model frozen: only the
    projector's weights move; Qwen2-VL's defaults freeze its tower but train the merger inside it."""
    from tkc.catalog.registry import families

    for kind, switches, moving in (
        ("llava", "  freeze_vision_tower: true\n  freeze_language_model: true", ("projector",)),
        ("qwen2_vl", "", ("projector", "language_model", "lm_head")),
    ):
        mm = families()[kind].multimodal
        folder = _project(tmp_path / kind, shared_datasets, models[kind])
        recipe = _recipe(folder, "  - {kind: sft, datasets: [mllm], train: {max_steps: 2}}",
                         "  method: full\n" + switches)
        bundle = _run(recipe, tmp_path / kind / "bundle")
        start, end = _weights(models[kind], mm), _weights(bundle / "outputs" / "sft" / "model", mm)
        parts = {name: getattr(mm, name) for name in ("vision_tower", "projector", "language_model")}
        parts["lm_head"] = mm.lm_head  # the language model's head: frozen and trained with it

        def part_of(key: str, parts=parts) -> str:  # the longest path that prefixes the key (merger in visual)
            return max((n for n, p in parts.items() if key.startswith(p + ".")), key=lambda n: len(parts[n]),
                       default="other")

        changed = {part_of(k) for k in start if not start[k].equal(end[k])}
        assert changed == set(moving), (kind, changed)


@pytest.mark.slow
def test_dpo_on_image_preference_pairs(tmp_path, models, shared_datasets):
    folder = _project(tmp_path, shared_datasets, models["qwen2_vl"])
    stages = "  - {kind: dpo, datasets: [mllm_pref], beta: 0.1, train: {max_steps: 3}}"
    for padding in ("unpadded", "longest"):  # pairs one side at a time, and both sides in one padded batch
        recipe = _recipe(folder, stages.replace("max_steps: 3", f"max_steps: 3, padding: {padding}"),
                         "  method: lora\n  lora: {rank: 4, targets: auto}")
        bundle = _run(recipe, tmp_path / f"bundle_{padding}")
        losses = _losses(bundle, "dpo")
        assert len(losses) == 3 and all(0 < v < 10 for v in losses)
        assert abs(losses[0] - 0.6931) < 1e-3  # log 2: the policy starts as its reference


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["qwen2_vl", "llava"])
def test_packed_first_step_loss_equals_unpacked(tmp_path, models, shared_datasets, kind):
    """All six mllm_demo rows in one step: packed into two sequences (each sample's images with its tokens, its
    own positions: Qwen2-VL's multimodal RoPE per sample) or as six rows, the step's loss is the same."""
    folder = _project(tmp_path, shared_datasets, models[kind])
    losses = {}
    for packing, batch in ((False, 6), (True, 2)):  # packed at 1024 tokens: two rows
        recipe = _recipe(folder, f"  - {{kind: sft, datasets: [mllm], train: {{max_steps: 1, global_batch_size: "
                         f"{batch}}}}}", "  method: full")
        recipe.write_text(recipe.read_text().replace("cutoff_len: 512", f"cutoff_len: 1024\n  packing: {packing}"))
        bundle = _run(recipe, tmp_path / f"bundle_{packing}")
        rows = [json.loads(x) for x in (bundle / "outputs" / "sft" / "steps.jsonl").read_text().splitlines()]
        losses[packing] = rows[0]["loss"]
    assert abs(losses[True] - losses[False]) < 1e-5 * abs(losses[False]), losses


# ---------------------------------------------------------------- compile rules


def test_freeze_switch_rules(demo_copy, tkc):
    text = demo_copy / "text.yaml"
    text.write_text("extends: [base/tiny_cpu.yaml]\nname: t\nstages: [{kind: sft, datasets: [arith_sft]}]\n"
                    "finetuning: {method: lora, freeze_vision_tower: false}\n")
    code, out, err = tkc("compile", text, "-o", demo_copy / "out")
    assert code == 2 and "MM010" in err and "freeze_vision_tower" in err and "Traceback" not in err, (out, err)
    vlm = (demo_copy / "tiny_vlm_sft.yaml").read_text()
    bad = demo_copy / "bad.yaml"
    bad.write_text(vlm.replace("freeze_multi_modal_projector: false", "freeze_language_model: true")
                   .replace("cutoff_len: 64", "cutoff_len: 64\n  packing: true"))
    code, out, err = tkc("compile", bad, "-o", demo_copy / "out")
    assert code == 2 and "MM011" in err and "MM012" not in err and "Traceback" not in err, (out, err)  # images pack
    assert not (demo_copy / "out").exists()
