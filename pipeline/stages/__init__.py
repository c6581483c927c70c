"""The stages, in run order. Adding a stage is adding a module and a line here.

A stage module has: `Config` (its config section's dataclass), `CONFIG` (the config sections it
reads: they and the seed are all it sees), `INPUTS` / `OUTPUTS` (artefact names; each output is a
directory of that name in the stage's output dir) and `run(cfg, inputs, out) -> dict` of metrics.
Optionally `external_inputs(cfg) -> [Path]`: files outside the pipeline it reads (for the cache key).
"""
from pipeline.stages import compress, evaluate, export, ingest, push, train, tune, validate

STAGES = {
    "ingest": ingest,
    "validate": validate,
    "tune": tune,
    "train": train,
    "evaluate": evaluate,
    "compress": compress,
    "export": export,
    "push": push,
}
