"""Bench workload assets: a tiny Qwen2 model and a Qwen2-style byte-level BPE tokenizer, built locally.

Both tools load the very same files (safetensors weights, tokenizer.json/vocab.json/merges.txt), so any
difference in tokens or loss comes from the tools, not from the inputs. Built with the project's own builder
(`tkc.runtime.tiny`) at the bench shape: hidden 256, 4 layers, 4 heads, 2 KV heads, intermediate 1024.

    .venv/bin/python bench/tiny_assets.py            # builds bench/.work/assets/tiny-qwen2 if absent
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ASSETS = BENCH / ".work" / "assets"
MODEL_DIR = ASSETS / "tiny-qwen2"
SEED = 0


def add_weights(out: Path) -> None:
    """Seeded random init of the config in `out`, saved as model.safetensors (both tools load these bytes)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(Qwen2Config.from_pretrained(out)).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)


def build(out: Path = MODEL_DIR) -> Path:
    """Build (once) and return the model directory: config, tokenizer and seeded weights."""
    if (out / "model.safetensors").exists() and (out / "tokenizer.json").exists():
        return out
    from tkc.runtime.tiny import build_tiny_qwen2

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    build_tiny_qwen2(tmp, hidden_size=256, num_layers=4, intermediate_size=1024)
    cfg = json.loads((tmp / "config.json").read_text())
    cfg["max_position_embeddings"] = 2048  # alpaca records run past the tiny default
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    add_weights(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


if __name__ == "__main__":
    print(build())
    sys.exit(0)
