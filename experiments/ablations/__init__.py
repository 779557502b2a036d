"""Ablation sweeps: one file per family, each with get_config(arg), sweep() and local_sweep()."""
