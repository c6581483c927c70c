"""Compressed variants of a trained model and their measurement: what the compress stage uses.

Their names are config vocabulary, in pipeline.specs; the work is in the submodules: `variants` (TFMOT
pruning, clustering, QAT, distillation, fine-tuning), `tflite` (post-training quantization and running
.tflite files), `measure` (accuracy, sparsity, sizes, latency) and `summary` (the table and plot of a report).
"""
