"""Audio training on a tiny random Qwen2-Audio built locally (tkc.runtime.tiny_mm.build_tiny_qwen2_audio): `<audio>`
placeholders expanded by the family's audio_frames rule at data build, the collate's input_features and
feature_attention_mask reach the model (the audio changes the logits and the projector's gradient), SFT trains
end to end through compile and run, an audio over the model's window is a bad record at its line, and a family
without audio refuses an audios column (MM001)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TONES = {"low.wav": (440, 0.5), "high.wav": (1300, 0.3)}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.delenv("TKC_TEST_STANDIN_DATA", raising=False)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from tkc.runtime.tiny_mm import build_tiny_qwen2_audio

    return build_tiny_qwen2_audio(tmp_path_factory.mktemp("audio") / "tiny", seed=1)


def _project(folder: Path, model: Path, extra: list[dict] | None = None) -> Path:
    import shutil

    from tkc.runtime.tiny_mm import tone_wav

    shutil.copytree(model, folder / "model")
    (folder / "audio").mkdir(parents=True)
    for name, (hz, seconds) in TONES.items():
        (folder / "audio" / name).write_bytes(tone_wav(hz, seconds))
    rows = [{"instruction": f"<audio>{q}", "output": f"A {name[:-4]} tone.", "audios": [f"audio/{name}"]}
            for name in TONES for q in ("What do you hear?", "Which tone is it?")]
    (folder / "tones.json").write_text("[\n" + ",\n".join(map(json.dumps, rows + (extra or []))) + "\n]\n")
    (folder / "recipe.yaml").write_text("""\
schema_version: 1
name: tones
model: {path: model, init: pretrained}
template: auto
data:
  datasets:
    tones: {path: tones.json, format: alpaca, columns: {audios: audios}, on_bad_record: skip}
  cutoff_len: 128
stages:
  - {kind: sft, datasets: [tones]}
finetuning: {method: full}
train: {seed: 42, learning_rate: 3.0e-3, global_batch_size: 4, max_steps: 4, save_steps: 100, lr_scheduler: constant}
hardware: cpu
""")
    return folder / "recipe.yaml"


def _forward(model_dir: Path, wav: Path):
    """Logits of one fixed conversation about `wav` (encoded as the collate encodes it), its loss, the model."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, Qwen2AudioForConditionalGeneration

    from tkc.runtime.multimodal import audio_inputs, media_encoder, media_kwargs, read_audio_file

    config, tok = AutoConfig.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    read = lambda p: read_audio_file(p, str(model_dir), 1 << 20)  # noqa: E731
    batch = media_encoder(model_dir, lambda p: None, read)([[str(wav)]], kind="audios")
    n = audio_inputs(str(model_dir), [read(str(wav))])[0][0]
    token = tok.convert_ids_to_tokens(config.audio_token_index)
    prompt = tok(f"<|im_start|>user\n<|audio_bos|>{token * n}<|audio_eos|>Which?<|im_end|>\n"
                 "<|im_start|>assistant\n")["input_ids"]
    answer = tok("A tone.<|im_end|>")["input_ids"]
    ids = torch.tensor([prompt + answer])
    labels = torch.tensor([[-100] * len(prompt) + answer])
    out = model(input_ids=ids, labels=labels, **media_kwargs(model, batch, ids))
    return out.logits[0, len(prompt) - 1:], out.loss, model


def test_audio_changes_the_logits_and_reaches_the_projector(tmp_path, model):
    from tkc.runtime.tiny_mm import tone_wav

    for name, (hz, seconds) in TONES.items():
        (tmp_path / name).write_bytes(tone_wav(hz, seconds))
    first, loss, net = _forward(model, tmp_path / "low.wav")
    second, _, _ = _forward(model, tmp_path / "high.wav")
    assert (first - second).abs().max() > 1e-4  # same text, another sound: other logits where the answer is
    loss.backward()
    grads = [p.grad for p in net.get_submodule("model.multi_modal_projector").parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.slow
def test_sft_on_audio_rows_trains_and_skips_an_audio_over_the_window(tmp_path, model, tkc):
    from tkc.runtime.run import run_bundle
    from tkc.runtime.tiny_mm import tone_wav

    long = {"instruction": "<audio>And this?", "output": "Too long.", "audios": ["audio/long.wav"]}
    recipe = _project(tmp_path / "src", model, [long])
    (tmp_path / "src" / "audio" / "long.wav").write_bytes(tone_wav(300, 1.5))  # the window is 1 s
    bundle = tmp_path / "run"
    code, out, err = tkc("compile", recipe, "-o", bundle)
    assert code == 0, out + err
    plan = json.loads((bundle / "resolved.json").read_text())
    assert {Path(f["path"]).name for f in plan["datasets"]["tones"]["media_files"]} == {*TONES, "long.wav"}
    code, out, err = tkc("data", "inspect", bundle)
    assert code == 0 and "4 converted, 1 skipped" in out and "tones.json:4:" in out, out  # a JSON array: the record index
    assert "long.wav: 1.5 s of audio, over the limit of 1 s" in out
    assert "<|AUDIO|>×" in out
    assert run_bundle(bundle) == 0
    steps = [json.loads(x) for x in (bundle / "outputs" / "sft" / "steps.jsonl").read_text().splitlines()]
    losses = [s["loss"] for s in steps if "loss" in s]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert (bundle / "outputs" / "sft" / "model" / "preprocessor_config.json").is_file()


def test_audios_for_a_family_without_audio_is_mm001(tmp_path, tkc):
    from tkc.runtime.tiny_mm import build_tiny_qwen2_vl

    recipe = _project(tmp_path, build_tiny_qwen2_vl(tmp_path / "vl"))
    code, out, err = tkc("compile", recipe, "-o", tmp_path / "out")
    assert code == 2 and "MM001" in err and "audios" in err and "Traceback" not in err, (out, err)


def test_packing_audio_rows_is_mm012(tmp_path, model, tkc):
    recipe = _project(tmp_path, model)
    recipe.write_text(recipe.read_text().replace("cutoff_len: 128", "cutoff_len: 128\n  packing: true"))
    code, out, err = tkc("compile", recipe, "-o", tmp_path / "out")
    assert code == 2 and "MM012" in err and "audios" in err and "Traceback" not in err, (out, err)
    assert not (tmp_path / "out").exists()
