"""`tkc serve` over a multimodal bundle (tiny random Qwen2-VL), driven by the openai client: image_url parts as data
URLs and as paths under the media root reach the model (its logits change with the image, its prompt counts the
image's tokens); URLs and paths the fetcher refuses are a 400 naming the message, and nothing is generated."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import openai
import pytest


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


H, M = _load("serve_helpers"), _load("mm_helpers")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mm_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mm_serve")
    bundle = M.build_bundle(root)
    s = H.Server(bundle, root, "--max-tokens", "8", key=False)
    s.images = M.images_dir(root / "src")
    yield s
    s.stop()


def _ask(server, image_url: str | None, text: str = "Who are they?", model: str = M.MODEL):
    parts = ([{"type": "image_url", "image_url": {"url": image_url}}] if image_url else []) + [
        {"type": "text", "text": text}]
    return server.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": parts}], max_tokens=3, temperature=0,
        logprobs=True, top_logprobs=2)


def _values(reply) -> list[float]:
    return [t.logprob for t in reply.choices[0].logprobs.content]


def test_image_url_data_url_reaches_the_model(mm_server):
    one = _ask(mm_server, M.data_url(mm_server.images / "1.jpg"))
    two = _ask(mm_server, M.data_url(mm_server.images / "2.jpg"))
    text = _ask(mm_server, None)
    assert one.choices[0].finish_reason in ("length", "stop")
    assert _values(one) != _values(two) and _values(one) != _values(text)
    assert one.usage.prompt_tokens > text.usage.prompt_tokens  # the image's own tokens are in the prompt
    same = _ask(mm_server, "mllm_demo_data/1.jpg")  # a path under the bundle's media root (the dataset's folder)
    assert _values(same) == pytest.approx(_values(one), abs=1e-6)
    assert same.usage.prompt_tokens == one.usage.prompt_tokens


@pytest.mark.parametrize("url, needle", [
    ("file:///etc/passwd", "scheme is refused"),
    ("/etc/passwd", "outside the media root"),
    ("../recipe.yaml", "outside the media root"),
    ("http://127.0.0.1/a.png", "remote image URLs are off"),
    ("http://169.254.169.254/latest/meta-data/", "remote image URLs are off"),
    ("data:image/png;base64,bm90IGFuIGltYWdl", "not a PNG/JPEG"),
])
def test_refused_image_urls_are_400(mm_server, url, needle):
    with pytest.raises(openai.BadRequestError) as e:
        _ask(mm_server, url)
    error = e.value.body
    assert "image_url refused" in error["message"] and needle in error["message"], error
    assert error["code"] == "invalid_image" and error["param"] == "messages[0].content"


def test_placeholder_count_and_image_limit(mm_server):
    with pytest.raises(openai.BadRequestError, match="2 <image> placeholders for 1 images"):
        _ask(mm_server, M.data_url(mm_server.images / "1.jpg"), text="<image> typed by hand")
    url = M.data_url(mm_server.images / "1.jpg")
    many = [{"type": "image_url", "image_url": {"url": url}}] * 9
    with pytest.raises(openai.BadRequestError, match="at most 8 per request"):
        mm_server.client().chat.completions.create(model=M.MODEL, max_tokens=2,
                                                   messages=[{"role": "user", "content": many}])


def test_input_audio_refused_by_a_vision_bundle(mm_server):
    part = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    with pytest.raises(openai.BadRequestError, match="media not supported"):
        mm_server.client().chat.completions.create(model=M.MODEL, max_tokens=2,
                                                   messages=[{"role": "user", "content": [part]}])


@pytest.fixture(scope="module")
def audio_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio_serve")
    s = H.Server(M.build_audio_bundle(root), root, "--max-tokens", "8", key=False)
    yield s
    s.stop()


def _hear(server, data: bytes, fmt: str = "wav"):
    import base64

    parts = [{"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}},
             {"type": "text", "text": "What is this sound?"}]
    return server.client().chat.completions.create(
        model=M.AUDIO_MODEL, messages=[{"role": "user", "content": parts}], max_tokens=3, temperature=0,
        logprobs=True)


def test_input_audio_reaches_the_model(audio_server):
    low, high = _hear(audio_server, M.wav_bytes(440)), _hear(audio_server, M.wav_bytes(1300))
    assert _values(low) != _values(high)
    text = audio_server.client().chat.completions.create(
        model=M.AUDIO_MODEL, messages=[{"role": "user", "content": "What is this sound?"}], max_tokens=3)
    assert low.usage.prompt_tokens > text.usage.prompt_tokens  # the audio's own tokens
    with pytest.raises(openai.BadRequestError, match="input_audio refused: format 'mp3' is not read"):
        _hear(audio_server, M.wav_bytes(440), fmt="mp3")
    with pytest.raises(openai.BadRequestError, match="input_audio refused: not a PCM WAV"):
        _hear(audio_server, b"definitely not a wav file")
    with pytest.raises(openai.BadRequestError, match="media not supported"):  # this model takes no images
        _ask(audio_server, M.data_url(Path(M.SHARED) / "mllm_demo_data" / "1.jpg"), model=M.AUDIO_MODEL)
