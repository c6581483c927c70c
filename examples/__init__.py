"""Code a user brings: model builders and training steps named in a config (see pipeline/configs/custom_model.yaml)."""
