"""The inference engine interface: Completion, the Engine protocol, the bundle's chat format, and load_engine."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tkc.runtime.context import RunContext, load_bundle_hash, resolve_source_root

# A prompt is raw text (sent as is) or a chat conversation (rendered with the bundle's template).
Prompt = str | list[dict]
ENGINES = ("hf", "vllm")
MODEL_LESS_KINDS = ("eval", "infer")  # stages that write no model/: chat with the model they read


@dataclass(frozen=True)
class Completion:
    text: str  # the reply, cut before the first stop string; special tokens skipped
    tokens: list[int]  # generated ids, up to (not including) the stop token
    finish_reason: str  # "stop" (a stop token or string) | "length" (max_new_tokens reached)


@runtime_checkable
class Engine(Protocol):
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
        """One completion per prompt; greedy when temperature == 0, else seeded sampling."""
        ...

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
        """The completion of one prompt as text deltas; their concatenation equals generate()'s text."""
        ...


@dataclass(frozen=True)
class ChatFormat:
    """The bundle's chat template and its resolved metadata (resolved.json "template")."""

    text: str
    bos_token: str = ""
    eos_token: str = ""
    stop_tokens: tuple[str, ...] = ()
    render_kwargs: dict[str, Any] = field(default_factory=dict)

    def prompt(self, messages: list[dict], *, tools: list[dict] | None = None) -> str:
        """The conversation rendered up to the assistant's turn, exactly as the model was trained on it."""
        from tkc.catalog.chat import render

        return render(
            self.text,
            messages,
            tools=tools,
            add_generation_prompt=True,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            **self.render_kwargs,
        )


def chat_format(ctx: RunContext) -> ChatFormat | None:
    """The ChatFormat of the bundle, or None for a bundle without a template (pretraining only)."""
    tpl = ctx.resolved.get("template")
    text = ctx.chat_template()
    if not tpl or text is None:
        return None
    return ChatFormat(
        text,
        tpl.get("bos_token") or "",
        tpl.get("eos_token") or "",
        tuple(tpl.get("stop_tokens") or ()),
        dict(tpl.get("render_kwargs") or {}),
    )


def render_prompt(fmt: ChatFormat | None, prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    if fmt is None:
        raise ValueError(
            "this bundle has no chat template (resolved.json template is null); pass text prompts"
        )
    return fmt.prompt(prompt)


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` before the earliest stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters could still begin a stop string (a stream must not emit them yet)."""
    longest = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:n]):
                longest = n
                break
    return longest


def split_stops(tokenizer, stops: Sequence[str]) -> tuple[set[int], list[str]]:
    """(ids, strings): a stop that is one special/added token is stopped on by id (decoding skips special
    tokens, so it never shows in the text); any other stop is matched in the decoded text. eos is always a stop."""
    ids = {tokenizer.eos_token_id} - {None}
    added = tokenizer.get_added_vocab()
    strings: list[str] = []
    for s in stops:
        if s in tokenizer.all_special_tokens or s in added:
            ids.add(tokenizer.convert_tokens_to_ids(s))
        else:
            strings.append(s)
    return ids, strings


def open_context(bundle: Path, source_root: Path | None = None) -> RunContext:
    """A RunContext for a bundle directory, as `tkc run` builds it (no distributed setup)."""
    bundle = Path(bundle).resolve()
    resolved = json.loads((bundle / "resolved.json").read_text(encoding="utf-8"))
    return RunContext(bundle, resolved, resolve_source_root(bundle, source_root), load_bundle_hash(bundle))


def model_stage(ctx: RunContext, stage_name: str | None) -> str | None:
    """The stage whose outputs/<stage>/model/ to load: the named one (an eval/infer stage: the model it reads),
    or, when none is named, the last stage that wrote a model; None means the bundle's base model."""
    if stage_name is None:
        done = [s for s in ctx.resolved["stages"] if (ctx.stage_dir(s) / "model").is_dir()]
        return max(done, key=lambda s: s["index"])["name"] if done else None
    stage = ctx.stage_by_name(stage_name)
    if stage["kind"] in MODEL_LESS_KINDS:
        return model_stage(ctx, stage["init_from"]) if stage.get("init_from") else None
    if not (ctx.stage_dir(stage) / "model").is_dir():
        raise RuntimeError(
            f"stage {stage_name!r} has no model yet ({ctx.stage_dir(stage) / 'model'}); "
            f"run it first: tkc run {ctx.bundle_dir} --stage {stage_name}"
        )
    return stage_name


def load_engine(
    ctx_or_bundle: RunContext | Path | str, stage_name: str | None = None, engine: str = "hf", **options: Any
) -> Engine:
    """An engine over a stage's output model (adapter merged or full weights); None: the bundle's base model.

    An eval/infer stage name means the model that stage reads. `options` go to the engine's from_bundle.
    """
    ctx = ctx_or_bundle if isinstance(ctx_or_bundle, RunContext) else open_context(Path(ctx_or_bundle))
    stage_name = model_stage(ctx, stage_name) if stage_name is not None else None
    if engine == "hf":
        from tkc.runtime.infer.hf import HFEngine

        return HFEngine.from_bundle(ctx, stage_name, **options)
    if engine == "vllm":
        from tkc.runtime.infer.vllm_engine import VLLMEngine

        return VLLMEngine.from_bundle(ctx, stage_name, **options)
    raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")
