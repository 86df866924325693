"""Training a multimodal model: its class, the rows' images (image processor) and audios (feature extractor:
audio_inputs, shared with chat and serve) as model inputs, packed rows' per-sample positions, and which parts train
(the plan's freeze switches over the family's module paths; LoRA on the language model only).

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
AUDIO_INPUTS = ("input_features", "feature_attention_mask")  # what the feature extractor gives (Qwen2-Audio)


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


def media_encoder(model_dir: Path | str, open_image: Callable[[str], Any],
                  open_audio: Callable[[str], Any] | None = None) -> Callable[..., dict]:
    """rows' media path lists -> the model's media tensors for all their files in row order: images through the
    image processor (pixel_values, and image_grid_thw where it gives them), audios (kind="audios", with
    `open_audio`: one verified path -> (samples, rate)) through the feature extractor (audio_inputs); {} when the
    rows have none. `open_image` reads one verified path (tkc's media module: bounds checked, decoded as RGB)."""

    def encode(paths: list[list[str]], kind: str = "images") -> dict:
        files = [p for row in paths for p in row]
        if not files:
            return {}
        if kind == "audios":
            if open_audio is None:
                raise RuntimeError("this model takes no audios")
            return audio_inputs(str(model_dir), [open_audio(p) for p in files])[1]
        out = image_processor(str(model_dir))(images=[open_image(p) for p in files], return_tensors="pt")
        return {k: out[k] for k in MEDIA_INPUTS if k in out}

    return encode


@functools.cache
def feature_extractor(model_dir: str) -> Any:
    """The model folder's audio feature extractor (preprocessor_config.json: Whisper's log-mel for Qwen2-Audio)."""
    from transformers import AutoFeatureExtractor

    return AutoFeatureExtractor.from_pretrained(model_dir)


def resample(samples: Any, rate: int, target: int) -> Any:
    """A mono float32 waveform at `target` Hz (linear interpolation; none when the rates agree)."""
    import numpy as np

    samples = np.asarray(samples, dtype=np.float32)
    if rate == target or len(samples) == 0:
        return samples
    n = max(1, round(len(samples) * target / rate))
    return np.interp(np.arange(n) * (rate / target), np.arange(len(samples)), samples).astype(np.float32)


def audio_inputs(model_dir: str, audios: list[tuple[Any, int]]) -> tuple[list[int], dict[str, Any]]:
    """(samples, rate) pairs -> (tokens per audio, the model's audio inputs), as training, chat and serve encode
    them: resampled to the feature extractor's rate, one window of log-mel features each, padded
    (input_features, feature_attention_mask); tokens by the audio_frames rule (Qwen2-Audio's encoder halves the L
    real feature frames twice: (((L - 1) // 2 + 1) - 2) // 2 + 1, as Qwen2AudioProcessor counts them). ValueError
    for an audio longer than the window (the extractor would cut it silently)."""
    fe = feature_extractor(model_dir)
    waves = [resample(samples, rate, fe.sampling_rate) for samples, rate in audios]
    if any(len(w) > fe.n_samples for w in waves):
        raise ValueError(f"an audio is longer than the model's {fe.chunk_length} s window")
    out = fe(waves, sampling_rate=fe.sampling_rate, return_attention_mask=True, padding="max_length",
             return_tensors="pt")
    mask = out["attention_mask"]
    counts = [(((int(n) - 1) // 2 + 1) - 2) // 2 + 1 for n in mask.sum(-1)]
    return counts, {"input_features": out["input_features"], "feature_attention_mask": mask}


def read_wav(data: bytes, max_seconds: float = 30.0) -> tuple[Any, int]:
    """(mono float32 samples in [-1, 1], rate) of a PCM WAV file (8/16/32-bit integers), at most `max_seconds`
    long (checked from the header, before the samples are read); ValueError otherwise (other formats need a
    decoder tkc does not install)."""
    import io
    import wave

    import numpy as np

    try:
        with wave.open(io.BytesIO(data)) as w:
            width, channels, rate, frames = w.getsampwidth(), w.getnchannels(), w.getframerate(), w.getnframes()
            if frames > max_seconds * rate:
                raise ValueError(f"{frames / rate:.1f} s of audio, over the limit of {max_seconds:g} s")
            raw = w.readframes(frames)
    except (wave.Error, EOFError) as e:
        raise ValueError(f"not a PCM WAV file ({e})") from None
    kinds = {1: (np.uint8, 128.0, 128.0), 2: (np.int16, 0.0, 32768.0), 4: (np.int32, 0.0, 2147483648.0)}
    if width not in kinds:
        raise ValueError(f"{8 * width}-bit WAV samples are not read (8, 16 or 32-bit PCM)")
    dtype, zero, scale = kinds[width]
    samples = (np.frombuffer(raw, dtype=dtype).astype(np.float32) - zero) / scale
    return samples.reshape(-1, channels).mean(axis=1), rate


def read_audio_file(path: str, model_dir: str, max_bytes: int) -> tuple[Any, int]:
    """One verified audio path -> (samples, rate): at most `max_bytes` (stat, before reading) and at most the
    model's feature window in seconds (the WAV header, before the samples); ValueError naming the file."""
    size = Path(path).stat().st_size
    if size > max_bytes:
        raise ValueError(f"{path}: {size} bytes, over the limit of {max_bytes}; not read")
    try:
        return read_wav(Path(path).read_bytes(), max_seconds=feature_extractor(model_dir).chunk_length)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


_FORWARD_PARAMS: dict[type, frozenset[str]] = {}


def _forward_params(cls: Any) -> frozenset[str]:
    if cls not in _FORWARD_PARAMS:
        _FORWARD_PARAMS[cls] = frozenset(inspect.signature(cls.forward).parameters)
    return _FORWARD_PARAMS[cls]


def media_kwargs(model, batch: dict, input_ids: torch.Tensor) -> dict:
    """The forward's media inputs for a batch with media: its pixel tensors, and per-token modality ids
    (mm_token_type_ids: 1 image, 2 video) for a model that takes them (Qwen2-VL's multimodal RoPE); its audio
    features."""
    out = {k: batch[k] for k in AUDIO_INPUTS if k in batch}
    if "pixel_values" not in batch:
        return out
    from tkc.runtime.attention import unwrap

    base = unwrap(model)
    out.update({k: batch[k] for k in MEDIA_INPUTS if k in batch})
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


def stage_media(ctx) -> Callable[..., dict] | None:
    """The collate's media encoder for a multimodal model's stage (None for a text-only model)."""
    if ctx.plan.model.multimodal is None:
        return None
    from tkc.bundle.media import MAX_AUDIO_BYTES

    model_dir = str(ctx.model_path())
    return media_encoder(model_dir, image_reader(ctx), lambda p: read_audio_file(p, model_dir, MAX_AUDIO_BYTES))


def save_processor(ctx, folder: Path) -> None:
    """Beside a saved multimodal model: its image processor or audio feature extractor (whichever the family
    takes), so the folder loads as the model did."""
    mm = ctx.plan.model.multimodal
    if mm is not None:
        load = feature_extractor if "audios" in mm.media and "images" not in mm.media else image_processor
        load(str(ctx.model_path())).save_pretrained(str(folder))
