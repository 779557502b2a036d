"""Shared pieces of the experiment configs: the paper's recipe as ConfigDict sections.

Every config file in this folder defines `get_config(arg) -> ml_collections.ConfigDict` and
`sweep() -> list[dict]` (dotted overrides); scripts/train.py runs one:

    python scripts/train.py --config experiments/stage2_video.py:s --workdir gs://.../run
"""

from __future__ import annotations

import ml_collections

VARIANTS = {"s": "efficienttam_s", "ti": "efficienttam_ti", "s_1": "efficienttam_s_1",
            "ti_1": "efficienttam_ti_1", "s_512": "efficienttam_s_512x512",
            "ti_512": "efficienttam_ti_512x512"}


def variant(arg: str) -> str:
    """Config argument -> model variant name ("s", "ti", ... or a full variant name)."""
    arg = arg or "s"
    return VARIANTS.get(arg, arg)


def base(model_variant: str) -> ml_collections.ConfigDict:
    """Defaults shared by every run: bf16 compute, remat, FSDP, the SAM 2 prompt / loss values
    (PromptConfig / LossConfig defaults), checkpoints every 1000 steps."""
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(
        {"variant": model_variant, "compute_dtype": "bfloat16", "remat": "dots",
         "overrides": []})  # (dotted key, value) pairs: ConfigDict keys cannot hold dots
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
    c.sharding_preset = "fsdp"
    c.multihost = False
    c.prompts = ml_collections.ConfigDict()  # PromptConfig fields; empty = SAM 2's values
    c.losses = ml_collections.ConfigDict()  # LossConfig fields; empty = SAM 2's values
    c.resume = None
    c.init_from = None
    c.train = ml_collections.ConfigDict(
        {"seed": 0, "num_steps": 1000, "log_every": 50, "checkpoint_every": 1000,
         "keep_last": 3, "keep_every": 10_000, "eval_every": 0, "cond_capacity": 2,
         "remat_frames": False, "dropout": True, "async_checkpoints": True})
    return c


def data(sources: list[dict], seed: int = 0, num_workers: int = 16) -> ml_collections.ConfigDict:
    """`sources`: [{name, data_dir, batch_size (per host), weight}] of prepared datasets."""
    return ml_collections.ConfigDict(
        {"sources": sources, "seed": seed, "num_workers": num_workers, "num_threads": 16,
         "prefetch_buffer_size": 4, "clip": {"num_frames": 8, "max_objects": 3},
         "image": {"max_masks": 64}})
