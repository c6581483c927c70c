"""The stages, in run order. Adding a stage is adding a module and a line here.

A stage module has: `Config` (its config section's dataclass), `CONFIG` (the config fields it reads,
e.g. "train.epochs", or a whole section, "model"; they are its cache key), optionally `RUNTIME`
(fields it reads that do not change its output, e.g. "train.verbose"), `INPUTS` / `OUTPUTS`
(artefact names; each output is a directory of that name in the stage's output dir) and
`run(cfg, inputs, out) -> dict` of metrics, where `cfg` is a frozen view of exactly those fields.
Optionally `resolve(cfg) -> cfg` (make a field concrete before hashing) and
`external_inputs(cfg) -> [Path]` (files outside the pipeline it reads, for the cache key).
Stage modules import TensorFlow inside `run`, so reading and checking a config stays fast.
"""
from pipeline.stages import compress, evaluate, export, infra_validate, ingest, push, train, tune, validate

STAGES = {
    "ingest": ingest,
    "validate": validate,
    "tune": tune,
    "train": train,
    "evaluate": evaluate,
    "compress": compress,
    "export": export,
    "infra_validate": infra_validate,
    "push": push,
}
