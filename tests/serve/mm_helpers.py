"""A compiled multimodal bundle for the inference tests (loaded by file path: tests are not a package): the tiny
random Qwen2-VL (tkc.runtime.tiny_mm, seeded weights) with LLaMA-Factory's mllm_demo rows (and their three images)
behind an infer stage. The weights are random: tests compare logits and token counts, never the text."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "datasets"
RECIPE = """\
schema_version: 1
name: mm_infer
model: {path: tiny, init: pretrained}
template: auto
data:
  datasets:
    mm:
      path: data/mllm_demo.json
      format: sharegpt
      columns: {messages: messages, images: images}
      tags: {role: role, content: content, user: user, assistant: assistant}
      max_samples: 2
  cutoff_len: 256
stages:
  - {kind: infer, name: pred, datasets: [mm], max_new_tokens: 4}
hardware: cpu
"""
MODEL = "mm_infer/base"
QUESTION = [{"role": "user", "content": "<image>Who are they?"}]


def images_dir(src: Path) -> Path:
    return src / "data" / "mllm_demo_data"


def build_bundle(root: Path) -> Path:
    """Compile the bundle under `root` (source folder `root/src`, bundle `root/run`); nothing runs yet."""
    from tkc.bundle.io import write_bundle
    from tkc.compiler import compile_recipe
    from tkc.runtime.tiny_mm import build_tiny_qwen2_vl

    src = root / "src"
    build_tiny_qwen2_vl(src / "tiny", weights=True, seed=0)
    (src / "data").mkdir(parents=True)
    shutil.copy(SHARED / "mllm_demo.json", src / "data" / "mllm_demo.json")
    shutil.copytree(SHARED / "mllm_demo_data", images_dir(src))
    for f in images_dir(src).iterdir():
        f.chmod(0o644)
    (src / "recipe.yaml").write_text(RECIPE, encoding="utf-8")
    compiled = compile_recipe(src / "recipe.yaml")
    out = root / "run"
    write_bundle(out, compiled.files, {"source_root": str(compiled.source_root)}, compiled.plan.inputs.tkc_version,
                 False, compiled.sources)
    return out


def data_url(path: Path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def demo_rows() -> list[dict]:
    return json.loads((SHARED / "mllm_demo.json").read_text(encoding="utf-8"))


AUDIO_RECIPE = """\
schema_version: 1
name: mm_audio
model: {path: tiny, init: pretrained}
template: auto
data:
  datasets:
    al: {path: data/alpaca_en_demo.json, format: alpaca, max_samples: 1}
  cutoff_len: 256
stages:
  - {kind: infer, name: pred, datasets: [al], max_new_tokens: 2}
hardware: cpu
"""
AUDIO_MODEL = "mm_audio/base"
AUDIO_TOKENS = ["<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]


def build_tiny_qwen2_audio(out: Path, seed: int = 0) -> Path:
    from tkc.runtime.tiny_mm import build_tiny_qwen2_audio as build

    return build(out, seed=seed)


def build_audio_bundle(root: Path) -> Path:
    from tkc.bundle.io import write_bundle
    from tkc.compiler import compile_recipe

    src = root / "src"
    build_tiny_qwen2_audio(src / "tiny")
    (src / "data").mkdir(parents=True)
    shutil.copy(SHARED / "alpaca_en_demo.json", src / "data" / "alpaca_en_demo.json")
    (src / "recipe.yaml").write_text(AUDIO_RECIPE, encoding="utf-8")
    compiled = compile_recipe(src / "recipe.yaml")
    out = root / "run"
    write_bundle(out, compiled.files, {"source_root": str(compiled.source_root)}, compiled.plan.inputs.tkc_version,
                 False, compiled.sources)
    return out


def wav_bytes(hz: float, seconds: float = 0.5, rate: int = 16000) -> bytes:
    """A mono 16-bit PCM WAV of a sine tone."""
    from tkc.runtime.tiny_mm import tone_wav

    return tone_wav(hz, seconds, rate)
