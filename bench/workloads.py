"""The shared workloads, written once and rendered as a peer config (LLaMA-Factory YAML) and a tkc recipe.

Matched on both sides: model files, data (first N records of the shared demo file), chat format (Qwen
ChatML with Qwen2.5's default system prompt inserted), cutoff, batch, steps, seed, learning rate and
schedule, LoRA rank/alpha/dropout/targets, fp32, gradient checkpointing off, no eval, no checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import yaml
from common import DATASETS, WORK

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # sft | dpo
    method: str  # lora | full
    dataset: str  # name in the shared dataset_info.json
    dataset_file: str
    records: int  # first N records of the file; epochs=1 so every record is processed once
    batch: int = 4
    cutoff: int = 512
    learning_rate: float = 1e-4
    seed: int = 42
    lora_rank: int = 8
    lora_alpha: int = 16
    gradient_checkpointing: bool = False
    beta: float = 0.1  # dpo
    data_dir: Path | None = (
        None  # holds dataset_file and a dataset_info.json naming it (default: the shared one)
    )

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir or DATASETS

    @property
    def steps(self) -> int:
        return self.records // self.batch


WORKLOADS = {
    "sft_lora": Workload("sft_lora", "sft", "lora", "alpaca_en_demo", "alpaca_en_demo.json", records=160),
    "sft_full": Workload(
        "sft_full", "sft", "full", "alpaca_en_demo", "alpaca_en_demo.json", records=160, learning_rate=1e-5
    ),
    "dpo_lora": Workload(
        "dpo_lora", "dpo", "lora", "dpo_en_demo", "dpo_en_demo.json", records=80, learning_rate=5e-5
    ),
}


def peer_defaults(w: Workload) -> Workload:
    """The same workload with the peer's own defaults where we had to override them (grad checkpointing on)."""
    return replace(w, name=w.name + "_peer_defaults", gradient_checkpointing=True)


def peer_config(w: Workload, model_dir: Path, out_dir: Path, **extra: object) -> dict:
    cfg: dict = {
        "model_name_or_path": str(model_dir),
        "trust_remote_code": False,
        "stage": w.kind,
        "do_train": True,
        "finetuning_type": w.method,
        "dataset_dir": str(w.datasets_dir),
        "dataset": w.dataset,
        "template": "qwen",
        "cutoff_len": w.cutoff,
        "max_samples": w.records,
        "overwrite_cache": True,
        "output_dir": str(out_dir),
        "overwrite_output_dir": True,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "plot_loss": False,
        "per_device_train_batch_size": w.batch,
        "gradient_accumulation_steps": 1,
        "learning_rate": w.learning_rate,
        "num_train_epochs": 1.0,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "optim": "adamw_torch",
        "seed": w.seed,
        "data_seed": w.seed,
        "dataloader_num_workers": 0,
        "include_num_input_tokens_seen": "non_padding",
    }
    if not w.gradient_checkpointing:
        cfg["disable_gradient_checkpointing"] = True
    if w.method == "lora":
        cfg.update(
            lora_rank=w.lora_rank,
            lora_alpha=w.lora_alpha,
            lora_dropout=0.0,
            lora_target=",".join(LORA_TARGETS),
        )
    if w.kind == "dpo":
        cfg.update(pref_beta=w.beta, pref_loss="sigmoid", pref_ftx=0.0)
    cfg.update(extra)
    return cfg


def write_peer_config(w: Workload, model_dir: Path, out_dir: Path, path: Path, **extra: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(peer_config(w, model_dir, out_dir, **extra), sort_keys=False))
    return path


def workdir(*parts: str) -> Path:
    d = WORK.joinpath(*parts)
    d.mkdir(parents=True, exist_ok=True)
    return d


def tkc_recipe(w: Workload, model_dir: Path, recipe_dir: Path, ranks: int = 1, **train_extra: object) -> dict:
    """The tkc recipe for `w`; paths relative to `recipe_dir` (the recipe's own folder = source root).
    `ranks` > 1: a CPU node running that many processes under torchrun, the global batch split among them."""
    import os

    rel = lambda p: os.path.relpath(p, recipe_dir)  # noqa: E731
    if w.kind == "dpo":
        data = {
            "registry": rel(DATASETS / "dataset_info.json"),
            # `path` given too: tkc resolves a registry's file_name against the recipe folder, not
            # the registry's own folder (reported); the registry entry still supplies the layout.
            "datasets": {
                "pairs": {
                    "registry": w.dataset,
                    "path": rel(DATASETS / w.dataset_file),
                    "max_samples": w.records,
                }
            },
        }
        stage: dict = {"kind": "dpo", "name": "dpo", "datasets": ["pairs"], "beta": w.beta, "loss": "sigmoid"}
    else:
        data = {
            "datasets": {
                "alpaca": {
                    "path": rel(w.datasets_dir / w.dataset_file),
                    "format": "alpaca",
                    "max_samples": w.records,
                }
            }
        }
        stage = {"kind": "sft", "name": "sft", "datasets": ["alpaca"]}
    data["cutoff_len"] = w.cutoff
    finetuning: dict = {"method": w.method}
    if w.method == "lora":
        finetuning["lora"] = {
            "rank": w.lora_rank,
            "alpha": w.lora_alpha,
            "dropout": 0.0,
            "targets": list(LORA_TARGETS),
        }
    train = {
        "learning_rate": w.learning_rate,
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.0,
        "epochs": 1,
        "global_batch_size": w.batch,
        "micro_batch_size": w.batch // ranks,
        "seed": w.seed,
        "precision": "fp32",
        "gradient_checkpointing": w.gradient_checkpointing,
        "save_steps": 100_000,
        "logging_steps": 1,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        **train_extra,
    }
    recipe = {
        "schema_version": 1,
        "name": f"bench-{w.name}".replace("_", "-"),
        "model": {"path": rel(model_dir)},
        # the model and data live outside the recipe's folder: list them, or tkc compile refuses (PATH001)
        "read_roots": sorted({rel(model_dir), rel(DATASETS), rel(w.datasets_dir)}),
        "template": "qwen2_5",
        "data": data,
        "stages": [stage],
        "finetuning": finetuning,
        "train": train,
        "hardware": "cpu",
    }
    if ranks > 1:  # the cpu profile's node, with `ranks` processes on it
        recipe["hardware"] = {"accelerator": "cpu", "devices_per_node": ranks, "memory_gb": 16}
        recipe["launch"] = {"kind": "torchrun"}
    return recipe


def write_tkc_recipe(w: Workload, model_dir: Path, path: Path, ranks: int = 1, **train_extra: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# tkc compile {path.name} -o run/ && tkc run run/   (generated by bench/workloads.py)\n"
    path.write_text(
        header + yaml.safe_dump(tkc_recipe(w, model_dir, path.parent, ranks, **train_extra), sort_keys=False)
    )
    return path
