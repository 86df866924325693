"""Bench workload assets: a tiny Qwen2 model and a Qwen2-style byte-level BPE tokenizer, built locally.

Both tools load the very same files (safetensors weights, tokenizer.json/vocab.json/merges.txt), so any
difference in tokens or loss comes from the tools, not from the inputs. Uses `tkc.runtime.tiny` when that
module exists; the builder below is the fallback and produces the same shapes (hidden 256, 4 layers,
4 heads, 2 KV heads, intermediate 1024).

    .venv/bin/python bench/tiny_assets.py            # builds bench/.work/assets/tiny-qwen2 if absent
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ASSETS = BENCH / ".work" / "assets"
MODEL_DIR = ASSETS / "tiny-qwen2"
DATASETS = Path("/work/shared/datasets")
SEED = 0
VOCAB_SIZE = 8192
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2Tokenizer's own pre-tokenizer regex (transformers 5 rebuilds any Qwen2 tokenizer with it).
QWEN2_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
# ChatML without tools; the default system prompt is Qwen2.5's (the peer's `qwen` template inserts it too).
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] != 'system' %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _corpus() -> list[str]:
    rows = json.loads((DATASETS / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    texts = [" ".join([r.get("instruction", ""), r.get("input", ""), r.get("output", "")]) for r in rows]
    for r in json.loads((DATASETS / "dpo_en_demo.json").read_text(encoding="utf-8")):
        texts.append(" ".join(t["value"] for t in r["conversations"]))
        texts.append(r["chosen"]["value"] + " " + r["rejected"]["value"])
    return texts


def build_tokenizer(out: Path) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    model = json.loads(tok.to_str())["model"]
    (out / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    added = {
        str(tok.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in SPECIALS
    }
    cfg = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": 2048,
        "split_special_tokens": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    (out / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
            },
            indent=2,
        ),
        encoding="utf-8",
    )


def build_model(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(out)
    cfg = Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
    )
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(cfg).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)


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
    import shutil

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:  # the project's own builder (tkc.runtime.tiny), at the bench shape
        from tkc.runtime.tiny import build_tiny_qwen2

        build_tiny_qwen2(tmp, hidden_size=256, num_layers=4, intermediate_size=1024)
        cfg = json.loads((tmp / "config.json").read_text())
        cfg["max_position_embeddings"] = 2048
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    except ImportError:
        build_tokenizer(tmp)
        build_model(tmp)
    add_weights(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


if __name__ == "__main__":
    path = build()
    print(path)
    sys.exit(0)
