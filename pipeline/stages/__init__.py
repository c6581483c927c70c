"""The stages, in run order. Adding a stage is adding a module, its spec and a line here.

A stage module is the executor of a spec (TFX's split): `SPEC`, its `pipeline.specs.StageSpec` (the config
fields it reads, which are its cache key, those it reads without their changing its output, its input and
output artefacts), and `run(cfg, inputs, out) -> dict` of metrics, where `cfg` is its view
(`pipeline.views.TrainView`, ...: exactly the declared fields) and `inputs` a `pipeline.artifacts.Inputs`
(input artefacts by name, and the run they belong to). Optionally `resolve(cfg) -> cfg` (make a field concrete
before hashing), `external_inputs(cfg) -> [Path]` (files outside the pipeline it reads, for the cache key) and,
for a stage that changes the world, `check_cached(cfg, metrics) -> reason | None` (its cached result no longer
holds: it runs again). Stage modules import TensorFlow inside `run`, so reading and checking a config stays fast.
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
