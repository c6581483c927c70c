"""How an image file becomes the pixels a model sees: one function, used by ingest on the training data
and by the exported SavedModel on what clients send, so served predictions on raw image bytes equal
the training pipeline's.

An image folder holds one sub-folder per class (as Keras's image_dataset_from_directory reads it).
Every file is decoded (PNG, JPEG, GIF, BMP) and resized to `size` with bilinear interpolation, as
float32 values in [0, 255]; standardising them is the model's first layer, as for any feature.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp")


def decode_and_resize(encoded, size: tuple[int, int], channels: int):
    """A tf.string scalar holding an encoded image -> float32 [height, width, channels]."""
    import tensorflow as tf

    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    return tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear")


def stored_channels(encoded: bytes) -> int:
    """The channel count the file holds (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA); raises if it cannot be decoded."""
    import tensorflow as tf

    return int(tf.io.decode_image(encoded, channels=0, expand_animations=False).shape[-1])


def class_files(root: Path) -> dict[str, list[Path]]:
    """Image files per class sub-folder, both sorted; files with other extensions are not images and are left."""
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {c.name: sorted(f for f in c.rglob("*") if f.is_file() and f.suffix.lower() in EXTENSIONS)
            for c in classes}


def read_image_folders(root: Path, size: tuple[int, int], channels: int):
    """(pixels [rows, h*w*c], labels, row names, problems, encoded bytes per row), problems "" when the image
    is fine. An unreadable file, or one with another channel count, keeps its row with NaN pixels and the
    reason, for validate to set aside."""
    import tensorflow as tf

    files = class_files(root)
    n_values = size[0] * size[1] * channels
    pixels, labels, names, problems, encoded = [], [], [], [], []
    for label, paths in files.items():
        for path in paths:
            data = path.read_bytes()
            row = np.full(n_values, np.nan, np.float32)
            try:
                found = stored_channels(data)
                if found != channels:
                    problem = f"has {found} channel(s), expected {channels} (data.channels)"
                else:
                    row = decode_and_resize(tf.constant(data), size, channels).numpy().reshape(-1)
                    problem = ""
            except (tf.errors.InvalidArgumentError, ValueError) as e:
                problem = f"cannot be decoded as an image ({str(e).splitlines()[0][:120]})"
            pixels.append(row)
            labels.append(label)
            names.append(path.relative_to(root).as_posix())
            problems.append(problem)
            encoded.append(data)
    return (np.array(pixels, np.float32).reshape(-1, n_values), np.array(labels, str), np.array(names, str),
            np.array(problems, str), encoded)


def augmenter(input_shape: tuple[int, int, int], kinds: tuple[str, ...]):
    """A tf.data map function (flat pixels, label) -> the same, randomly flipped left-right and/or cropped (from the
    image padded by 4 pixels on each side): training sees shifted and mirrored variants, serving the image itself."""
    import tensorflow as tf

    height, width, channels = input_shape

    def augment(x, y):
        image = tf.reshape(x, input_shape)
        if "flip" in kinds:
            image = tf.image.random_flip_left_right(image)
        if "crop" in kinds:
            padded = tf.image.pad_to_bounding_box(image, 4, 4, height + 8, width + 8)
            image = tf.image.random_crop(padded, input_shape)
        return tf.reshape(image, [height * width * channels]), y

    return augment


def pack(blobs: list[bytes]) -> dict[str, np.ndarray]:
    """Byte strings as two arrays (contents, offsets): .npz without pickle, and no trailing bytes lost."""
    offsets = np.cumsum([0, *map(len, blobs)]).astype(np.int64)
    return {"data": np.frombuffer(b"".join(blobs), np.uint8), "offsets": offsets}


def unpack(arrays) -> list[bytes]:
    data, offsets = arrays["data"], arrays["offsets"]
    return [data[a:b].tobytes() for a, b in zip(offsets[:-1], offsets[1:])]
