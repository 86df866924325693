"""Build tiny, random multimodal model folders locally (no hub): a Qwen2-VL style and a LLaVA style model (BUILDERS),
and a Qwen2-Audio style one (build_tiny_qwen2_audio; tone_wav writes test audio), each with its tokenizer (tkc.runtime.tiny's byte-level BPE plus the model's media tokens), processor and chat template.

The folders look like any local checkpoint to `tkc compile` (config.json, tokenizer files, preprocessor_config.json,
processor_config.json, chat_template.jinja) and, with `weights=True`, carry seeded random model.safetensors (else
a recipe loads them with `model.init: scratch`). Same bytes every time. Sizes: ~0.3M parameters, 4 image tokens for
a small image, so a few CPU training steps take seconds.

Loading: AutoImageProcessor (the PIL image processors) and AutoTokenizer read these folders with what tkc installs;
AutoProcessor does not for Qwen2-VL, whose processor also builds a video processor, which needs torchvision.
Module paths: Qwen2-VL model.visual (its merger model.visual.merger is the projector), model.language_model, lm_head;
LLaVA model.vision_tower, model.multi_modal_projector, model.language_model, lm_head.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tkc.runtime.tiny import SPECIAL_TOKENS, build_tokenizer

QWEN2_VL_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
LLAVA_TOKENS = ["<image>"]

# ChatML (Qwen2-VL's own template, minus its tool calls): string content as is; list content renders its image /
# video parts as the model's placeholder tokens.
_CHATML_MM = (
    "{%- set image_ph = '__IMAGE__' %}{%- set video_ph = '__VIDEO__' %}"
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part %}{{- image_ph }}"
    "{%- elif part['type'] == 'video' or 'video' in part %}{{- video_ph }}"
    "{%- elif 'text' in part %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
QWEN2_VL_CHAT_TEMPLATE = _CHATML_MM.replace("__IMAGE__", "<|vision_start|><|image_pad|><|vision_end|>").replace(
    "__VIDEO__", "<|vision_start|><|video_pad|><|vision_end|>")
LLAVA_CHAT_TEMPLATE = _CHATML_MM.replace("__IMAGE__", "<image>").replace("__VIDEO__", "")

# ImageNet CLIP statistics, as Qwen2-VL's and LLaVA's processors ship them
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_tokenizer(out: Path, media_tokens: list[str], template: str, vocab_size: int) -> dict[str, int]:
    """tokenizer.json (tkc.runtime.tiny's BPE, then the media tokens as specials), tokenizer_config.json and
    chat_template.jinja; returns every special token's id."""
    tok = build_tokenizer(vocab_size)
    tok.add_special_tokens(media_tokens)
    (out / "tokenizer.json").write_text(json.dumps(json.loads(tok.to_str()), ensure_ascii=False, indent=1) + "\n",
                                        encoding="utf-8")
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "unk_token": None, "model_max_length": 1024,
        "clean_up_tokenization_spaces": False, "add_prefix_space": False, "split_special_tokens": False,
        "errors": "replace", "extra_special_tokens": {}, "chat_template": template,
    })
    (out / "chat_template.jinja").write_text(template, encoding="utf-8")
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS + media_tokens}
    ids["__vocab__"] = tok.get_vocab_size()
    return ids


def _text_config(ids: dict[str, int], *, hidden_size: int, num_layers: int, model_type: str) -> dict:
    """A 4-head, 2-KV-head Qwen2-shaped decoder (head_dim = hidden_size / 4)."""
    return {
        "model_type": model_type, "vocab_size": ids["__vocab__"], "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size, "num_hidden_layers": num_layers, "num_attention_heads": 4,
        "num_key_value_heads": 2, "hidden_act": "silu", "max_position_embeddings": 1024, "rms_norm_eps": 1e-6,
        "initializer_range": 0.02, "use_cache": True, "use_sliding_window": False, "sliding_window": None,
        "max_window_layers": num_layers, "attention_dropout": 0.0, "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
    }


def qwen2_vl_config(ids: dict[str, int], *, hidden_size: int = 64, num_layers: int = 2) -> dict:
    """Qwen2VLForConditionalGeneration: a 1-block vision tower (patch 14, 2x2 merge) and a Qwen2 decoder with
    multimodal RoPE (mrope_section sums to head_dim / 2)."""
    half = hidden_size // 4 // 2
    section = [half - 2 * (half // 3), half // 3, half // 3]
    text = _text_config(ids, hidden_size=hidden_size, num_layers=num_layers, model_type="qwen2_vl_text")
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section}
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl", "text_config": text,
        "vision_config": {"model_type": "qwen2_vl_vision", "depth": 1, "embed_dim": 32, "hidden_size": hidden_size,
                          "num_heads": 2, "mlp_ratio": 2, "in_channels": 3, "patch_size": 14,
                          "spatial_merge_size": 2, "temporal_patch_size": 2, "hidden_act": "quick_gelu",
                          "initializer_range": 0.02},
        "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": True, "torch_dtype": "float32",
    }


def llava_config(ids: dict[str, int], *, hidden_size: int = 64, num_layers: int = 2, image_size: int = 28) -> dict:
    """LlavaForConditionalGeneration: a 2-layer CLIP vision tower (patch 14: (image_size/14)^2 image tokens after
    the CLS token is dropped), a 2-layer GELU projector and a Qwen2 decoder (LLaVA-OneVision's language model)."""
    return {
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
        "text_config": _text_config(ids, hidden_size=hidden_size, num_layers=num_layers, model_type="qwen2")
        | {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                          "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": image_size,
                          "patch_size": 14, "projection_dim": 32, "hidden_act": "quick_gelu", "num_channels": 3},
        "image_token_id": ids["<image>"], "projector_hidden_act": "gelu", "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default", "image_seq_length": (image_size // 14) ** 2,
        "multimodal_projector_bias": True, "tie_word_embeddings": True, "torch_dtype": "float32",
    }


def _write_weights(out: Path, seed: int) -> None:
    """model.safetensors: the config's model with seeded random weights (transformers' own init)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(out), dtype=torch.float32)
    model.save_pretrained(out, safe_serialization=True)


def build_tiny_qwen2_vl(out_dir: str | Path, *, vocab_size: int = 1024, hidden_size: int = 64, num_layers: int = 2,
                        max_pixels: int = 56 * 56, weights: bool = False, seed: int = 0) -> Path:
    """A Qwen2-VL style folder; images resize to at most `max_pixels` (56x56: 4x4 patches, 4 image tokens)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = _write_tokenizer(out, QWEN2_VL_TOKENS, QWEN2_VL_CHAT_TEMPLATE, vocab_size)
    _write_json(out / "config.json", qwen2_vl_config(ids, hidden_size=hidden_size, num_layers=num_layers))
    _write_json(out / "preprocessor_config.json", {
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor",
        "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
        "rescale_factor": 1 / 255, "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "resample": 3,
        "size": {"shortest_edge": 28 * 28, "longest_edge": max_pixels},
        "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
    })
    _write_json(out / "processor_config.json", {"processor_class": "Qwen2VLProcessor"})
    _write_generation_config(out, ids)
    if weights:
        _write_weights(out, seed)
    return out


def build_tiny_llava(out_dir: str | Path, *, vocab_size: int = 1024, hidden_size: int = 64, num_layers: int = 2,
                     image_size: int = 28, weights: bool = False, seed: int = 0) -> Path:
    """A LLaVA style folder; images resize and crop to image_size^2 ((image_size/14)^2 image tokens: 4 at 28)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = _write_tokenizer(out, LLAVA_TOKENS, LLAVA_CHAT_TEMPLATE, vocab_size)
    _write_json(out / "config.json", llava_config(ids, hidden_size=hidden_size, num_layers=num_layers,
                                                  image_size=image_size))
    _write_json(out / "preprocessor_config.json", {
        "image_processor_type": "CLIPImageProcessor", "processor_class": "LlavaProcessor",
        "do_resize": True, "do_center_crop": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
        "rescale_factor": 1 / 255, "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "resample": 3,
        "size": {"shortest_edge": image_size}, "crop_size": {"height": image_size, "width": image_size},
    })
    _write_json(out / "processor_config.json", {
        "processor_class": "LlavaProcessor", "image_token": "<image>", "patch_size": 14,
        "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1,
    })
    _write_generation_config(out, ids)
    if weights:
        _write_weights(out, seed)
    return out


def _write_generation_config(out: Path, ids: dict[str, int]) -> None:
    _write_json(out / "generation_config.json", {
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|endoftext|>"], "do_sample": False,
    })


AUDIO_TOKENS = ["<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]


def build_tiny_qwen2_audio(out_dir: str | Path, *, seed: int = 0, weights: bool = True) -> Path:
    """A Qwen2-Audio style folder (Qwen2AudioForConditionalGeneration): a 1-layer Whisper-style encoder over 16 mel
    bins and a 1-second window (100 feature frames, at most 25 audio tokens), a 2-layer Qwen2 decoder, the ChatML
    tokenizer, the WhisperFeatureExtractor's preprocessor_config.json; seeded weights unless weights=False."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = _write_tokenizer(out, AUDIO_TOKENS, QWEN2_VL_CHAT_TEMPLATE, 1024)
    _write_json(out / "config.json", {
        "model_type": "qwen2_audio", "architectures": ["Qwen2AudioForConditionalGeneration"],
        "audio_token_index": ids["<|AUDIO|>"], "tie_word_embeddings": False, "torch_dtype": "float32",
        "audio_config": {"model_type": "qwen2_audio_encoder", "num_mel_bins": 16, "encoder_layers": 1,
                         "encoder_attention_heads": 2, "encoder_ffn_dim": 64, "d_model": 32,
                         "max_source_positions": 50},
        "text_config": _text_config(ids, hidden_size=64, num_layers=2, model_type="qwen2")})
    _write_json(out / "preprocessor_config.json", {
        "feature_extractor_type": "WhisperFeatureExtractor", "processor_class": "Qwen2AudioProcessor",
        "feature_size": 16, "sampling_rate": 16000, "hop_length": 160, "chunk_length": 1, "n_fft": 400,
        "padding_value": 0.0, "return_attention_mask": True})
    _write_json(out / "processor_config.json", {"processor_class": "Qwen2AudioProcessor", "audio_token": "<|AUDIO|>"})
    _write_generation_config(out, ids)
    if weights:
        import torch
        from transformers import AutoConfig, Qwen2AudioForConditionalGeneration

        torch.manual_seed(seed)
        Qwen2AudioForConditionalGeneration(AutoConfig.from_pretrained(out)).save_pretrained(out)
    return out


def tone_wav(hz: float, seconds: float = 0.5, rate: int = 16000) -> bytes:
    """A mono 16-bit PCM WAV of a sine tone (test and demo audio)."""
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


BUILDERS: dict[str, Callable[..., Path]] = {"qwen2_vl": build_tiny_qwen2_vl, "llava": build_tiny_llava}

if __name__ == "__main__":  # python -m tkc.runtime.tiny_mm qwen2_vl recipes/assets/tiny-qwen2-vl [--weights]
    import sys

    print(BUILDERS[sys.argv[1]](sys.argv[2], weights="--weights" in sys.argv))
