"""Write recipes/data/shapes.json and its three images (recipes/data/shapes/*.png): the tiny VLM recipe's data.

Each record asks about one image in an openai-style conversation (role/content messages); the answer names the shape's colour, so the
loss can only fall below the text-only level through the pixels. Same bytes every time (PIL, no randomness).
Run: python scripts/make_tiny_vlm_data.py
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parents[1] / "recipes" / "data"
SHAPES = {"red": ((220, 30, 30), "square"), "green": ((30, 180, 60), "circle"), "blue": ((40, 60, 220), "triangle")}
QUESTIONS = ["<image>What colour is the shape?", "What is in the picture?<image>", "<image>Describe the image."]


def draw(colour: tuple[int, int, int], shape: str) -> Image.Image:
    im = Image.new("RGB", (56, 56), (250, 250, 250))
    d = ImageDraw.Draw(im)
    box = (10, 10, 46, 46)
    if shape == "square":
        d.rectangle(box, fill=colour)
    elif shape == "circle":
        d.ellipse(box, fill=colour)
    else:
        d.polygon([(28, 8), (48, 48), (8, 48)], fill=colour)
    return im


def main() -> None:
    (OUT / "shapes").mkdir(parents=True, exist_ok=True)
    records = []
    for name, (colour, shape) in SHAPES.items():
        draw(colour, shape).save(OUT / "shapes" / f"{name}.png", optimize=False)
        for q in QUESTIONS:
            records.append({"messages": [{"role": "user", "content": q},
                                         {"role": "assistant", "content": f"A {name} {shape}."}],
                            "images": [f"shapes/{name}.png"]})
    (OUT / "shapes.json").write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
