"""Write the example data sets the configs in pipeline/configs read, deterministically (they are committed):

  examples/data/shapes/<class>/<n>.png  images.yaml: coloured shapes, 32x32 RGB (CIFAR-10's shape), 4 classes
  examples/data/diabetes.csv            tabular_regression.yaml: scikit-learn's bundled diabetes data
  examples/data/topics.csv              text_rnn.yaml: short sentences about one of 4 topics
  examples/data/interactions.parquet    recommender.yaml: 500,000 clicks of 2,000 users on a catalogue of 130,000 items

python -m examples.make_data [--out examples/data]
"""
from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")
IMAGES_PER_CLASS = 150
SIZE = 32

TOPICS = {
    "sport": "match goal team score player coach league season win referee stadium ball",
    "weather": "rain sunny cloud storm wind forecast snow cold warm temperature fog humid",
    "cooking": "recipe oven flour sugar bake boil salt pepper onion garlic pan dinner",
    "travel": "flight hotel airport passport train ticket beach museum luggage tour map visa",
}
FILLER = "the a this that today we it was very really quite my our some after before with and then".split()
SENTENCES = 1200


def shapes(out: Path, rng: np.random.Generator) -> None:
    for shape in SHAPES:
        folder = out / shape
        folder.mkdir(parents=True)
        for i in range(IMAGES_PER_CLASS):
            background = tuple(int(v) for v in rng.integers(0, 120, 3))
            colour = tuple(int(v) for v in rng.integers(120, 256, 3))
            image = Image.new("RGB", (SIZE, SIZE), background)
            draw = ImageDraw.Draw(image)
            r = int(rng.integers(6, 12))
            cx, cy = (int(v) for v in rng.integers(r + 1, SIZE - r - 1, 2))
            if shape == "circle":
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
            elif shape == "square":
                draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
            elif shape == "triangle":
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
            else:
                w = max(2, r // 3)
                draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
                draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)
            noise = rng.normal(0, 8, (SIZE, SIZE, 3))
            pixels = np.clip(np.asarray(image, np.float64) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.png", optimize=True)


def diabetes(path: Path) -> None:
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*data.feature_names, "label"])
        writer.writerows([*(f"{v:.6f}" for v in row), int(label)] for row, label in zip(data.data, data.target))


def topics(path: Path, rng: np.random.Generator) -> None:
    """Each sentence: 2-4 words of its topic, 1 word of another topic, and filler, shuffled."""
    names = list(TOPICS)
    words = {name: TOPICS[name].split() for name in names}
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for _ in range(SENTENCES):
            topic = names[int(rng.integers(len(names)))]
            other = names[(names.index(topic) + int(rng.integers(1, len(names)))) % len(names)]
            sentence = [*rng.choice(words[topic], int(rng.integers(2, 5))), rng.choice(words[other]),
                        *rng.choice(FILLER, int(rng.integers(3, 7)))]
            rng.shuffle(sentence)
            writer.writerow([" ".join(sentence).capitalize() + ".", topic])


def interactions(path: Path, rng: np.random.Generator, users: int = 2000, items: int = 130_000,
                 rows: int = 500_000) -> None:
    """Who clicked what. Items are drawn as in real catalogues, a few popular and a long tail (a Zipf-like law),
    so the item table is large (one row per item seen: about 100,000) while most items are seen once or twice.
    A click depends on the user's own tendency, the item's appeal and how the user's and the item's 4 latent
    factors agree, plus noise: the user table, and the rows of items seen often, have something to learn."""
    import pyarrow
    import pyarrow.parquet

    tendency, user_factors = rng.normal(size=users), rng.normal(size=(users, 4))
    appeal, item_factors = rng.normal(size=items), rng.normal(size=(items, 4))
    popularity = 1 / (np.arange(items) + 50) ** 0.6
    user, item = rng.integers(users, size=rows), rng.choice(items, size=rows, p=popularity / popularity.sum())
    agreement = np.einsum("ij,ij->i", user_factors[user], item_factors[item])
    score = 1.5 * tendency[user] + appeal[item] + 0.5 * agreement + rng.normal(scale=0.5, size=rows)
    table = pyarrow.table({"user": [f"u{u}" for u in user], "item": [f"i{i}" for i in item],
                           "hour": np.round(rng.uniform(0, 24, size=rows), 1),
                           "label": np.where(score > 0, "click", "skip")})
    pyarrow.parquet.write_table(table, path, compression="zstd")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    out = parser.parse_args(argv).out
    shutil.rmtree(out / "shapes", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    shapes(out / "shapes", np.random.default_rng(0))
    diabetes(out / "diabetes.csv")
    topics(out / "topics.csv", np.random.default_rng(1))
    interactions(out / "interactions.parquet", np.random.default_rng(2))
    print(f"wrote {out}/shapes ({len(SHAPES)} x {IMAGES_PER_CLASS} images), diabetes.csv, topics.csv, "
          f"interactions.parquet")


if __name__ == "__main__":
    main()
