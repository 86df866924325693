"""Media columns at compile: MM001 (a model that cannot take them), MM002 (placeholders vs files, at file:line),
MM003 and PATH001 (the media-root battery: nothing outside the root is opened), media files hashed."""

from __future__ import annotations

import builtins
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from tkc.compiler.pipeline import compile_recipe
from tkc.schema.diagnostics import CompileError

REPO = Path(__file__).resolve().parents[2]
QWEN2_VL_CONFIG = {"model_type": "qwen2_vl", "architectures": ["Qwen2VLForConditionalGeneration"]}


def _setup(tmp_path: Path, records: list, *, config: dict | None = None, extra: str = "") -> Path:
    model = tmp_path / "model"
    if config is None:
        shutil.copytree(REPO / "recipes" / "assets" / "tiny-qwen2", model)
    else:
        model.mkdir()
        (model / "config.json").write_text(json.dumps(config), encoding="utf-8")
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "mm.json").write_text(json.dumps(records, indent=2), encoding="utf-8")
    (data / "img").mkdir(exist_ok=True)
    (data / "img" / "a.png").write_bytes(b"\x89PNG not really")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""name: mm
model: {{path: model}}
data:
  datasets:
    demo:
      path: data/mm.json
      format: openai
      columns: {{messages: messages, images: images}}
{extra}stages:
  - kind: sft
    datasets: [demo]
""", encoding="utf-8")
    return recipe


def _record(user: str, images: list) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": "ok"}],
            "images": images}


def _codes(recipe: Path) -> list:
    with pytest.raises(CompileError) as exc:
        compile_recipe(recipe)
    return exc.value.diagnostics


def test_media_columns_for_a_text_only_model_are_mm001_at_the_columns_key(tmp_path):
    diags = _codes(_setup(tmp_path, [_record("<image>hi", ["img/a.png"])]))
    assert [d.code for d in diags] == ["MM001"]
    assert diags[0].path == "data.datasets.demo.columns" and diags[0].line == 8
    assert "text-only" in diags[0].message and "qwen2" in diags[0].message


def test_multimodal_family_compiles_with_media_hashed_and_its_parts(tmp_path):
    compiled = compile_recipe(_setup(tmp_path, [_record("<image>hi", ["img/a.png"])], config=QWEN2_VL_CONFIG))
    ds = compiled.resolved["datasets"]["demo"]
    assert ds["media_root"] == "data"
    assert [f["path"] for f in ds["media_files"]] == ["data/img/a.png"]
    assert ds["media_files"][0]["size"] == len(b"\x89PNG not really")
    mm = compiled.resolved["model"]["multimodal"]
    assert mm["vision_tower"] == "model.visual" and mm["language_model"] == "model.language_model"
    assert mm["media"]["images"]["token"] == "<|image_pad|>"
    assert compiled.resolved["data"]["media"]["max_image_bytes"] > 0


def test_placeholder_count_mismatch_is_mm002_at_file_and_line(tmp_path):
    records = [_record("<image>fine", ["img/a.png"]), _record("no placeholder", ["img/a.png"]),
               _record("<image><image>", ["img/a.png"])]
    diags = _codes(_setup(tmp_path, records, config=QWEN2_VL_CONFIG))
    mm2 = [d for d in diags if d.code == "MM002"]
    assert [(d.file, d.line) for d in mm2] == [("data/mm.json", 17), ("data/mm.json", 32)]   # where each "{" is
    assert "0 <image> placeholders in the text but 1 images file" in mm2[0].message


def test_video_column_for_an_image_only_family_is_mm001(tmp_path):
    recipe = _setup(tmp_path, [_record("<image>hi", ["img/a.png"])],
                    config={"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"]})
    recipe.write_text(recipe.read_text().replace("images: images}", "images: images, videos: images}"))
    diags = _codes(recipe)
    assert any(d.code == "MM001" and "takes images, not videos" in d.message for d in diags)


@pytest.fixture
def no_open(monkeypatch):
    """Fails the test if anything opens a watched path (builtins.open, io.open, os.open)."""
    watched: set[str] = set()

    def guard(real):
        def wrapped(file, *a, **k):
            if isinstance(file, (str, os.PathLike)) and os.path.realpath(file) in watched:
                raise AssertionError(f"opened {file}")
            return real(file, *a, **k)
        return wrapped

    monkeypatch.setattr(builtins, "open", guard(builtins.open))
    monkeypatch.setattr(io, "open", guard(io.open))
    monkeypatch.setattr(os, "open", guard(os.open))
    return watched


def test_media_root_battery_refused_and_nothing_read(tmp_path, no_open):
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"secret")
    sibling = tmp_path / "data2"
    sibling.mkdir()
    (sibling / "s.png").write_bytes(b"sibling")
    recipe = _setup(tmp_path, [], config=QWEN2_VL_CONFIG, extra="  media:\n    max_image_bytes: 100\n")
    (tmp_path / "data" / "img" / "link.png").symlink_to(outside)
    (tmp_path / "data" / "img" / "big.png").write_bytes(b"x" * 101)
    refs = ["/etc/passwd", "../secret.png", "../data2/s.png", "img/link.png", "file:///etc/passwd",
            "http://127.0.0.1/a.png", "http://169.254.169.254/latest", "img/big.png", "img/missing.png"]
    records = [_record("<image>", [ref]) for ref in refs]
    (tmp_path / "data" / "mm.json").write_text(json.dumps(records, indent=2), encoding="utf-8")
    no_open.update(os.path.realpath(p) for p in ("/etc/passwd", outside, sibling / "s.png",
                                                  tmp_path / "data" / "img" / "big.png"))
    diags = [d for d in _codes(recipe) if d.code == "MM003"]
    assert len(diags) == len(refs)   # one diagnostic each (MAX_REPORTED is 10)
    text = "\n".join(d.message for d in diags)
    for expected in ("'/etc/passwd' resolves to /etc/passwd, outside the media root",
                     "'../secret.png' resolves to", "'../data2/s.png' resolves to", "'img/link.png' resolves to",
                     "'file:///etc/passwd' is a URL", "'http://127.0.0.1/a.png' is a URL",
                     "'http://169.254.169.254/latest' is a URL", "is 101 bytes, over data.media.max_image_bytes",
                     "'img/missing.png' does not exist"):
        assert expected in text, expected
    assert all(d.file == "data/mm.json" and d.line for d in diags)


def test_media_root_outside_the_read_roots_is_path001(tmp_path):
    recipe = _setup(tmp_path / "r", [_record("<image>", ["a.png"])] if (tmp_path / "r").mkdir() is None else [],
                    config=QWEN2_VL_CONFIG, extra="  media:\n    root: ../elsewhere\n")
    (tmp_path / "elsewhere").mkdir()
    diags = _codes(recipe)
    assert [d.code for d in diags] == ["PATH001"]
    assert diags[0].path == "data.media.root" and "media root" in diags[0].message


def test_mllm_demo_compiles_with_its_images_hashed(tmp_path, shared_datasets):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(QWEN2_VL_CONFIG), encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""name: mm
read_roots: [{shared_datasets}]
model: {{path: model}}
data:
  datasets:
    demo:
      path: {shared_datasets / "mllm_demo.json"}
      format: openai
      columns: {{messages: messages, images: images}}
stages:
  - kind: sft
    datasets: [demo]
""", encoding="utf-8")
    ds = compile_recipe(recipe).resolved["datasets"]["demo"]
    assert sorted(Path(f["path"]).name for f in ds["media_files"]) == ["1.jpg", "2.jpg", "3.jpg"]
    from tkc.bundle.canonical import sha256_file
    for f in ds["media_files"]:
        assert f["sha256"] == sha256_file((tmp_path / f["path"]).resolve())
