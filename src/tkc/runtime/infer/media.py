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

Audio (a family with `model.multimodal.media.audios`, Qwen2-Audio): each `<audio>` is (samples, rate), resampled to
the feature extractor's rate, one window of log-mel features (input_features, feature_attention_mask), its token
count by the family's rule. PCM WAV is read with the standard library (read_wav); other formats need a decoder tkc
does not install. Videos are not here: Qwen2-VL's video processor needs torchvision, which tkc does not install.
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
from tkc.runtime.multimodal import read_wav, resample  # noqa: F401  (kept here for chat/serve; one copy)


class MediaEncoder:
    """A multimodal bundle's media encoding for prompts (see the module docstring)."""

    def __init__(self, mm: ResolvedMultimodal, model_dir: str, tokenizer: Any, model: Any, lock: Any = None):
        self.mm, self.model_dir, self.tok, self.model = mm, model_dir, tokenizer, model
        self.lock = lock or threading.Lock()  # the engine's: a fast tokenizer must not run in two threads
        self.images, self.audios = mm.media.get("images"), mm.media.get("audios")

    @classmethod
    def from_context(cls, ctx: RunContext, model: Any, lock: Any = None) -> MediaEncoder | None:
        """The bundle's encoder, or None for a text-only model."""
        mm = ctx.plan.model.multimodal
        return None if mm is None else cls(mm, ctx.model_path(), ctx.tokenizer(), model, lock)

    def encode(self, text: str, images: Sequence[Any] = (), audios: Sequence[Any] = ()) -> MediaIds:
        """`text` with its placeholders expanded, tokenized, and the media's model inputs (MediaIds)."""
        from tkc.runtime.multimodal import media_kwargs

        inputs: dict[str, Any] = {}
        for kind, items, encode in (("images", images, self._images), ("audios", audios, self._audios)):
            exp = self.mm.media.get(kind)
            if exp is None:
                if items:
                    raise ValueError(f"{self.mm.model_class} takes no {kind}")
                continue
            if count_placeholders(text, exp.placeholder) != len(items):
                raise ValueError(
                    f"the prompt has {count_placeholders(text, exp.placeholder)} {exp.placeholder} "
                    f"placeholders for {len(items)} {kind}"
                )
            if items:
                counts, tensors = encode(items)
                text = expand_placeholders(
                    text, exp.placeholder, [exp.prefix + exp.token * n + exp.suffix for n in counts]
                )
                inputs.update(tensors)
        with self.lock:
            ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError("an empty prompt: nothing to continue from")
        extra = media_kwargs(self.model, inputs, torch.tensor([ids]))
        inputs.update((k, v) for k, v in extra.items() if k not in inputs)
        return MediaIds(tuple(ids), inputs)

    def _images(self, images: Sequence[Any]) -> tuple[list[int], dict[str, Any]]:
        """Tokens per image as training counts them (tkc.runtime.data.media.token_count: the family's rule) and
        the image processor's tensors."""
        from tkc.runtime.data.media import token_count
        from tkc.runtime.multimodal import MEDIA_INPUTS, image_processor

        out = image_processor(self.model_dir)(images=list(images), return_tensors="pt")
        counts = [token_count(self.model_dir, self.mm, "images", im.height, im.width) for im in images]
        return counts, {k: out[k] for k in MEDIA_INPUTS if k in out}

    def _audios(self, audios: Sequence[Any]) -> tuple[list[int], dict[str, Any]]:
        """(samples, rate) pairs as training encodes them (tkc.runtime.multimodal.audio_inputs: one window of
        log-mel features each, tokens by the family's audio_frames rule)."""
        from tkc.runtime.multimodal import audio_inputs

        assert self.audios is not None
        if self.audios.count != "audio_frames":
            raise ValueError(f"tkc does not count audio tokens by rule {self.audios.count!r}")
        return audio_inputs(self.model_dir, list(audios))


def encode_media(encoder: MediaEncoder | None, prompt: Any, render: Any) -> MediaIds | None:
    """A MediaPrompt expanded and encoded (`render` applies the template), a MediaIds as is, None for a prompt
    without media; ValueError for images to a text-only model or mismatched counts."""
    if isinstance(prompt, MediaIds) or not isinstance(prompt, MediaPrompt):
        return prompt if isinstance(prompt, MediaIds) else None
    if encoder is None:
        raise ValueError("media not supported: this bundle's model is text-only")
    return encoder.encode(render(prompt), prompt.images, prompt.audios)


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


def read_media(
    ctx: RunContext, engine: Any, images: Sequence[Path], audios: Sequence[Path]
) -> dict[str, Any]:
    """`tkc chat --image/--audio`: the files (the user's own: any path), images bounded and decoded like training
    images, WAV audio read (read_wav), and the family's placeholders: ChatSession's keyword arguments. ValueError
    naming the file for a model or engine that takes no such media, or an unreadable, oversized or corrupt file."""
    media = getattr(engine, "media", None)
    out: dict[str, Any] = {}
    for kind, paths in (("images", images), ("audios", audios)):
        exp = None if media is None else media.mm.media.get(kind)
        if paths and exp is None:
            raise ValueError(
                f"this bundle's model takes no {kind} (a model without them, or an engine that does "
                "not read them: use --engine hf)"
            )
        if not paths or exp is None:
            continue
        if kind == "images":
            out.update(images=read_image_files(paths, media_limits(ctx)), placeholder=exp.placeholder)
            continue
        limits = media_limits(ctx)
        waves = []
        for path in paths:
            try:
                if Path(path).stat().st_size > limits.max_bytes:
                    raise ValueError(f"over the limit of {limits.max_bytes} bytes")
                waves.append(read_wav(Path(path).read_bytes()))
            except (OSError, ValueError) as e:
                raise ValueError(f"{path}: {getattr(e, 'strerror', None) or e}") from None
        out.update(audios=tuple(waves), audio_placeholder=exp.placeholder)
    return out
