"""Experiment configs (ml_collections): `get_config(arg)` and `sweep()` per family."""
