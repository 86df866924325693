"""Media rows at run time: placeholders expanded to the image processor's counts (tkc data inspect shows them),
a corrupt image and a decompression bomb are bad records at their file:line (on_bad_record)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

tiny_mm = pytest.importorskip("tkc.runtime.tiny_mm")
pytestmark = pytest.mark.slow   # ~13 s each: a tokenizer build, compile, inspect


def _bundle(tmp_path: Path, tkc, records: list, images: dict[str, bytes], on_bad: str = "error") -> Path:
    tiny_mm.build_tiny_qwen2_vl(tmp_path / "model")
    (tmp_path / "data").mkdir()
    for name, data in images.items():
        (tmp_path / "data" / name).write_bytes(data)
    (tmp_path / "data" / "mm.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""name: mm
model: {{path: model}}
data:
  datasets:
    demo:
      path: data/mm.jsonl
      format: openai
      on_bad_record: {on_bad}
      columns: {{messages: messages, images: images}}
stages:
  - kind: sft
    datasets: [demo]
""", encoding="utf-8")
    code, out, err = tkc("compile", recipe, "-o", tmp_path / "run")
    assert code == 0, out + err
    return tmp_path / "run"


def _png(w: int, h: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def _rec(user: str, image: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": "red"}],
            "images": [image]}


def test_inspect_shows_the_expanded_placeholders_and_the_trained_span(tmp_path, tkc):
    run = _bundle(tmp_path, tkc, [_rec("<image>What colour?", "a.png")], {"a.png": _png(120, 90)})
    from transformers import AutoImageProcessor

    ip = AutoImageProcessor.from_pretrained(tmp_path / "model")
    from PIL import Image

    grid = ip(images=[Image.new("RGB", (120, 90))], return_tensors="np")["image_grid_thw"][0]
    n = int(grid.prod()) // ip.merge_size**2
    code, out, err = tkc("data", "inspect", run)
    assert code == 0, out + err
    assert f"<|vision_start|><|image_pad|>×{n}<|vision_end|>What colour?" in out
    assert "⟦red<|im_end|>" in out


def test_corrupt_image_and_decompression_bomb_are_bad_records_at_their_line(tmp_path, tkc):
    import io

    from PIL import Image

    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, format="PNG")   # 400M pixels in a few kB
    records = [_rec("<image>a", "ok.png"), _rec("<image>b", "corrupt.png"), _rec("<image>c", "bomb.png")]
    run = _bundle(tmp_path, tkc, records, {"ok.png": _png(32, 32), "corrupt.png": b"\x89PNG\r\n\x1a\nbroken",
                                      "bomb.png": bomb.getvalue()}, on_bad="skip")
    code, out, err = tkc("data", "inspect", run)
    assert code == 0, out + err
    assert "1 converted, 2 skipped" in out
    assert "data/mm.jsonl:2:" in out and "corrupt.png: not a" in out  # not a (readable) PNG/JPEG/... image
    assert "data/mm.jsonl:3:" in out and "decompression bomb" in out
