"""The chat route's images: a request's image_url parts read through the media fetcher (media.py) and encoded with
the bundle's processor, or the request refused with a 400 naming the message and the reason.

A text-only bundle (or the vLLM engine, which takes no images here) refuses image_url parts before anything is
read. Images are fetched in the thread pool (blocking I/O, bounded in bytes and time by the fetcher), at most
MAX_IMAGES per request, before the request is admitted; the prompt is then rendered with the family's placeholder
where each image part stood and encoded (MediaIds) so its token count, images included, is checked against the
context like any prompt's.
"""

from __future__ import annotations

from typing import Any

from tkc.runtime.context import RunContext
from tkc.runtime.serve.media import MediaFetcher, MediaPolicy, MediaRefused
from tkc.runtime.serve.protocol import TEXT_ONLY, ApiError, Message

MAX_IMAGES = 8  # per request


def media_fetcher(ctx: RunContext, hosts: tuple[str, ...]) -> MediaFetcher:
    """The bundle's fetcher: local paths under its media root, the recipe's image bounds, `hosts` allowed."""
    from tkc.runtime.infer.media import media_limits, media_root

    return MediaFetcher(MediaPolicy(media_root(ctx), tuple(hosts), media_limits(ctx)))


async def request_images(backend: Any, messages: list[Message]) -> list[Any]:
    """The images a conversation's image_url parts name, in order ([] when none), or ApiError 400."""
    from starlette.concurrency import run_in_threadpool

    refs = [(i, url) for i, m in enumerate(messages) for url in m.image_urls()]
    if not refs:
        return []
    if backend.placeholder is None or backend.fetcher is None:
        raise ApiError(400, TEXT_ONLY, param="messages", code="unsupported")
    if len(refs) > MAX_IMAGES:
        raise ApiError(400, f"messages: {len(refs)} images; this server reads at most {MAX_IMAGES} per request",
                       param="messages", code="too_many")
    images = []
    for i, url in refs:
        try:
            images.append(await run_in_threadpool(backend.fetcher.image, url))
        except MediaRefused as e:
            raise ApiError(400, f"messages[{i}]: image_url refused: {e}", param=f"messages[{i}].content",
                           code="invalid_image") from None
    return images


async def encode_request(backend: Any, prompt: str, images: list[Any]) -> Any:
    """The rendered prompt with its images, encoded (MediaIds), or ApiError 400 (placeholders and images differ in
    number: a literal placeholder typed in a text part, say)."""
    from starlette.concurrency import run_in_threadpool

    try:
        return await run_in_threadpool(backend.media.encode, prompt, images)
    except ValueError as e:
        raise ApiError(400, f"messages: {e}", param="messages", code="invalid_value") from None
