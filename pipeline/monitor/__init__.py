"""The monitoring loop's offline half: what the served model was asked, compared with what it was trained on.

The server logs requests as TF Serving's PredictionLog TFRecords (serving: `logging_config`); `python -m
pipeline.monitor` reads them: `drift` compares their per-feature statistics with the training statistics the version
ships (tensorflow_metadata protos, TFDV's distances), `export` turns them into a CSV to label and train on.
"""
