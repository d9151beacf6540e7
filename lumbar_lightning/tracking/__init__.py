"""Experiment tracking: W&B runs (offline by default) beside Lightning's own loggers; never a patient identifier."""
