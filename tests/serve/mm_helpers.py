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
    """A Qwen2-Audio style folder with seeded weights: a 1-layer Whisper-style encoder over 16 mel bins and a
    1-second window (100 feature frames, at most 25 audio tokens), tiny_mm's Qwen2 decoder and ChatML tokenizer."""
    import torch
    from transformers import AutoConfig, Qwen2AudioForConditionalGeneration

    from tkc.runtime import tiny_mm

    out.mkdir(parents=True, exist_ok=True)
    ids = tiny_mm._write_tokenizer(out, AUDIO_TOKENS, tiny_mm.QWEN2_VL_CHAT_TEMPLATE, 1024)
    tiny_mm._write_json(out / "config.json", {
        "model_type": "qwen2_audio", "architectures": ["Qwen2AudioForConditionalGeneration"],
        "audio_token_index": ids["<|AUDIO|>"], "tie_word_embeddings": False, "torch_dtype": "float32",
        "audio_config": {"model_type": "qwen2_audio_encoder", "num_mel_bins": 16, "encoder_layers": 1,
                         "encoder_attention_heads": 2, "encoder_ffn_dim": 64, "d_model": 32,
                         "max_source_positions": 50},
        "text_config": tiny_mm._text_config(ids, hidden_size=64, num_layers=2, model_type="qwen2")})
    tiny_mm._write_json(out / "preprocessor_config.json", {
        "feature_extractor_type": "WhisperFeatureExtractor", "processor_class": "Qwen2AudioProcessor",
        "feature_size": 16, "sampling_rate": 16000, "hop_length": 160, "chunk_length": 1, "n_fft": 400,
        "padding_value": 0.0, "return_attention_mask": True})
    tiny_mm._write_json(out / "processor_config.json", {"processor_class": "Qwen2AudioProcessor",
                                                        "audio_token": "<|AUDIO|>"})
    tiny_mm._write_generation_config(out, ids)
    torch.manual_seed(seed)
    Qwen2AudioForConditionalGeneration(AutoConfig.from_pretrained(out)).save_pretrained(out)
    return out


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
    import io
    import math
    import struct
    import wave

    n = int(seconds * rate)
    frames = b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * hz * i / rate))) for i in range(n))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return buf.getvalue()
