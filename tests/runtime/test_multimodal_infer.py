"""Inference with images on a tiny random Qwen2-VL bundle: the BatchingEngine's MediaPrompt (the image reaches the
model: logits change with it, equal transformers' own generate(), batch mates unaffected), `tkc chat --image`, and
the infer stage on rows with images."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("mm_helpers", Path(__file__).parents[1] / "serve" / "mm_helpers.py")
assert _spec and _spec.loader
M = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(M)

pytestmark = pytest.mark.slow
GREEDY = {"max_new_tokens": 4, "logprobs": True, "top_logprobs": 3}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return M.build_bundle(tmp_path_factory.mktemp("mm_infer"))


@pytest.fixture(scope="module")
def engine(bundle):
    from tkc.runtime.infer import load_engine, open_context

    eng = load_engine(open_context(bundle), None)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def pictures(bundle):
    from PIL import Image

    folder = M.images_dir(bundle.parent / "src")
    return [Image.open(folder / f"{i}.jpg").convert("RGB") for i in (1, 2)]


def _logprobs(engine, prompt) -> list[float]:
    from tkc.runtime.infer.engine import SamplingParams

    return [t.logprob for t in engine.submit(prompt, SamplingParams(**GREEDY)).result()[0].logprobs]


def test_image_reaches_the_model_as_transformers_generate_sees_it(engine, pictures):
    import torch

    from tkc.runtime.data.media import token_count
    from tkc.runtime.infer.engine import MediaPrompt

    text = engine.render(M.QUESTION)
    encoded = engine.media.encode(text, pictures[:1])
    pads = list(encoded.ids).count(engine.tok.convert_tokens_to_ids("<|image_pad|>"))
    im = pictures[0]
    assert pads == token_count(engine.media.model_dir, engine.media.mm, "images", im.height, im.width) > 0
    assert {"pixel_values", "image_grid_thw", "mm_token_type_ids"} <= set(encoded.inputs)

    ours = _logprobs(engine, MediaPrompt(M.QUESTION, (im,)))
    ids = torch.tensor([list(encoded.ids)])
    out = engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **encoded.inputs,
                                max_new_tokens=4, do_sample=False, eos_token_id=None, output_scores=True,
                                return_dict_in_generate=True)
    chosen = out.sequences[0, ids.shape[1]:].tolist()
    theirs = [torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(out.scores, chosen, strict=True)]
    assert ours == pytest.approx(theirs, abs=1e-5)  # prefill with pixels, decode with the model's own positions

    other = _logprobs(engine, MediaPrompt(M.QUESTION, (pictures[1],)))
    blank = _logprobs(engine, M.QUESTION)  # the placeholder left as text: no pixels
    assert max(abs(a - b) for a, b in zip(ours, other, strict=True)) > 1e-4
    assert max(abs(a - b) for a, b in zip(ours, blank, strict=True)) > 1e-4


def test_requests_with_images_leave_their_batch_mates_unchanged(engine, pictures):
    from tkc.runtime.infer.engine import MediaPrompt, SamplingParams

    alone_text = _logprobs(engine, [{"role": "user", "content": "What is two plus two?"}])
    alone_image = _logprobs(engine, MediaPrompt(M.QUESTION, (pictures[0],)))
    params = SamplingParams(**GREEDY)
    handles = [engine.submit(MediaPrompt(M.QUESTION, (pictures[0],)), SamplingParams(**{**GREEDY, "n": 2})),
               engine.submit([{"role": "user", "content": "What is two plus two?"}], params),
               engine.submit(MediaPrompt(M.QUESTION, (pictures[0],)), params)]
    results = [h.result(timeout=120) for h in handles]
    assert [t.logprob for t in results[1][0].logprobs] == pytest.approx(alone_text, abs=1e-5)
    for choice in [*results[0], results[2][0]]:  # n=2 decodes two rows: the same values up to float rounding
        assert [t.logprob for t in choice.logprobs] == pytest.approx(alone_image, abs=1e-5)


def test_placeholders_and_images_must_match(engine, pictures):
    from tkc.runtime.infer.engine import MediaPrompt, SamplingParams
    from tkc.runtime.infer.media import encode_media

    with pytest.raises(ValueError, match="1 <image> placeholders for 2 images"):
        engine.submit(MediaPrompt(M.QUESTION, tuple(pictures)), SamplingParams())
    with pytest.raises(ValueError, match="text-only"):
        encode_media(None, MediaPrompt("hi <image>", (pictures[0],)), str)


def test_chat_session_sends_its_images_with_the_first_message(engine, pictures):
    from tkc.cli.chat import ChatSession
    from tkc.runtime.infer.engine import MediaPrompt

    with_image = ChatSession(engine, images=(pictures[0],), placeholder="<image>", max_new_tokens=3)
    convo = with_image.conversation("Who are they?")
    assert isinstance(convo, MediaPrompt) and convo.images == (pictures[0],)
    assert convo.prompt[-1] == {"role": "user", "content": "<image>Who are they?"}
    text_only = ChatSession(engine).conversation("Who are they?")
    assert engine.count_tokens(convo) > engine.count_tokens(text_only) + 1  # the image's tokens
    other = ChatSession(engine, images=(pictures[1],), placeholder="<image>").conversation("Who are they?")
    assert _logprobs(engine, convo) != _logprobs(engine, other)
    reply = "".join(with_image.reply("Who are they?"))
    assert with_image.history[0]["content"] == "Who are they?" and with_image.history[1]["content"] == reply
    follow = with_image.conversation("And now?")  # the image stays with the first message
    assert follow.prompt[0]["content"] == "<image>Who are they?" and follow.prompt[-1]["content"] == "And now?"


def _chat(bundle, *args, stdin: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "tkc.cli.main", "chat", str(bundle), "--max-new-tokens", "3",
                           *args], input=stdin, capture_output=True, text=True, env=env, timeout=300)


def test_tkc_chat_image_cli(bundle, tmp_path):
    image = M.images_dir(bundle.parent / "src") / "1.jpg"
    ok = _chat(bundle, "--image", str(image), "--show-prompt", stdin="Who are they?\n")
    assert ok.returncode == 0, ok.stderr
    shown, reply = ok.stdout.splitlines()
    assert "<image>Who are they?" in shown and reply is not None
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(image.read_bytes()[:200])
    bad = _chat(bundle, "--image", str(corrupt), stdin="hi\n")
    assert bad.returncode == 2 and "--image" in bad.stderr and "corrupt.jpg" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_infer_stage_feeds_rows_with_their_images(bundle, engine):
    from PIL import Image

    from tkc.runtime.infer.engine import MediaPrompt
    from tkc.runtime.run import run_bundle

    assert run_bundle(bundle) == 0
    rows = [json.loads(line) for line in (bundle / "outputs" / "pred" / "predictions.jsonl").read_text().splitlines()]
    demo = M.demo_rows()[:2]
    assert [r["images"] for r in rows] == [[f"data/{p}" for p in d["images"]] for d in demo]
    src = bundle.parent / "src"
    for r in rows:  # the prompt the model saw holds each image's tokens (a dropped image would not)
        pictures = tuple(Image.open(src / p).convert("RGB") for p in r["images"])
        assert r["prompt_tokens"] == engine.count_tokens(MediaPrompt(r["prompt"], pictures))
        assert r["prompt_tokens"] != engine.count_tokens(r["prompt"])  # the placeholders sent as text


# ---------------------------------------------------------------------- audio: a tiny Qwen2-Audio


@pytest.fixture(scope="module")
def audio_engine(tmp_path_factory):
    from tkc.runtime.infer import load_engine, open_context

    bundle = M.build_audio_bundle(tmp_path_factory.mktemp("mm_audio"))
    eng = load_engine(open_context(bundle), None)
    eng.bundle = bundle
    yield eng
    eng.close()


def test_audio_reaches_the_model_as_its_processor_and_generate_see_it(audio_engine):
    import torch
    from transformers import AutoProcessor

    from tkc.runtime.infer.engine import MediaPrompt
    from tkc.runtime.infer.media import read_wav

    eng = audio_engine
    tone, other = read_wav(M.wav_bytes(440)), read_wav(M.wav_bytes(1300, 0.3, rate=8000))  # 8 kHz: resampled
    question = [{"role": "user", "content": "<audio>What is this sound?"}]
    text = eng.render(question)
    encoded = eng.media.encode(text, (), (tone,))
    processor = AutoProcessor.from_pretrained(eng.media.model_dir)  # Qwen2-Audio's own expansion and features
    ref = processor(text=text.replace("<audio>", "".join(M.AUDIO_TOKENS)), audio=[tone[0]], sampling_rate=16000,
                    return_tensors="pt")
    assert list(encoded.ids) == ref["input_ids"][0].tolist()
    assert torch.equal(encoded.inputs["input_features"], ref["input_features"])

    ours = _logprobs(eng, MediaPrompt(question, audios=(tone,)))
    out = eng.model.generate(**ref, max_new_tokens=4, do_sample=False, eos_token_id=None, output_scores=True,
                             return_dict_in_generate=True)
    chosen = out.sequences[0, ref["input_ids"].shape[1]:].tolist()
    theirs = [torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(out.scores, chosen, strict=True)]
    assert ours == pytest.approx(theirs, abs=1e-5)
    assert max(abs(a - b) for a, b in zip(ours, _logprobs(eng, MediaPrompt(question, audios=(other,))),
                                          strict=True)) > 1e-5

    with pytest.raises(ValueError, match="takes no images"):
        eng.media.encode("<image>hi", (object(),))
    with pytest.raises(ValueError, match="longer than the model's 1 s window"):
        eng.media.encode("<audio>hi", (), ((tone[0].repeat(3), 16000),))
    with pytest.raises(ValueError, match="not a PCM WAV"):
        read_wav(b"RIFF....WAVEnope")


def test_chat_audio_cli(audio_engine, tmp_path):
    wav = tmp_path / "tone.wav"
    wav.write_bytes(M.wav_bytes(440))
    ok = _chat(audio_engine.bundle, "--audio", str(wav), "--show-prompt", stdin="What is it?\n")
    assert ok.returncode == 0, ok.stderr
    assert "<audio>What is it?" in ok.stdout.splitlines()[0]
    refused = _chat(audio_engine.bundle, "--image", str(wav), stdin="hi\n")  # this model takes no images
    assert refused.returncode == 2 and "takes no images" in refused.stderr
