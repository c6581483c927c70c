"""Compressed variants of a trained model and their measurement: what the compress stage uses.

The names here are config vocabulary (cheap to import); the work is in the submodules:
`variants` (TFMOT pruning, clustering, QAT, distillation, fine-tuning), `tflite` (post-training
quantization and running .tflite files), `measure` (accuracy, sparsity, sizes, latency) and
`summary` (the table and plot of a report).
"""

VARIANTS = ("pruned", "qat", "pqat", "cluster", "distilled")
QUANTIZED = ("qat", "pqat")  # already quantization-aware: converted to int8 only
PTQ = ("float", "dynamic", "float16", "int8")  # post-training quantization kinds for .tflite
