"""Tiny random instances of catalog families, built from transformers' own config class (no hub): one generic
shrink (hidden 64, 2 layers, 4 heads, 2 KV heads, head_dim 16, few experts) plus tests/catalog/smoke/<family>.yaml
overrides; the vision/audio-language families tkc trains come from tkc.runtime.tiny_mm's builders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
TINY_TOKENIZER = REPO / "recipes" / "assets" / "tiny-qwen2"
SMOKE_DIR = Path(__file__).parent / "smoke"

# the decoder: small enough that 2 LoRA steps take well under a second
TEXT = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "intermediate_size": 128, "max_position_embeddings": 512}
# whichever of these a config has (MoE routing, MLA attention, windows), at a tiny size
OPTIONAL = {
    "num_local_experts": 4, "num_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
    "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32, "n_shared_experts": 1,
    "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1, "decoder_sparse_step": 1, "mlp_only_layers": [],
    "kv_lora_rank": 16, "q_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
    "qk_head_dim": 16, "sliding_window": 32, "max_window_layers": 2, "num_kv_heads": 2,
    "num_nextn_predict_layers": 0, "attention_chunk_size": 32,
}
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
          "depth": 1, "embed_dim": 32, "num_heads": 2, "out_hidden_size": 64, "image_size": 28, "patch_size": 14}
MM_BUILDERS = {"qwen2_vl": "build_tiny_qwen2_vl", "llava": "build_tiny_llava", "qwen2_audio": "build_tiny_qwen2_audio",
               "qwen2_5_vl": "build_tiny_qwen2_vl"}   # Qwen2.5-VL: Qwen2-VL's folder, its config (as_qwen2_5_vl)


def overrides(family: str) -> dict[str, Any]:
    """tests/catalog/smoke/<family>.yaml: config keys set after the generic shrink (nested dicts merge)."""
    path = SMOKE_DIR / f"{family}.yaml"
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.exists() else {}


def _layer_types(types: list[str], n: int) -> list[str]:
    """n layer types keeping each distinct kind once (sliding + full), in the order the model first uses them."""
    kinds = list(dict.fromkeys(types))
    return [kinds[i % len(kinds)] for i in range(n)]


def shrink_text(full: dict[str, Any], ids: dict[str, int]) -> dict[str, Any]:
    """The keys to set on a decoder config: TEXT, the OPTIONAL keys it has, a consistent layer_types, token ids."""
    out: dict[str, Any] = {k: v for k, v in TEXT.items() if k in full or k != "head_dim"}
    out.update({k: v for k, v in OPTIONAL.items() if k in full})
    if "qk_rope_head_dim" in full:  # multi-head latent attention: the rotary part is head_dim
        out["head_dim"] = OPTIONAL["qk_rope_head_dim"]
    if isinstance(full.get("layer_types"), list) and full["layer_types"]:
        out["layer_types"] = _layer_types(full["layer_types"], TEXT["num_hidden_layers"])
    out.update(ids)
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def tiny_config(model_type: str, family: str, ids: dict[str, int]):
    """AutoConfig.for_model(model_type) shrunk: the decoder (or text_config) by shrink_text, a vision_config by
    VISION, then the family's overrides."""
    from transformers import AutoConfig

    full = AutoConfig.for_model(model_type).to_dict()
    if isinstance(full.get("text_config"), dict):
        keys: dict[str, Any] = {"text_config": {**full["text_config"], **shrink_text(full["text_config"], ids)}}
        if isinstance(full.get("vision_config"), dict):
            vis = full["vision_config"]
            keys["vision_config"] = {**vis, **{k: v for k, v in VISION.items() if k in vis}}
        keys.update({k: v for k, v in ids.items() if k in full})
    else:
        keys = shrink_text(full, ids)
    keys = _merge(keys, {k: v for k, v in overrides(family).items() if k != "variants"})
    return AutoConfig.for_model(model_type, **keys)


def _token_ids() -> dict[str, int]:
    vocab = json.loads((TINY_TOKENIZER / "config.json").read_text(encoding="utf-8"))
    return {"vocab_size": vocab["vocab_size"], "bos_token_id": vocab["bos_token_id"],
            "eos_token_id": vocab["eos_token_id"], "pad_token_id": vocab["pad_token_id"]}


def as_qwen2_5_vl(out: Path, cls, seed: int) -> None:
    """Turn a tiny Qwen2-VL folder into a Qwen2.5-VL one: the same tokens and decoder, Qwen2.5-VL's vision tower
    (windowed attention, SwiGLU, out_hidden_size), seeded weights."""
    import torch
    from transformers import AutoConfig

    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    config.update(model_type="qwen2_5_vl", architectures=["Qwen2_5_VLForConditionalGeneration"])
    config["text_config"]["model_type"] = "qwen2_5_vl_text"
    config["vision_config"] = {"model_type": "qwen2_5_vl_vision", "depth": 1, "hidden_size": 32, "num_heads": 2,
                               "intermediate_size": 64, "out_hidden_size": config["text_config"]["hidden_size"],
                               "fullatt_block_indexes": [0], "window_size": 56, "patch_size": 14,
                               "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3}
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    torch.manual_seed(seed)
    cls(AutoConfig.from_pretrained(out)).save_pretrained(out, safe_serialization=True)


def build(family, out: Path, seed: int = 0):
    """A model folder for `family` (config.json, tokenizer, seeded model.safetensors); returns the model."""
    import torch
    import transformers

    cls = getattr(transformers, family.verified.smoke)
    if family.id in MM_BUILDERS:
        from tkc.runtime import tiny_mm

        getattr(tiny_mm, MM_BUILDERS[family.id])(out, weights=family.id != "qwen2_5_vl", seed=seed)
        if family.id == "qwen2_5_vl":
            as_qwen2_5_vl(out, cls, seed)
        return cls.from_pretrained(out, dtype=torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(TINY_TOKENIZER / name, out / name)
    config = tiny_config(family.model_types[0], family.id, _token_ids())
    config.architectures = [family.verified.smoke]
    torch.manual_seed(seed)
    model = cls(config).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    return model


def variant_trees(family) -> list[set[str]]:
    """Module names of each `variants:` entry of the family's smoke file (config keys for checkpoints of the same
    family built differently, e.g. DeepSeek-V2-Lite's plain q_proj): LoRA targets may name modules of any."""
    import transformers

    cls = getattr(transformers, family.verified.smoke)
    trees = []
    for keys in overrides(family.id).get("variants", []):
        config = tiny_config(family.model_types[0], family.id, {**_token_ids(), **keys})
        trees.append({name for name, _ in cls(config).named_modules()})
    return trees
