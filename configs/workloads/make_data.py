"""Make the small data sets the workload examples train on, under a data root (default: the
current directory). Nothing is downloaded:

  images/<class>/<n>.png   a generated image folder: 4 classes of 32x32 RGB pictures (a coloured
                           square, disc, horizontal or vertical bars), each with noise
  texts.jsonl              short sentences labelled positive / negative, one JSON object a line

The char-GPT example reads configs/data/shakespeare.txt, which ships with the repository.

    python configs/workloads/make_data.py DATA_ROOT [--images-per-class 24] [--texts 240]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np

CLASSES = ("square", "disc", "hbars", "vbars")
_GOOD = ("a wonderful", "a delightful", "an excellent", "a lovely", "a brilliant", "a superb")
_BAD = ("a terrible", "an awful", "a dreadful", "a boring", "a dismal", "a poor")
_THINGS = ("film", "book", "meal", "concert", "journey", "game", "show", "evening")
_TAILS = ("from start to finish.", "and I would go again.", "for the whole family.", "all things considered.")


def make_images(root: Path, per_class: int = 24, size: int = 32, seed: int = 0) -> Path:
    """An ImageFolder tree of PNGs under root/images; returns that folder."""
    from PIL import Image  # the vision extra

    rng = np.random.default_rng(seed)
    folder = root / "images"
    yy, xx = np.mgrid[0:size, 0:size]
    for label in CLASSES:
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            colour = rng.uniform(0.4, 1.0, size=3)
            c = rng.integers(size // 3, 2 * size // 3, size=2)
            r = int(rng.integers(size // 6, size // 3))
            if label == "square":
                mask = (abs(yy - c[0]) < r) & (abs(xx - c[1]) < r)
            elif label == "disc":
                mask = (yy - c[0]) ** 2 + (xx - c[1]) ** 2 < r * r
            elif label == "hbars":
                mask = (yy // 4) % 2 == 0
            else:
                mask = (xx // 4) % 2 == 0
            img = rng.uniform(0.0, 0.3, size=(size, size, 3))
            img[mask] = colour
            Image.fromarray((img * 255).astype(np.uint8)).save(folder / label / f"{i:04d}.png")
    return folder


def make_texts(root: Path, n: int = 240, seed: int = 0) -> Path:
    """root/texts.jsonl: {"text": ..., "label": "positive" | "negative"} lines; returns the file."""
    rng = random.Random(seed)
    path = root / "texts.jsonl"
    root.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for _ in range(n):
            good = rng.random() < 0.5
            text = f"It was {rng.choice(_GOOD if good else _BAD)} {rng.choice(_THINGS)} {rng.choice(_TAILS)}"
            f.write(json.dumps({"text": text, "label": "positive" if good else "negative"}) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=".")
    parser.add_argument("--images-per-class", type=int, default=24)
    parser.add_argument("--texts", type=int, default=240)
    args = parser.parse_args()
    root = Path(args.root)
    print(make_images(root, args.images_per_class))
    print(make_texts(root, args.texts))


if __name__ == "__main__":
    main()
