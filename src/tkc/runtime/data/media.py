"""Media in the data pipeline: the bundle's media files verified, each record's references resolved by the one set
of path rules (tkc.bundle.media), images decoded within bounds, placeholders expanded to the family's token counts.

API
* `MediaIndex(entry, source_root)`: a dataset's media root and hashed files; `.verify()` refuses a changed or
  missing file (DataError) before anything is built; `.resolve(kind, refs) -> [absolute path]` refuses (BadRecord) a
  reference the rules refuse or the bundle did not record.
* `MediaTokens(model_dir, multimodal, max_bytes, max_pixels)`: `.expand(example)` replaces each placeholder in the
  example's turns (`<image>` ...) by the family's prefix + token x n + suffix, n from the model folder's image
  processor for that image's size (count `patches_merged`: get_number_of_image_patches // merge_size^2, as
  Qwen2-VL's processor computes it; `processor`: the processor's own `_get_num_multimodal_tokens`). Each image is
  decoded in full once (a corrupt, truncated or decompression-bomb image, or one over the bounds, is a BadRecord of
  its record). Image opening is `tkc.runtime.serve.media.open_image` (the same checks `tkc serve` applies).
* `token_count(...)` is the count for one (height, width).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from tkc.bundle.canonical import sha256_file
from tkc.bundle.media import MEDIA_KINDS, MediaRefused, expand_placeholders, resolve_media_path
from tkc.bundle.plan import ResolvedMultimodal
from tkc.runtime.data.errors import BadRecord, DataError


class MediaIndex:
    def __init__(self, entry: dict, source_root: Path):
        self.name, self.source_root = entry["name"], Path(source_root)
        self.root = self.source_root / entry["media_root"]
        self.files = {os.path.realpath(self.source_root / f["path"]): f for f in entry["media_files"]}

    def verify(self) -> None:
        for real, f in self.files.items():
            if not Path(real).is_file():
                raise DataError(f"dataset {self.name!r}: media file {f['path']} is missing under {self.source_root}")
            if sha256_file(Path(real)) != f["sha256"]:
                raise DataError(f"dataset {self.name!r}: media file {f['path']} changed since compile; recompile "
                                "the recipe")

    def resolve(self, kind: str, refs: Any) -> list[str]:
        refs = [refs] if isinstance(refs, str) else list(refs or [])
        out = []
        for ref in refs:
            try:
                real = str(resolve_media_path(ref, self.root))
            except MediaRefused as exc:
                raise BadRecord(str(exc), f"a {kind[:-1]} file under the media root") from None
            if real not in self.files:
                raise BadRecord(f"{kind[:-1]} {ref!r} is not among the media files the bundle recorded",
                                "the media the recipe was compiled with (recompile it)")
            out.append(real)
        return out


@functools.cache
def _image_processor(model_dir: str):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(model_dir)


@functools.cache
def _processor(model_dir: str, cls_name: str):
    """The family's processor class built from the folder's image processor, tokenizer and processor_config.json
    (not AutoProcessor: Qwen2-VL's would also build a video processor, which needs torchvision)."""
    import transformers
    from transformers import AutoTokenizer

    config = Path(model_dir) / "processor_config.json"
    kwargs = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
    kwargs.pop("processor_class", None)
    return getattr(transformers, cls_name)(image_processor=_image_processor(model_dir),
                                           tokenizer=AutoTokenizer.from_pretrained(model_dir), **kwargs)


def token_count(model_dir: str, mm: ResolvedMultimodal, kind: str, height: int, width: int) -> int:
    rule = mm.media[kind].count
    if rule == "patches_merged":
        ip = _image_processor(model_dir)
        return int(ip.get_number_of_image_patches(height, width, {}) // ip.merge_size**2)
    if rule == "processor":
        return int(_processor(model_dir, mm.processor)._get_num_multimodal_tokens(
            image_sizes=[(height, width)])["num_image_tokens"][0])
    raise DataError(f"tkc run does not count {kind} tokens by rule {rule!r} yet")


class MediaTokens:
    def __init__(self, model_dir: str | Path, mm: ResolvedMultimodal, max_bytes: int, max_pixels: int):
        self.model_dir, self.mm = str(model_dir), mm
        self.max_bytes, self.max_pixels = max_bytes, max_pixels
        self._runs: dict[tuple[str, str], str] = {}

    def run(self, kind: str, path: str) -> str:
        key = (kind, path)
        if key not in self._runs:
            e = self.mm.media[kind]
            if kind == "audios":
                n = self._audio_tokens(path, e.count)
            else:
                height, width = self._size(path)
                n = token_count(self.model_dir, self.mm, kind, height, width)
            self._runs[key] = e.prefix + e.token * n + e.suffix
        return self._runs[key]

    def _audio_tokens(self, path: str, rule: str) -> int:
        """Tokens for one audio file, as its features will be encoded (tkc.runtime.multimodal.audio_inputs: the
        one function training, chat and serve share); the file bounded in bytes and the model's window in seconds,
        a BadRecord of its record otherwise."""
        from tkc.bundle.media import MAX_AUDIO_BYTES
        from tkc.runtime.multimodal import audio_inputs, read_audio_file

        if rule != "audio_frames":
            raise DataError(f"tkc run does not count audios tokens by rule {rule!r} yet")
        try:
            return audio_inputs(self.model_dir, [read_audio_file(path, self.model_dir, MAX_AUDIO_BYTES)])[0][0]
        except (OSError, ValueError) as exc:
            raise BadRecord(str(exc), f"a PCM WAV file within {MAX_AUDIO_BYTES} bytes and the model's feature "
                            "window") from None

    def _size(self, path: str) -> tuple[int, int]:
        from tkc.runtime.serve.media import MediaLimits, open_image

        size = Path(path).stat().st_size
        try:
            if size > self.max_bytes:
                raise MediaRefused(f"{path}: {size} bytes, over data.media.max_image_bytes ({self.max_bytes}); "
                                   "not read")
            image = open_image(Path(path).read_bytes(), MediaLimits(self.max_bytes, self.max_pixels), what=path)
        except MediaRefused as exc:
            raise BadRecord(str(exc), f"an image within {self.max_bytes} bytes and {self.max_pixels} pixels that "
                            "decodes") from None
        return image.height, image.width

    def expand(self, example: dict) -> dict:
        """The example with every placeholder of a media kind it carries expanded (counts checked at compile)."""
        for kind in MEDIA_KINDS:
            paths = example.get(kind) or []
            if not paths:
                continue
            runs = [self.run(kind, p) for p in paths]
            ph = self.mm.media[kind].placeholder
            turns = [m for m in example["messages"]] + [t for t in (example.get("chosen"), example.get("rejected"))
                                                        if t]
            total = sum(str(m.get("content") or "").count(ph) for m in turns)
            if total != len(runs):
                raise BadRecord(f"{total} {ph} placeholders for {len(runs)} {kind}", f"one {ph} per {kind[:-1]}")
            k = 0
            for m in turns:
                n = str(m.get("content") or "").count(ph)
                if n:
                    m["content"] = expand_placeholders(m["content"], ph, runs[k:k + n])
                    k += n
        return example
