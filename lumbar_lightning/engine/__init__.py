"""The engine: what every run goes through (numerics, run layout, folds, cross-validation)."""
