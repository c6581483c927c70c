"""Compressed variants of a trained model and their measurement: what the compress stage uses.

Their names are config vocabulary, in pipeline.specs; the work is in the submodules: `variants` (TFMOT
pruning, clustering, QAT, distillation, fine-tuning), `loading` (a saved model of any variant, TFMOT imported only
for one that holds its layers), `tflite` (post-training quantization and running
.tflite files), `measure` (accuracy, sparsity, sizes, latency) and `summary` (the table and plot of a report).
"""
