"""Build the model a stage trains: start weights (scratch / pretrained / a previous stage), then full, freeze or LoRA."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from tkc.bundle.plan import ResolvedFreeze, ResolvedLora, ResolvedQuantization, ResolvedStage
from tkc.runtime import gcpause
from tkc.runtime.context import RunContext

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _model_ready(load: Callable) -> Callable:
    """A loader after which the stage's heavy imports are done and its model exists: the garbage collector,
    paused while `tkc run` starts a stage, runs again from here (tkc.runtime.gcpause)."""

    @functools.wraps(load)
    def wrapper(*args, **kwargs):
        model = load(*args, **kwargs)
        gcpause.model_ready()
        return model

    return wrapper


def compute_dtype(stage: ResolvedStage) -> torch.dtype:
    """The dtype the stage computes in (its `train.precision`; under torch.autocast when not fp32): fp32 for
    stages that do not train (eval, infer, export)."""
    return DTYPES[stage.train.precision] if stage.train is not None else torch.float32


def dtype_of(stage: ResolvedStage) -> torch.dtype:
    """The dtype a stage's start weights load in, mixed precision as practitioners run it: full fine-tuning keeps
    fp32 master weights (autocast computes in bf16/fp16); LoRA and freeze load the frozen base in the compute
    dtype (QLoRA: its bitsandbytes compute dtype) and keep what trains in fp32 (keep_trainable_fp32). fp32: fp32."""
    compute = compute_dtype(stage)
    if compute == torch.float32 or stage.finetuning is None or stage.finetuning.method == "full":
        return torch.float32
    return compute


def keep_trainable_fp32(model: nn.Module) -> nn.Module:
    """Trainable parameters in fp32 (optimizer updates too small for bf16's 8 mantissa bits are not lost), frozen
    ones as loaded; nothing changes when everything is fp32 already (CPU runs)."""
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


def attn(ctx: RunContext) -> str:
    """The attention implementation models load with: the plan's (sdpa unless the family's class refuses it)."""
    return ctx.plan.model.attn_implementation


def _auto_class(head: str, ctx: RunContext | None = None):
    """The class a stage's model loads as; a vision-language model (the plan's model.multimodal) as its family's
    class (tkc.runtime.multimodal)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its "Loading weights" bar: tkc prints its own progress, one line a step
    if ctx is not None and ctx.plan.model.multimodal is not None and head == "causal_lm":
        from tkc.runtime.multimodal import model_class

        return model_class(ctx.plan.model.multimodal)
    return AutoModelForCausalLM if head == "causal_lm" else AutoModelForSequenceClassification


def _from_bundle_model(ctx: RunContext, head: str, dtype: torch.dtype, seed: int,
                       quant: ResolvedQuantization | None):
    """The bundle's model: random init from config.json with `seed` (init: scratch) or its pretrained weights."""
    from transformers import AutoConfig

    from tkc.runtime.model_files import hub_kwargs

    path = ctx.model_path()  # verified against the bundle before transformers reads (or runs) anything in it
    common: dict[str, Any] = hub_kwargs(ctx.plan.model)  # trust_remote_code always explicit: never a stdin question
    config = AutoConfig.from_pretrained(path, **common)
    if head == "seq_cls":
        config.num_labels = 1
        config.pad_token_id = ctx.tokenizer().pad_token_id
    torch.manual_seed(seed)
    if ctx.plan.model.init == "scratch":
        return _auto_class(head, ctx).from_config(config, dtype=dtype, attn_implementation=attn(ctx),
                                             trust_remote_code=common["trust_remote_code"])
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn(ctx), "config": config, **common}
    if quant:
        kwargs["quantization_config"] = _bnb_config(quant, dtype)
    return _auto_class(head, ctx).from_pretrained(path, **kwargs)


def _bnb_config(quant: ResolvedQuantization, dtype: torch.dtype):
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise RuntimeError(
            "this stage asks for QLoRA (finetuning.quantization) but bitsandbytes is not installed; "
            "install it (pip install bitsandbytes) on a machine it supports, or drop `quantization:` from the recipe"
        ) from e
    from transformers import BitsAndBytesConfig

    if quant.bits == 4:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant.quant_type,
                                  bnb_4bit_use_double_quant=quant.double_quant,
                                  bnb_4bit_compute_dtype=dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


@contextmanager
def quiet_checkpointing_alias() -> Iterator[None]:
    """peft (whenever it wraps a model) and TRL's GRPO trainer (every step) read transformers' deprecated
    `is_gradient_checkpointing`: a FutureWarning addressed to their authors, printed on every LoRA or GRPO run.
    Silenced inside this block only, by its exact text."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def _load_stage_output(ctx: RunContext, name: str, *, dtype: torch.dtype = torch.float32,
                       head: str = "causal_lm"):
    """A finished stage's model: full weights as saved, or its adapter merged into the weights it started from."""
    model_dir = ctx.stage_dir(name) / "model"
    if not model_dir.is_dir():
        raise RuntimeError(f"stage {name!r} has no output model at {model_dir}; run it first")
    from tkc.runtime.stage_manifest import require_intact

    require_intact(ctx, name)  # its files as they were when it finished, before any weights load
    if (model_dir / "adapter_config.json").exists():
        from peft import PeftModel

        base = _start_weights(ctx, ctx.stage_by_name(name), head=head, dtype=dtype)
        with quiet_checkpointing_alias():
            tuned = PeftModel.from_pretrained(base, str(model_dir))
            return _merge_zero3(tuned) if any(hasattr(p, "ds_id") for p in base.parameters()) \
                else tuned.merge_and_unload()
    return _auto_class(head, ctx).from_pretrained(str(model_dir), dtype=dtype, attn_implementation=attn(ctx),
                                             trust_remote_code=ctx.plan.model.trust_remote_code)


def _merge_zero3(tuned):
    """The adapter merged into a base built under ZeRO-3's zero.Init (each rank holds a shard; a plain merge met
    0-size placeholders and raised): one LoRA layer at a time gathered, merged on rank 0, partitioned again."""
    from deepspeed.runtime.zero.partition_parameters import GatheredParameters
    from peft.tuners.lora import LoraLayer

    for module in tuned.modules():
        if isinstance(module, LoraLayer):
            with GatheredParameters(list(module.parameters()), modifier_rank=0):
                module.merge()
    return tuned.unload()


def _start_weights(ctx: RunContext, sp: ResolvedStage, *, head: str = "causal_lm", dtype: torch.dtype | None = None):
    """The weights a stage starts from: its init_from stage's output, else the bundle's model."""
    dtype = dtype or dtype_of(sp)
    seed = sp.train.seed if sp.train else ctx.plan.seed  # eval/infer/export: the run's seed
    quant = sp.finetuning.quantization if sp.finetuning else None
    if sp.init_from is None:
        return _from_bundle_model(ctx, head, dtype, seed, quant)
    lm = _load_stage_output(ctx, sp.init_from, dtype=dtype)
    if head == "causal_lm":
        return lm
    torch.manual_seed(seed)  # the value head starts from seeded random weights
    config = lm.config
    config.num_labels, config.pad_token_id = 1, ctx.tokenizer().pad_token_id
    cls_model = _auto_class(head).from_config(config, dtype=dtype, attn_implementation=attn(ctx),
                                              trust_remote_code=ctx.plan.model.trust_remote_code)
    cls_model.base_model.load_state_dict(lm.base_model.state_dict())
    return cls_model


def _load_stage_adapter(ctx: RunContext, name: str, *, dtype: torch.dtype = torch.float32):
    """A finished LoRA stage's PeftModel, not merged: its adapter on the weights that stage started from."""
    model_dir = ctx.stage_dir(name) / "model"
    if not (model_dir / "adapter_config.json").exists():
        raise RuntimeError(f"stage {name!r} saved full weights at {model_dir}, no adapter to export unmerged")
    from peft import PeftModel

    from tkc.runtime.stage_manifest import require_intact

    require_intact(ctx, name)
    base = _start_weights(ctx, ctx.stage_by_name(name), dtype=dtype)
    with quiet_checkpointing_alias():
        return PeftModel.from_pretrained(base, str(model_dir))


load_stage_output = _model_ready(_load_stage_output)
load_stage_adapter = _model_ready(_load_stage_adapter)
start_weights = _model_ready(_start_weights)


@_model_ready
def base_weights(ctx: RunContext, *, head: str = "causal_lm", dtype: torch.dtype = torch.float32):
    """The bundle's own model, outside any stage (inference on the base model): seeded with the run's seed."""
    return _from_bundle_model(ctx, head, dtype, ctx.plan.seed, None)


def decoder_layers(model: nn.Module, layers_path: str | None = None) -> nn.ModuleList:
    """The decoder layer list: at `layers_path` when the plan names it, else the largest ModuleList named *layers."""
    if layers_path:
        return model.get_submodule(layers_path)
    lists = [m for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and n.endswith("layers")]
    if not lists:
        raise RuntimeError("freeze tuning: no decoder layer list found; the plan should name finetuning.freeze.layers_path")
    return max(lists, key=len)


def apply_freeze(model: nn.Module, freeze: ResolvedFreeze) -> None:
    """Freeze everything, then unfreeze the last N decoder layers (only `trainable_modules` in them, if listed)."""
    for p in model.parameters():
        p.requires_grad_(False)
    layers = decoder_layers(model, freeze.layers_path)
    n = freeze.trainable_layers
    chosen = layers[-n:] if n > 0 else layers[:-n]
    modules = freeze.trainable_modules
    for layer in chosen:
        for name, p in layer.named_parameters():
            if not modules or any(name.split(".")[0] == m or name.startswith(m + ".") for m in modules):
                p.requires_grad_(True)


def expert_parameters(model: nn.Module, layers_path: str | None, experts_path: str) -> list[str]:
    """The fused expert weights under each MoE decoder layer's `experts_path`, as peft's target_parameters
    (e.g. mlp.experts.gate_up_proj): the experts module's own parameters, as transformers names them."""
    for layer in decoder_layers(model, layers_path):
        try:
            experts = layer.get_submodule(experts_path)
        except AttributeError:
            continue  # a dense layer (DeepSeek's first_k_dense_replace)
        return sorted(f"{experts_path}.{name}" for name, _ in experts.named_parameters(recurse=False))
    raise RuntimeError(f"no decoder layer has the experts module {experts_path!r} (the family's moe.experts_path)")


def apply_lora(model: nn.Module, lora: ResolvedLora, *, task_type: str, quantized: bool,
               targets: str | None = None, modules_to_save: list[str] | None = None,
               target_parameters: list[str] | None = None):
    """Wrap with a PEFT LoRA adapter: variants lora / dora / rslora, init default / pissa. `targets` (a regex) and
    `modules_to_save` stand in for the plan's (a vision-language model: tkc.runtime.multimodal);
    `target_parameters`: fused parameters (MoE experts) adapted too."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    save = [*lora.modules_to_save, *(modules_to_save or [])]
    config = LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=targets if targets is not None else list(lora.targets),
        use_dora=lora.variant == "dora", use_rslora=lora.variant == "rslora",
        init_lora_weights="pissa" if lora.init == "pissa" else True,
        modules_to_save=save or None, bias="none", task_type=task_type,
        **({"target_parameters": target_parameters} if target_parameters else {}),
    )
    with quiet_checkpointing_alias():  # adapters in fp32 over a bf16/fp16 base (peft's default, said here)
        model = get_peft_model(model, config, autocast_adapter_dtype=True)
    from tkc.runtime.lora import fuse

    fuse(model)  # plain adapters add B(A(x)) * scaling in one GEMM (tkc.runtime.lora)
    return model


def add_neftune(model: nn.Module, alpha: float) -> None:
    """NEFTune: uniform noise of scale alpha/sqrt(L*d) on input embeddings, in training mode only."""
    def hook(module, inputs, output):
        if module.training:
            mag = alpha / math.sqrt(output.size(1) * output.size(2))
            output = output + torch.empty_like(output).uniform_(-mag, mag)
        return output

    model.get_input_embeddings().register_forward_hook(hook)


def _lora_experts(ctx: RunContext, model: nn.Module) -> list[str] | None:
    """The expert weights LoRA adapts when the plan's model.moe says so (else None: experts frozen)."""
    moe = ctx.plan.model.moe
    if moe is None or not moe.lora_experts or not moe.experts_path:
        return None
    return expert_parameters(model, None, moe.experts_path)  # the decoder layer list: the largest *layers list


@_model_ready
def build_trainable(ctx: RunContext, stage: ResolvedStage, *, head: str = "causal_lm"):
    """Start weights plus the stage's fine-tuning method; returns the model in train mode."""
    from tkc.runtime import strategy

    train, ft = stage.train, stage.finetuning
    assert train is not None and ft is not None, "only training stages build a trainable model"
    strat = strategy.for_stage(ctx, stage)
    with strat.init_context():  # ZeRO-3: parameters are born sharded across ranks
        model = _start_weights(ctx, stage, head=head)
    model.config.use_cache = False
    mm = ctx.plan.model.multimodal
    if ft.method == "freeze":
        assert ft.freeze is not None, "the plan has a freeze block exactly for method freeze"
        apply_freeze(model, ft.freeze)
    elif ft.method == "lora":
        assert ft.lora is not None, "the plan has a lora block exactly for method lora"
        torch.manual_seed(train.seed)  # LoRA A matrices are random: seed them
        from tkc.runtime import multimodal

        model = apply_lora(model, ft.lora, task_type="CAUSAL_LM" if head == "causal_lm" else "SEQ_CLS",
                           quantized=ft.quantization is not None,
                           targets=multimodal.lora_targets(mm, ft.lora.targets) if mm else None,
                           modules_to_save=multimodal.lora_modules_to_save(mm, ft) if mm else None,
                           target_parameters=_lora_experts(ctx, model))
    if mm is not None and ft.method != "lora":
        from tkc.runtime.multimodal import apply_switches

        apply_switches(model, mm, ft)  # the vision tower, projector and language model: trained or frozen
    if train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if ft.method == "lora":
            model.enable_input_require_grads()
    if train.neftune_alpha is not None:
        add_neftune(model, train.neftune_alpha)
    keep_trainable_fp32(model)  # LoRA adapters (peft upcasts them too), modules_to_save, freeze's trained layers
    model.train()
    return strat.place(model)  # on the stage's device before anything (a reference copy, an optimizer) is made


def build_optimizer(model: nn.Module, stage: ResolvedStage) -> torch.optim.Optimizer:
    """AdamW over trainable params; no decay on vectors; LoRA+ gives lora_B a `plus_ratio` times larger lr
    (plus_ratio None: LoRA+ off, every group at the stage's rate)."""
    train, ft = stage.train, stage.finetuning
    assert train is not None and ft is not None, "only training stages build an optimizer"
    plus = ft.lora.plus_ratio if ft.lora is not None and ft.lora.plus_ratio is not None else 1.0
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        mult = plus if "lora_B" in name else 1.0
        wd = train.weight_decay if p.ndim >= 2 else 0.0
        groups.setdefault((mult, wd), []).append(p)
    param_groups = [{"params": ps, "lr_mult": m, "weight_decay": wd, "lr": train.learning_rate * m}
                    for (m, wd), ps in sorted(groups.items())]
    return torch.optim.AdamW(param_groups, lr=train.learning_rate, betas=(train.adam_beta1, train.adam_beta2),
                             eps=train.adam_epsilon, weight_decay=train.weight_decay, foreach=False)


def count_params(model: nn.Module) -> tuple[int, int]:
    numel = {id(p): getattr(p, "ds_numel", p.numel()) for p in model.parameters()}  # ZeRO-3: whole size
    trainable = sum(numel[id(p)] for p in model.parameters() if p.requires_grad)
    return trainable, sum(numel.values())
