"""The global batch a train split trains with: train.batch_size, made smaller for a split too small to give an epoch
MIN_STEPS_PER_EPOCH steps at it. On a 150-row table a batch of 64 is 2 steps an epoch, and 20 epochs are 40 steps:
too few to learn at the default learning rate, where a batch of 6 gives 320. Train, tune and compress all use it."""
from __future__ import annotations

import math
from dataclasses import replace

MIN_STEPS_PER_EPOCH = 16


def batch_size_for(configured: int, train_rows: int) -> int:
    return max(1, min(configured, train_rows // MIN_STEPS_PER_EPOCH))


def with_batch_for(cfg, train_rows: int, stage: str):
    """The stage's view with train.batch_size scaled to the train split (the view itself when it fits), said once."""
    batch = batch_size_for(cfg.train.batch_size, train_rows)
    if batch == cfg.train.batch_size:
        return cfg
    print(f"{stage}: at train.batch_size={cfg.train.batch_size} an epoch of the {train_rows} train rows would be "
          f"{math.ceil(train_rows / cfg.train.batch_size)} step(s); training at a global batch of {batch} instead, "
          f"{math.ceil(train_rows / batch)} steps an epoch")
    return replace(cfg, train=replace(cfg.train, batch_size=batch))
