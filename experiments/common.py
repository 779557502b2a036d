"""Shared pieces of the experiment configs: the paper's recipe as ConfigDict sections.

Every config file in this folder defines `get_config(arg) -> ml_collections.ConfigDict` and
`sweep() -> list[dict]` (dotted overrides, applied by `apply`); scripts/train.py runs one,
scripts/sweep.py runs a sweep:

    python scripts/train.py --config experiments/stage2_video.py:s --workdir /mnt/ckpt/run
    python scripts/sweep.py run --config experiments/ablations/memory_pooling.py --root DIR

Dotted keys: `optimizer.lr`, `data.sources.0.data_dir` (list index), and `model.<field path of
the model config>` (e.g. `model.num_maskmem`, `model.memory_attention.cross_attention.
pool_window`), which becomes a (field path, value) pair of `model.overrides` because ConfigDict
keys cannot hold dots. `local(config)` is any config cut to a CPU run on synthetic data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

VARIANTS = {"s": "efficienttam_s", "ti": "efficienttam_ti", "s_1": "efficienttam_s_1",
            "ti_1": "efficienttam_ti_1", "s_2": "efficienttam_s_2", "ti_2": "efficienttam_ti_2",
            "s_512": "efficienttam_s_512x512", "ti_512": "efficienttam_ti_512x512"}


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
    # held-out set the sweep evaluates each run on (scripts/evaluate.py run --format ...)
    c.eval = ml_collections.ConfigDict({"data_dir": "/data/sav_val", "format": "sav",
                                        "max_videos": None})
    c.train = ml_collections.ConfigDict(
        {"seed": 0, "num_steps": 1000, "log_every": 50, "checkpoint_every": 1000,
         "keep_last": 3, "keep_every": 10_000, "eval_every": 0, "cond_capacity": 2,
         "remat_frames": False, "memory_segments": 0, "dropout": True,
         "async_checkpoints": True})
    return c


def data(sources: list[dict], seed: int = 0, num_workers: int = 16) -> ml_collections.ConfigDict:
    """`sources`: [{name, data_dir, batch_size (per host), weight}] of prepared datasets.
    Optional `video_aug`: AugmentConfig fields (input_pipeline/augment.py) replacing SAM 2's
    video recipe, e.g. {"degrees": 0.0, "shear": 0.0}; the resolution is the model's."""
    return ml_collections.ConfigDict(
        {"sources": sources, "seed": seed, "num_workers": num_workers, "num_threads": 16,
         "prefetch_buffer_size": 4, "clip": {"num_frames": 8, "max_objects": 3},
         "image": {"max_masks": 64}})


# keys of the `model` section itself; any other `model.X` key is a model-config field path
MODEL_SECTION_KEYS = ("variant", "compute_dtype", "remat", "overrides")


def set_value(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    """Set one dotted key (see the module docstring); KeyError naming the key when a section
    on its path does not exist."""
    head, _, rest = key.partition(".")
    if head == "model" and rest and rest.split(".")[0] not in MODEL_SECTION_KEYS:
        pairs = [(k, v) for k, v in (config.model.get("overrides") or []) if k != rest]
        config.model.overrides = [*pairs, (rest, value)]
        return
    *parents, last = key.split(".")
    node = config
    for i, part in enumerate(parents):
        try:
            node = node[int(part)] if isinstance(node, list | tuple) else node[part]
        except (KeyError, IndexError, ValueError, AttributeError):
            raise KeyError(f"config override {key!r}: no section "
                           f"{'.'.join(parents[:i + 1])!r}") from None
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def apply(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]):
    """Apply {dotted key: value} (a `sweep()` entry) in order; returns the config."""
    for key, value in overrides.items():
        set_value(config, key, value)
    return config


# sweep.py --local writes the synthetic data here (SA-V train tars -> TFDS, held-out videos)
LOCAL_DATA = "/tmp/tam_jax_local"
# memory fields a released variant's config carries into its local (tiny) cut
_PORTABLE_MODEL_FIELDS = ("memory_attention.cross_attention.", "num_maskmem",
                          "max_obj_ptrs_in_encoder", "use_obj_ptrs_in_encoder")


def local(config: ml_collections.ConfigDict, data_root: str = LOCAL_DATA):
    """The same recipe cut to this CPU: a minute-scale run on synthetic SA-V.

    - model: the `tiny` variant (ViT 32 wide, 4 blocks, 128 px) with the source variant's
      memory-attention choices (pool window, log-area constant, pointer pooling) and its
      portable overrides (memory length, pointers); float32, no remat, convolutions as
      matmuls (fast on XLA:CPU);
    - data: synthetic SA-V at `<data_root>/tfds` (every source), 3-frame clips of <= 2 objects,
      batch 2, no worker processes; evaluation on `<data_root>/raw/sav_val`, 4 videos;
    - recipe: the source optimiser (AdamW, its weight decay, layer decay, schedule shape) at
      lr 1e-3 over 40 steps, GT-mask prompts only (one compile), data parallel over the
      devices there are (one CPU device; sweep.py's local runs drop a fake device count);
    - init_from / resume cleared (they point at pod storage).
    """
    from tam_jax import configs as model_configs

    c = ml_collections.ConfigDict(config.to_dict())
    source = model_configs.get_config(c.model.variant)
    ca = source.memory_attention.cross_attention
    overrides = [("memory_attention.cross_attention.pool_window", ca.pool_window),
                 ("memory_attention.cross_attention.log_area_constant", ca.log_area_constant),
                 ("memory_attention.cross_attention.pool_pointer_tokens",
                  ca.pool_pointer_tokens)]
    overrides += [(k, v) for k, v in (c.model.get("overrides") or [])
                  if k.startswith(_PORTABLE_MODEL_FIELDS)]
    overrides.append(("conv_impl", "matmul"))
    c.model = ml_collections.ConfigDict({"variant": "tiny", "compute_dtype": "float32",
                                         "remat": "none", "overrides": overrides})
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
    c.sharding_preset = "dp"
    c.multihost = False
    c.init_from = None
    c.resume = None
    c.data = data([{"name": "sav", "data_dir": f"{data_root}/tfds", "batch_size": 2,
                    "weight": 1.0}], num_workers=0)
    c.data.num_threads = 2
    # 3 frames: the last attends to two memory frames, the fewest that pooling applies to
    c.data.clip = {"num_frames": 3, "max_objects": 2}
    c.eval = ml_collections.ConfigDict({"data_dir": f"{data_root}/raw/sav_val",
                                        "format": "sav", "max_videos": 4})
    c.prompts = {"prob_point_input": 0.0, "num_init_cond_frames": 1}
    steps = 40
    opt = dict(c.get("optimizer") or {})
    opt.update({"lr": 1e-3, "lr_image_encoder": 1e-3, "total_steps": steps,
                "warmup_steps": min(int(opt.get("warmup_steps") or 0), steps // 4)})
    if opt.get("cooldown_steps"):
        opt["cooldown_steps"] = min(int(opt["cooldown_steps"]), steps // 4)
    opt.pop("freeze", None)
    c.optimizer = opt
    c.train.update({"num_steps": steps, "log_every": 10, "checkpoint_every": steps,
                    "keep_every": None, "async_checkpoints": False, "dropout": False,
                    "remat_frames": False})
    return c
