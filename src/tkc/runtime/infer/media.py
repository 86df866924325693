"""Images in prompts at inference: a multimodal bundle's MediaPrompt expanded and encoded as training encodes it,
and how the batching engine runs such a request.

`MediaEncoder.encode(text, images)`: each `<image>` placeholder (the family's, `model.multimodal.media.images` in
the plan) becomes prefix + token x n + suffix, n counted for that image's size exactly as training counts it
(tkc.runtime.data.media.token_count, the family's rule), then the text is tokenized; the image processor's
tensors (tkc.runtime.multimodal: pixel_values, image_grid_thw) and per-token modality ids where the model takes
them (mm_token_type_ids) go with the ids (MediaIds). Placeholders and images must match in number (ValueError).

In the BatchingEngine a request with media is prefilled with its media inputs and then decodes ALONE (no other
request joins its batch until it finishes; its n choices share it): its rows are unpadded, so the model computes
its own positions from the cache (Qwen2-VL's multimodal RoPE keeps the offset its prefill computed; a text model
counts on from the cache length), and tkc never builds model-specific position ids.

What is not here: videos (Qwen2-VL's video processor needs torchvision, which tkc does not install) and audio.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tkc.bundle.media import count_placeholders, expand_placeholders
from tkc.bundle.plan import ResolvedMultimodal
from tkc.runtime.context import RunContext
from tkc.runtime.infer.engine import MediaIds, MediaPrompt


class MediaEncoder:
    """A multimodal bundle's image encoding for prompts (see the module docstring)."""

    def __init__(self, mm: ResolvedMultimodal, model_dir: str, tokenizer: Any, model: Any, lock: Any = None):
        self.mm, self.model_dir, self.tok, self.model = mm, model_dir, tokenizer, model
        self.lock = (
            lock or threading.Lock()
        )  # the engine's: a fast tokenizer must not run in two threads at once
        self.images = mm.media.get("images")

    @classmethod
    def from_context(cls, ctx: RunContext, model: Any, lock: Any = None) -> MediaEncoder | None:
        """The bundle's encoder, or None for a text-only model."""
        mm = ctx.plan.model.multimodal
        return None if mm is None else cls(mm, ctx.model_path(), ctx.tokenizer(), model, lock)

    def encode(self, text: str, images: Sequence[Any]) -> MediaIds:
        from tkc.runtime.multimodal import MEDIA_INPUTS, image_processor, media_kwargs

        if self.images is None:
            raise ValueError(f"{self.mm.model_class} takes no images")
        ph = self.images.placeholder
        if count_placeholders(text, ph) != len(images):
            raise ValueError(
                f"the prompt has {count_placeholders(text, ph)} {ph} placeholders for {len(images)} images"
            )
        inputs: dict[str, Any] = {}
        if images:
            out = image_processor(self.model_dir)(images=list(images), return_tensors="pt")
            runs = [
                self.images.prefix + self.images.token * n + self.images.suffix for n in self.counts(images)
            ]
            text = expand_placeholders(text, ph, runs)
            inputs = {k: out[k] for k in MEDIA_INPUTS if k in out}
        with self.lock:
            ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError("an empty prompt: nothing to continue from")
        inputs.update(
            (k, v)
            for k, v in media_kwargs(self.model, inputs, torch.tensor([ids])).items()
            if k not in inputs
        )
        return MediaIds(tuple(ids), inputs)

    def counts(self, images: Sequence[Any]) -> list[int]:
        """Tokens per image, as training counts them (tkc.runtime.data.media.token_count: the family's rule)."""
        from tkc.runtime.data.media import token_count

        return [token_count(self.model_dir, self.mm, "images", im.height, im.width) for im in images]


def encode_media(encoder: MediaEncoder | None, prompt: Any, render: Any) -> MediaIds | None:
    """A MediaPrompt expanded and encoded (`render` applies the template), a MediaIds as is, None for a prompt
    without media; ValueError for images to a text-only model or mismatched counts."""
    if isinstance(prompt, MediaIds) or not isinstance(prompt, MediaPrompt):
        return prompt if isinstance(prompt, MediaIds) else None
    if encoder is None:
        raise ValueError("media not supported: this bundle's model is text-only")
    return encoder.encode(render(prompt), prompt.images)


def prefill_inputs(media: MediaIds | None, model: Any) -> dict[str, Any]:
    """A request's media inputs on the model's device (floating tensors in its dtype), {} for text."""
    if media is None:
        return {}
    device, dtype = model.device, model.dtype
    return {
        k: v.to(device, dtype) if torch.is_floating_point(v) else v.to(device)
        for k, v in media.inputs.items()
    }


def runs_alone(media: MediaIds | None, running: Sequence[Any]) -> bool:
    """Whether a request must wait for an empty batch: it has media, or a request in the batch has."""
    return media is not None or any(getattr(r, "media", None) is not None for r in running)


def decode_positions(rows: Sequence[Any], mask: torch.Tensor, pos: torch.Tensor) -> dict[str, torch.Tensor]:
    """The decode step's mask and positions; none for a request with media (alone and unpadded: the model's
    own positions, see the module docstring)."""
    if rows and rows[0].req.media is not None:
        return {}
    return {"attention_mask": mask, "position_ids": pos}


def media_root(ctx: RunContext) -> Path | None:
    """Where `tkc serve` reads local image paths from: the recipe's data.media.root, else the one media root all
    media datasets share; None (no local paths) when there is none or several."""
    data = ctx.plan.data
    media = getattr(data, "media", None) if data is not None else None
    if media is not None and media.root:
        return ctx.source_root / media.root
    roots = {str(d.media_root) for d in ctx.plan.datasets.values() if getattr(d, "media_root", None)}
    return ctx.source_root / roots.pop() if len(roots) == 1 else None


def media_limits(ctx: RunContext) -> Any:
    """The recipe's image bounds (data.media), else tkc's defaults, as the serve fetcher's MediaLimits."""
    from tkc.runtime.serve.media import MediaLimits

    bounds = getattr(ctx.plan.data, "media", None) if ctx.plan.data is not None else None
    return MediaLimits() if bounds is None else MediaLimits(bounds.max_image_bytes, bounds.max_image_pixels)


def read_image_files(paths: Sequence[Path | str], limits: Any) -> tuple[Any, ...]:
    """Image files bounded (size before reading, pixels from the header) and decoded as RGB; ValueError naming
    the file otherwise."""
    from tkc.runtime.serve.media import open_image

    images = []
    for path in paths:
        try:
            size = Path(path).stat().st_size
            if size > limits.max_bytes:
                raise ValueError(f"{path}: {size} bytes, over the limit of {limits.max_bytes}")
            images.append(open_image(Path(path).read_bytes(), limits, str(path)))
        except OSError as e:
            raise ValueError(f"{path}: cannot read it ({e.strerror})") from None
    return tuple(images)


def media_prompts(ctx: RunContext, engine: Any, prompts: list[Any], images: list[list[str]]) -> list[Any]:
    """The infer stage's prompts: a row with images as a MediaPrompt (its files read and bounded like training
    images), others as they are; ValueError when rows have images and the engine takes none."""
    if not any(images):
        return prompts
    if getattr(engine, "media", None) is None:
        raise ValueError(
            "the stage's rows have images, but this engine takes none (a text-only model, or the vllm "
            "engine: use engine: hf)"
        )
    limits = media_limits(ctx)
    return [
        MediaPrompt(p, read_image_files(paths, limits)) if paths else p
        for p, paths in zip(prompts, images, strict=True)
    ]


def read_images(ctx: RunContext, engine: Any, paths: Sequence[Path]) -> dict[str, Any]:
    """`tkc chat --image`: the files (the user's own: any path) bounded and decoded like training images, and the
    family's placeholder: ChatSession's `images` and `placeholder`; ValueError for a text-only bundle or engine, or
    an unreadable, oversized or corrupt image."""
    media = getattr(engine, "media", None)
    if media is None or media.images is None:
        raise ValueError(
            "this bundle's model takes no images (a text-only model, or an engine without images: "
            "use --engine hf)"
        )
    return {"images": read_image_files(paths, media_limits(ctx)), "placeholder": media.images.placeholder}
