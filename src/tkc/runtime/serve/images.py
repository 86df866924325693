"""The chat route's media: image_url parts read through the media fetcher (media.py), input_audio parts (base64
PCM WAV) decoded, both encoded with the bundle's processor, or the request refused with a 400 naming the message.

A bundle whose model takes no such media (a text-only one, or the vLLM engine, which takes none here) refuses
those parts before anything is read. Images are fetched in the thread pool (blocking I/O, bounded in bytes and time
by the fetcher), at most MAX_IMAGES media parts per request, before the request is admitted; the prompt is then
rendered with the family's placeholder where each part stood and encoded (MediaIds), so its token count, media
included, is checked against the context like any prompt's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tkc.runtime.context import RunContext
from tkc.runtime.serve.media import MediaFetcher, MediaPolicy, MediaRefused
from tkc.runtime.serve.protocol import TEXT_ONLY, ApiError, Message

MAX_IMAGES = 8  # per request


def media_fetcher(ctx: RunContext, hosts: tuple[str, ...]) -> MediaFetcher:
    """The bundle's fetcher: local paths under its media root, the recipe's image bounds, `hosts` allowed."""
    from tkc.runtime.infer.media import media_limits, media_root

    return MediaFetcher(MediaPolicy(media_root(ctx), tuple(hosts), media_limits(ctx)))


async def request_media(backend: Any, messages: list[Message]) -> tuple[list[Any], list[Any]]:
    """The images (image_url parts) and audios (input_audio parts: (samples, rate)) of a conversation, in order,
    or ApiError 400 naming the message."""
    from starlette.concurrency import run_in_threadpool

    refs = [(i, url) for i, m in enumerate(messages) for url in m.image_urls()]
    sounds = [(i, part) for i, m in enumerate(messages) for part in m.audio_parts()]
    if (refs and (backend.placeholder is None or backend.fetcher is None)) or (
            sounds and backend.audio_placeholder is None):
        raise ApiError(400, TEXT_ONLY, param="messages", code="unsupported")
    if len(refs) + len(sounds) > MAX_IMAGES:
        raise ApiError(400, f"messages: {len(refs) + len(sounds)} media parts; this server reads at most "
                            f"{MAX_IMAGES} per request", param="messages", code="too_many")
    images, audios = [], []
    for i, url in refs:
        try:
            images.append(await run_in_threadpool(backend.fetcher.image, url))
        except MediaRefused as e:
            raise ApiError(400, f"messages[{i}]: image_url refused: {e}", param=f"messages[{i}].content",
                           code="invalid_image") from None
    for i, part in sounds:
        try:
            audios.append(read_audio_part(part.data, part.format, backend.fetcher.limits.max_bytes))
        except ValueError as e:
            raise ApiError(400, f"messages[{i}]: input_audio refused: {e}", param=f"messages[{i}].content",
                           code="invalid_audio") from None
    return images, audios


def read_audio_part(data: str, fmt: str, max_bytes: int) -> tuple[Any, int]:
    """An input_audio part's (samples, rate): base64 of a PCM WAV file, at most `max_bytes` decoded."""
    import base64
    import binascii

    from tkc.runtime.infer.media import read_wav

    if fmt.lower() != "wav":
        raise ValueError(f"format {fmt!r} is not read (send wav: PCM WAV; other formats need a decoder tkc does "
                         "not install)")
    if len(data) > 4 * (max_bytes // 3 + 1):
        raise ValueError(f"over the limit of {max_bytes} bytes; not decoded")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"data is not valid base64 ({e})") from None
    return read_wav(raw)


async def encode_request(backend: Any, prompt: str, images: list[Any], audios: Sequence[Any] = ()) -> Any:
    """The rendered prompt with its media, encoded (MediaIds), or ApiError 400 (placeholders and media differ in
    number: a literal placeholder typed in a text part, say)."""
    from starlette.concurrency import run_in_threadpool

    try:
        return await run_in_threadpool(backend.media.encode, prompt, images, audios)
    except ValueError as e:
        raise ApiError(400, f"messages: {e}", param="messages", code="invalid_value") from None
