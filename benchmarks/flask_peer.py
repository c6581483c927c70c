"""The peer a tutorial would write: Flask, the SavedModel called per request, JSON via Flask.

MODEL_DIR names the SavedModel version directory. With PEER_MODE=naive the model is loaded on
every request (a common tutorial pattern), otherwise once per worker process.
Run: gunicorn -w 2 -b 127.0.0.1:PORT benchmarks.flask_peer:app
"""
import os

import numpy as np
import tensorflow as tf
from flask import Flask, jsonify, request

app = Flask(__name__)
MODEL_DIR = os.environ["MODEL_DIR"]
NAIVE = os.environ.get("PEER_MODE") == "naive"
_model = None if NAIVE else tf.saved_model.load(MODEL_DIR)


@app.post("/v1/models/<name>:predict")
def predict(name):
    model = tf.saved_model.load(MODEL_DIR) if NAIVE else _model
    x = np.asarray(request.get_json()["instances"], dtype=np.float32)
    outputs = model.signatures["serving_default"](x=tf.constant(x))
    return jsonify(predictions=next(iter(outputs.values())).numpy().tolist())
