"""Training helpers the train and tune stages use: strategies, the local launcher, the fit loop,
Kubernetes manifests, the keras-tuner alias. Importing this package is cheap: no TensorFlow."""
from typing import Literal

Strategy = Literal["default", "mirrored", "multi_worker", "parameter_server"]
