"""The engine: what every run goes through (one fold, cross-validation, detector sharing, sweeps, reproduction)."""
