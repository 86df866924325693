"""Training a vision-language model: its class, the rows' images as processor tensors, the model's media inputs,
and which parts train (the plan's freeze switches over the family's module paths; LoRA on the language model only).

Everything here reads the plan (`model.multimodal`: the family's class and module paths; a stage's
`finetuning.multimodal`: the switches); nothing branches on a model type.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tkc.bundle.plan import ResolvedMultimodal
from tkc.bundle.plan_stage import ResolvedFinetuning

MEDIA_INPUTS = ("pixel_values", "image_grid_thw")  # what the image processor gives that the model's forward takes


class _Loader:
    """A concrete transformers class with the Auto classes' from_config / from_pretrained (what tkc.runtime.model
    calls): a concrete class builds from a config with `_from_config`, and takes no trust_remote_code there."""

    def __init__(self, cls: type) -> None:
        self.cls = cls

    def from_config(self, config, *, trust_remote_code: bool = False, **kwargs):
        return self.cls._from_config(config, **kwargs)  # type: ignore[attr-defined]

    def from_pretrained(self, *args, **kwargs):
        return self.cls.from_pretrained(*args, **kwargs)  # type: ignore[attr-defined]


def model_class(mm: ResolvedMultimodal) -> _Loader:
    """The family's transformers class (e.g. Qwen2VLForConditionalGeneration), by its name in the plan."""
    import transformers

    cls = getattr(transformers, mm.model_class, None)
    if cls is None:
        raise RuntimeError(f"the installed transformers {transformers.__version__} has no {mm.model_class} "
                           "(the model family's multimodal.model_class)")
    return _Loader(cls)


@functools.cache
def image_processor(model_dir: str):
    """The model folder's image processor (preprocessor_config.json). Not AutoProcessor: Qwen2-VL's processor also
    builds a video processor, which needs torchvision; images need only this."""
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(model_dir)


def media_encoder(model_dir: Path | str, open_image: Callable[[str], Any]) -> Callable[[list[list[str]]], dict]:
    """rows' image path lists -> the image processor's tensors for all their images in row order (pixel_values,
    and image_grid_thw where the processor gives it); {} when the rows have no image. `open_image` reads one
    verified path (tkc's media module: bounds checked, decoded as RGB)."""
    processor = image_processor(str(model_dir))

    def encode(paths: list[list[str]]) -> dict:
        images = [open_image(p) for row in paths for p in row]
        if not images:
            return {}
        out = processor(images=images, return_tensors="pt")
        return {k: out[k] for k in MEDIA_INPUTS if k in out}

    return encode


_FORWARD_PARAMS: dict[type, frozenset[str]] = {}


def _forward_params(cls: Any) -> frozenset[str]:
    if cls not in _FORWARD_PARAMS:
        _FORWARD_PARAMS[cls] = frozenset(inspect.signature(cls.forward).parameters)
    return _FORWARD_PARAMS[cls]


def media_kwargs(model, batch: dict, input_ids: torch.Tensor) -> dict:
    """The forward's media inputs for a batch with images: its pixel tensors, and per-token modality ids
    (mm_token_type_ids: 1 image, 2 video) for a model that takes them (Qwen2-VL's multimodal RoPE)."""
    if "pixel_values" not in batch:
        return {}
    from tkc.runtime.attention import unwrap

    base = unwrap(model)
    out = {k: batch[k] for k in MEDIA_INPUTS if k in batch}
    if "mm_token_type_ids" in _forward_params(type(base)):
        config = base.config
        types = torch.zeros_like(input_ids)
        for value, attr in ((1, "image_token_id"), (2, "video_token_id")):
            token = getattr(config, attr, None)
            if token is not None:
                types = torch.where(input_ids == token, value, types)
        out["mm_token_type_ids"] = types
        if "position_ids" in batch and hasattr(getattr(base, "model", None), "get_rope_index"):
            out["position_ids"] = packed_rope_positions(base.model, input_ids, types, batch["position_ids"],
                                                        batch.get("image_grid_thw"))
    return out


def _segments(positions: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each sample in a packed row: its positions restart at 0 on every sample."""
    starts = (positions == 0).nonzero().squeeze(-1).tolist() + [len(positions)]
    return list(zip(starts[:-1], starts[1:], strict=True))


def packed_rope_positions(model, input_ids: torch.Tensor, types: torch.Tensor, positions: torch.Tensor,
                          grids: torch.Tensor | None) -> torch.Tensor:
    """Packed rows for a model with multimodal RoPE (its `get_rope_index`: Qwen2-VL's temporal/height/width
    positions): each sample's 3-row positions computed alone with its own images' grids (the batch's grids are in
    row order, so a sample's are the next as many as its image runs), behind the text positions as row 0, the
    [4, batch, seq] layout from which transformers builds the per-sample mask (text positions restarting at 0)."""
    rows, k = [], 0
    for b in range(input_ids.shape[0]):
        pieces = []
        for s, e in _segments(positions[b]):
            seg = types[b, s:e]
            n = int(((seg == 1) & (_previous(seg) != 1)).sum())  # image runs: an image token after a non-image
            thw = grids[k:k + n] if grids is not None and n else None
            k += n
            pieces.append(model.get_rope_index(input_ids[b:b + 1, s:e], mm_token_type_ids=seg[None],
                                               image_grid_thw=thw)[0][:, 0])
        rows.append(torch.cat(pieces, dim=1))
    return torch.cat([positions[None], torch.stack(rows, dim=1)], dim=0)


def _previous(seg: torch.Tensor) -> torch.Tensor:
    """The sequence shifted right by one (a 0 first): each token's predecessor type."""
    return torch.cat([seg.new_zeros(1), seg[:-1]])


def lora_targets(mm: ResolvedMultimodal, targets: tuple[str, ...]) -> str:
    """PEFT target_modules as one regex: the named linear layers inside the language model only (never the
    vision tower's or projector's layers of the same name)."""
    names = "|".join(re.escape(t) for t in targets)
    return rf"{re.escape(mm.language_model)}\..*\.({names})"


def lora_modules_to_save(mm: ResolvedMultimodal, ft: ResolvedFinetuning) -> list[str]:
    """Parts trained in full beside the adapter: the projector (unless frozen), the vision tower when unfrozen."""
    switches = ft.multimodal
    out = []
    if switches is not None and not switches.freeze_vision_tower and mm.vision_tower:
        out.append(mm.vision_tower)
    if switches is None or not switches.freeze_multi_modal_projector:
        out.append(mm.projector)
    return out


def apply_switches(model: nn.Module, mm: ResolvedMultimodal, ft: ResolvedFinetuning) -> None:
    """Full and freeze tuning: the vision tower, projector and language model (with its head) trained or frozen
    as the switches say (the projector after the tower: Qwen2-VL's merger sits inside its tower). Freeze tuning
    keeps its own choice of language-model layers unless the language model is frozen."""
    switches = ft.multimodal
    if switches is None:
        return
    parts: list[tuple[str | None, bool]] = [(mm.vision_tower, switches.freeze_vision_tower),
                                            (mm.projector, switches.freeze_multi_modal_projector)]
    if ft.method == "full" or switches.freeze_language_model:
        parts += [(mm.language_model, switches.freeze_language_model), (mm.lm_head, switches.freeze_language_model)]
    for path, frozen in parts:
        if path:
            model.get_submodule(path).requires_grad_(not frozen)


def image_reader(ctx) -> Callable[[str], Any]:
    """One row image path (verified under its media root when the rows were built) -> an RGB image, bounded in
    bytes (checked before reading) and pixels (from the header, before decoding) by the plan's data.media."""
    from tkc.runtime.serve.media import MediaLimits, MediaRefused, open_image

    media = ctx.plan.data.media
    limits = MediaLimits() if media is None else MediaLimits(max_bytes=media.max_image_bytes,
                                                             max_pixels=media.max_image_pixels)

    def read(path: str) -> Any:
        size = Path(path).stat().st_size
        if size > limits.max_bytes:
            raise MediaRefused(f"{path}: {size} bytes, over the limit of {limits.max_bytes}; not read")
        return open_image(Path(path).read_bytes(), limits, what=path)

    return read


def stage_media(ctx) -> Callable[[list[list[str]]], dict] | None:
    """The collate's media encoder for a vision-language model's stage (None for a text-only model)."""
    if ctx.plan.model.multimodal is None:
        return None
    return media_encoder(ctx.model_path(), image_reader(ctx))


def save_processor(ctx, folder: Path) -> None:
    """Beside a saved vision-language model: its image processor, so the folder loads as the model did."""
    if ctx.plan.model.multimodal is not None:
        image_processor(str(ctx.model_path())).save_pretrained(str(folder))
