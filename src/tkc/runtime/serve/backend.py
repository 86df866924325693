"""What `tkc serve` serves: a bundle's stage loaded once (an inference engine, or an rm stage's scoring model).

The engine renders nothing the server does not see: chat prompts are rendered here with the bundle's template
(`ChatTemplate`, the one the data pipeline trained with, tools included) and submitted as text, so the served
prompt is byte for byte the training prompt. Generation defaults come from the bundle: the infer stage's options
when one reads the served model, else OpenAI's (temperature 1, top_p 1), and the plan's seed.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tkc.bundle.chat import ChatTemplate
from tkc.bundle.plan import ResolvedInferOptions
from tkc.runtime.context import RunContext
from tkc.runtime.serve.tools import ToolFormat, probe_format

_END = object()


@dataclass(frozen=True)
class Defaults:
    max_tokens: int | None  # None: what the context leaves, capped by the server's limit
    temperature: float
    top_p: float
    seed: int


class Backend:
    """The served model: `engine` (generation, the concurrent submit/Handle interface) or `scorer` (rm)."""

    def __init__(self, model_id: str, fmt: ChatTemplate | None, tokenizer: Any, context: int, defaults: Defaults,
                 *, engine: Any = None, scorer: Any = None):
        self.model_id, self.fmt, self.tok, self.context, self.defaults = model_id, fmt, tokenizer, context, defaults
        self.engine, self.scorer = engine, scorer
        self.tool_format: ToolFormat | None = probe_format(fmt)
        # a multimodal bundle's image encoding (BatchingEngine only) and the fetcher its image_url parts go through
        self.media: Any = getattr(engine, "media", None)
        self.fetcher: Any = None
        self._score_lock = threading.Lock()

    @property
    def kind(self) -> str:
        return "score" if self.scorer is not None else "generate"

    def render_chat(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        if self.fmt is None:
            raise ValueError("this bundle has no chat template (a pt-only bundle): use /v1/completions")
        return self.fmt.prompt(messages, tools=tools)

    @property
    def placeholder(self) -> str | None:
        """What an image part becomes in the rendered prompt (the family's `<image>`); None: no images here."""
        images = self.media.images if self.media is not None else None
        return images.placeholder if images is not None else None

    @property
    def audio_placeholder(self) -> str | None:
        """What an input_audio part becomes (the family's `<audio>`); None: no audio here."""
        audios = self.media.audios if self.media is not None else None
        return audios.placeholder if audios is not None else None

    def count_tokens(self, text: Any) -> int:
        if hasattr(text, "inputs"):  # MediaIds: an encoded prompt with images
            return len(text.ids)
        return len(self.tok(text, add_special_tokens=False)["input_ids"])

    def submit(self, prompt: str, params: Any) -> Any:
        return self.engine.submit(prompt, params)

    def score(self, messages: list[dict]) -> tuple[float, int]:
        """The reward of a whole conversation (rendered as training rendered it) and its token count."""
        import torch

        assert self.fmt is not None, "an rm stage is trained on chat rows: its bundle has a template"
        ids = self.tok(self.fmt.render(messages), add_special_tokens=False)["input_ids"]
        with self._score_lock, torch.no_grad():
            value = self.scorer(input_ids=torch.tensor([ids], device=self.scorer.device)).logits
        return float(value.reshape(-1)[-1]), len(ids)

    def close(self) -> None:
        if self.engine is not None and hasattr(self.engine, "close"):
            self.engine.close()


class Deltas:
    """A submitted Handle's Deltas as an async iterator: a reader thread hands each one to the event loop."""

    def __init__(self, handle: Any):
        self.handle = handle
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        threading.Thread(target=self._read, daemon=True, name="tkc-serve-reader").start()

    def _read(self) -> None:
        try:
            for delta in self.handle:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, delta)
        except BaseException as e:  # the engine failed: re-raised in the reader's task
            self.loop.call_soon_threadsafe(self.queue.put_nowait, e)
        self.loop.call_soon_threadsafe(self.queue.put_nowait, _END)

    def __aiter__(self) -> Deltas:
        return self

    async def __anext__(self) -> Any:
        item = await self.queue.get()
        if item is _END:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        self.handle.cancel()


def infer_defaults(ctx: RunContext, stage: str | None, model_stage: str | None) -> ResolvedInferOptions | None:
    """The options of the infer stage named, else of the first infer stage that reads the served model."""
    infer = [st for st in ctx.plan.stages if st.kind == "infer"]
    pick = [st for st in infer if st.name == stage] or [st for st in infer if st.init_from == model_stage]
    if not pick:
        return None
    assert isinstance(pick[0].options, ResolvedInferOptions)
    return pick[0].options


def load_backend(bundle: Path, stage: str | None, source_root: Path | None, engine: str = "hf",
                 media_hosts: tuple[str, ...] = ()) -> Backend:
    """Verify the bundle, pick the stage's model and load it; errors are ValueError/RuntimeError/KeyError/PlanError
    (the CLI reports them, exit 2). `media_hosts`: the hosts image_url parts may name (media.py)."""
    from tkc.runtime.infer import load_engine, model_stage, open_context
    from tkc.runtime.infer.engine import chat_template
    from tkc.runtime.run import verify

    problem = verify(Path(bundle))
    if problem:
        raise ValueError(f"bundle {bundle} failed verification: {problem}")
    ctx = open_context(bundle, source_root)
    fmt = chat_template(ctx)
    name = model_stage(ctx, stage)
    if name is not None and ctx.stage_by_name(name).kind == "rm":  # named (unnamed, model_stage skips rm stages)
        return _scoring_backend(ctx, name, fmt)
    opts = infer_defaults(ctx, stage, name)
    defaults = Defaults(opts.max_new_tokens if opts else None, opts.temperature if opts else 1.0,
                        opts.top_p if opts else 1.0, ctx.plan.seed)
    loaded = load_engine(ctx, name, engine=engine)
    model_id = f"{ctx.plan.name}/{name or 'base'}"
    backend = Backend(model_id, fmt, ctx.tokenizer(), _context(loaded), defaults, engine=loaded)
    if backend.media is not None:
        from tkc.runtime.serve.images import media_fetcher

        backend.fetcher = media_fetcher(ctx, media_hosts)
    return backend


def _scoring_backend(ctx: RunContext, stage: str, fmt: ChatTemplate | None) -> Backend:
    from tkc.runtime import outputs
    from tkc.runtime.model import load_stage_output

    st = ctx.stage_by_name(stage)
    if not outputs.is_done(ctx, st):
        raise RuntimeError(f"rm stage {stage!r} has not finished; run it first: tkc run {ctx.bundle_dir} "
                           f"--stage {stage}")
    model = load_stage_output(ctx, stage, head="seq_cls").eval().requires_grad_(False)
    defaults = Defaults(None, 1.0, 1.0, ctx.plan.seed)
    context = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    return Backend(f"{ctx.plan.name}/{stage}", fmt, ctx.tokenizer(), context, defaults, scorer=model)


def _context(engine: Any) -> int:
    if hasattr(engine, "max_context"):
        return int(engine.max_context())
    return int(engine.model.config.max_position_embeddings)
