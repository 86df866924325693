"""VLLMEngine: the Engine interface on vLLM's offline `LLM` (CUDA/ROCm only; `pip install tkc[vllm]`)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tkc.bundle.chat import ChatTemplate
from tkc.runtime.context import RunContext
from tkc.runtime.infer.engine import Completion, Prompt, chat_template, render_prompt, split_stops

MISSING = (
    "engine 'vllm' needs the vllm package, which is not installed: pip install 'tkc[vllm]' "
    "(vLLM runs on CUDA/ROCm GPUs only); or use engine: hf"
)


def import_vllm():
    """The vllm module, imported only when a VLLMEngine is built; a clear error naming the extra otherwise."""
    try:
        import vllm
    except ImportError as e:
        raise RuntimeError(MISSING) from e
    return vllm


def sampling_kwargs(
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop: Sequence[str],
    seed: int,
    stop_token_ids: Iterable[int] = (),
) -> dict[str, Any]:
    """SamplingParams arguments equivalent to HFEngine's: greedy at temperature 0, no top-k, specials skipped."""
    sample = temperature > 0
    return {
        "n": 1,
        "max_tokens": max_new_tokens,
        "temperature": temperature if sample else 0.0,
        "top_p": top_p if sample else 1.0,
        "top_k": -1,
        "seed": seed,
        "stop": list(stop),
        "stop_token_ids": sorted(stop_token_ids),
        "skip_special_tokens": True,
        "include_stop_str_in_output": False,
        "repetition_penalty": 1.0,
    }


def weights_for(ctx: RunContext, stage_name: str | None) -> tuple[str, str | None]:
    """(full-weights directory or hub id, adapter directory or None) that vLLM can load for the stage's model."""
    if stage_name is None:
        if ctx.plan.model.init == "scratch":
            raise RuntimeError(
                "the bundle's base model is a seeded random init (init: scratch), which vLLM cannot "
                "rebuild; run a training stage first, or use engine: hf"
            )
        return ctx.model_path(), None
    from tkc.runtime.stage_manifest import require_intact

    model_dir = require_intact(ctx, stage_name) / "model"  # checked against its manifest before vLLM reads it
    if not (model_dir / "adapter_config.json").exists():
        return str(model_dir), None
    base, adapter = weights_for(ctx, ctx.stage_by_name(stage_name).init_from)
    if adapter is not None:
        raise RuntimeError(
            f"stage {stage_name!r} is an adapter on another adapter; vLLM serves one adapter over "
            "full weights: add an export stage (merge_adapter: true) and infer from it"
        )
    return base, str(model_dir)


def _lora_rank(adapter_dir: str) -> int:
    return int(json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))["r"])


class VLLMEngine:
    """Engine over `vllm.LLM`: prompts rendered by tkc (same template text as HFEngine), LoRA via LoRARequest."""

    def __init__(self, llm, tokenizer, fmt: ChatTemplate | None, lora_request=None):
        self.llm, self.tok, self.fmt, self.lora_request = llm, tokenizer, fmt, lora_request
        self.vllm = import_vllm()

    @classmethod
    def from_bundle(
        cls, ctx: RunContext, stage_name: str | None, *, dtype: str = "auto", **llm_kwargs: Any
    ) -> VLLMEngine:
        vllm = import_vllm()
        weights, adapter = weights_for(ctx, stage_name)
        m = ctx.plan.model
        kwargs: dict[str, Any] = {
            "model": weights,
            "tokenizer": ctx.model_path(),
            "dtype": dtype,
            "seed": ctx.plan.seed,
            "trust_remote_code": m.trust_remote_code,
        }
        if stage_name is None and m.source == "hub":
            kwargs["revision"] = m.revision
        lora = None
        if adapter is not None:
            kwargs.update(enable_lora=True, max_lora_rank=_lora_rank(adapter))
            from vllm.lora.request import LoRARequest

            lora = LoRARequest(stage_name, 1, adapter)
        return cls(vllm.LLM(**{**kwargs, **llm_kwargs}), ctx.tokenizer(), chat_template(ctx), lora)

    def params(
        self, *, max_new_tokens: int, temperature: float, top_p: float, stop: Sequence[str], seed: int
    ):
        """The template's stop tokens and `stop`: special tokens as stop_token_ids, the rest as stop strings."""
        ids, strings = split_stops(self.tok, self.fmt, stop)
        return self.vllm.SamplingParams(
            **sampling_kwargs(
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
                stop=strings,
                stop_token_ids=ids,
            )
        )

    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        seed: int = 0,
    ) -> list[Completion]:
        params = self.params(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=stop, seed=seed
        )
        texts = [render_prompt(self.fmt, p) for p in prompts]
        outs = self.llm.generate(texts, params, lora_request=self.lora_request, use_tqdm=False)
        return [_completion(o.outputs[0]) for o in outs]

    def stream(
        self,
        prompt: Prompt,
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        seed: int = 0,
    ) -> Iterator[str]:
        """vLLM's offline LLM has no token streaming: the whole reply arrives as one delta."""
        yield self.generate(
            [prompt],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            seed=seed,
        )[0].text


def _completion(out) -> Completion:
    reason = "length" if out.finish_reason == "length" else "stop"
    return Completion(out.text, list(out.token_ids), reason)
