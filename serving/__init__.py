"""Embedded model server compatible with TensorFlow Serving."""
