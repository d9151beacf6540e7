"""Inference: the paper's chained ``Pipeline``, the fold ensemble that serves a finished run, and ``predict``."""
