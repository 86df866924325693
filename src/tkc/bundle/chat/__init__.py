"""The chat renderer below compiler and runtime: sandboxed Jinja rendering, assistant spans and stop tokens.

The compiler renders templates to probe them; the runtime renders the bundle's template for training data
(assistant spans) and for inference (generation prompts, stop tokens). Both import this package, which needs
only jinja2: it sits next to the bundle format, below the catalog (data files) and the runtime (torch).

`ChatTemplate` is the one description of a bundle's template the runtime renders with: the text of
`template/chat_template.jinja` and the plan's `template` values (`tkc.bundle.plan.ResolvedTemplate`).
`plan_stop_tokens` is the one reader of the plan's stop tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tkc.bundle.chat.render import (
    PinnedClock,
    SpanError,
    TemplateRefused,
    has_generation_markers,
    reads_clock,
    render,
)
from tkc.bundle.chat.spans import Span, assistant_spans, trained_spans

if TYPE_CHECKING:
    from tkc.bundle.plan import ResolvedTemplate

__all__ = ["RENDERER_VERSION", "ChatTemplate", "PinnedClock", "Span", "SpanError", "TemplateRefused",
           "assistant_spans", "has_generation_markers", "plan_stop_tokens", "reads_clock", "render",
           "trained_spans"]  # fmt: skip

# Bump when what `render`, `assistant_spans` or `trained_spans` returns for some input changes: the data cache keys on it
# (a change of the renderer's source alone, a comment or a refactor, keeps cached rows valid).
RENDERER_VERSION = 2  # 2: turns without an end marker are closed by a stop token or eos (trained_spans)


def plan_stop_tokens(template: ResolvedTemplate | None) -> tuple[str, ...]:
    """The plan's stop tokens (resolved.json template.stop_tokens); none for a bundle without a template.

    The runtime adds the tokenizer's eos token to these wherever it generates (`stop_token_ids`)."""
    return () if template is None else tuple(template.stop_tokens)


@dataclass(frozen=True)
class ChatTemplate:
    """A bundle's chat template, ready to render: the training data and inference render with the same one."""

    text: str
    bos_token: str = ""
    eos_token: str = ""
    stop_tokens: tuple[str, ...] = ()
    render_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # The instant `strftime_now` reads (the plan's template.now); None: the live clock, as transformers renders
    now: str | None = None

    @classmethod
    def from_plan(
        cls, template: ResolvedTemplate | None, text: str, *, tokenizer_eos: str = ""
    ) -> ChatTemplate:
        """The template of a plan and its text; `eos_token` is the plan's, else the tokenizer's (a template
        taken from a tokenizer without a plan entry renders with that tokenizer's eos)."""
        if template is None:
            return cls(text, "", tokenizer_eos)
        return cls(
            text,
            template.bos_token,
            template.eos_token or tokenizer_eos,
            plan_stop_tokens(template),
            dict(template.render_kwargs),
            template.now,
        )

    def render(
        self, messages: list[dict], *, tools: list[dict] | None = None, add_generation_prompt: bool = False
    ) -> str:
        return render(self.text, messages, tools=tools, add_generation_prompt=add_generation_prompt,
                      bos_token=self.bos_token, eos_token=self.eos_token, **self._kwargs())  # fmt: skip

    def prompt(self, messages: list[dict], *, tools: list[dict] | None = None) -> str:
        """The conversation rendered up to the assistant's turn, exactly as the model was trained on it."""
        return self.render(messages, tools=tools, add_generation_prompt=True)

    def spans(self, messages: list[dict], tools: list[dict] | None = None) -> tuple[str, list[Span]]:
        """The text trained on and the char spans of its assistant turns, each closed by a stop token or eos
        (`trained_spans`: the rendered conversation, eos appended where the template ends turns with no token)."""
        return trained_spans(self.text, messages, tools=tools, bos_token=self.bos_token, eos_token=self.eos_token,
                             stop_tokens=self.stop_tokens, **self._kwargs())  # fmt: skip

    def _kwargs(self) -> dict[str, Any]:
        """The template's variables, with `strftime_now` bound to the plan's instant when it pins one (a context
        variable shadows the renderer's global, the live clock)."""
        kwargs = dict(self.render_kwargs)
        if self.now is not None:
            kwargs["strftime_now"] = PinnedClock(self.now)
        return kwargs

    def renders_reasoning(self) -> bool:
        """Whether the template writes a message's reasoning (elsewhere it would vanish from the text unseen)."""
        return "reasoning_content" in self.text
