"""Model weights for evaluation, from whatever a user points at.

`load_eval_model(checkpoint, variant, overrides)` -> (config, params) where checkpoint is
    None / "none"        random weights (seed 0), for smoke tests and the untrained baseline
    <file>.pt            an official EfficientTAM checkpoint (strictly converted)
    <model dir>          a tam_jax model directory (`scripts/convert.py to-jax`, `save_model`)
    <workdir>            a training workdir or its `checkpoints/` directory (variant and
                         overrides from its model.json unless given): the params of the
                         latest training checkpoint (optimiser state and PRNG are not read)
The config is the *evaluation* one (not `configs.for_training`); `overrides` are dotted config
keys (e.g. {"vit.depth": 2}) for models trained with a modified variant.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tam_jax import checkpointing, configs, storage


def is_random(checkpoint) -> bool:
    """Whether `checkpoint` asks for random weights (None or the string "none")."""
    return checkpoint is None or (isinstance(checkpoint, str) and checkpoint.lower() == "none")


# (moved to checkpointing, where init_from reads it too; importable from here as before)
read_train_params = checkpointing.read_train_params


@functools.lru_cache(maxsize=4)
def random_params(cfg: configs.EfficientTAMConfig, seed: int = 0) -> dict:
    """`init_params(cfg, seed)`, cached per process: its compile is the slowest step of a
    small evaluation on CPU (about a minute for the tiny variant on 2 busy cores), and the
    demo / tests ask for the same random model several times. Treat the result as read-only."""
    from tam_jax.models.tam import init_params

    return init_params(cfg, seed)


def read_model_description(path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """(variant, overrides) of a training workdir (or its checkpoints dir) from its
    model.json; CheckpointError naming the file when it is missing or malformed."""
    path = Path(path).absolute()
    for candidate in (path / checkpointing.MODEL_FILE, path.parent / checkpointing.MODEL_FILE):
        if candidate.is_file():
            break
    else:
        raise checkpointing.CheckpointError(
            f"{path}: no {checkpointing.MODEL_FILE} (written by training runs since it was "
            "added), so a training checkpoint needs a variant (and overrides for a modified "
            "variant: the training config's model section)")
    try:
        desc = json.loads(candidate.read_text())
        variant = str(desc["variant"])
        overrides = {str(k): tuple(v) if isinstance(v, list) else v
                     for k, v in desc.get("overrides", [])}
    except (ValueError, KeyError, TypeError) as e:
        raise checkpointing.CheckpointError(
            f"{candidate}: not a model description ({e!r})") from None
    return variant, overrides


def eval_config(variant: str, overrides: Mapping[str, Any] | None = None):
    """The evaluation config of `variant` with dotted `overrides` applied and validated."""
    cfg = configs.get_config(variant)
    if overrides:
        cfg = configs.override(cfg, dict(overrides)).validate()
    return cfg


def load_eval_model(
    checkpoint: str | os.PathLike | None,
    variant: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> tuple[configs.EfficientTAMConfig, dict]:
    """(config, params) for evaluation; see the module docstring for what `checkpoint` may be.

    `variant` may be omitted for an official `.pt` (inferred from its shapes) and a model
    directory (read from its metadata); random weights and training checkpoints need it.
    Params are checked leaf by leaf against the config (CheckpointError listing misfits).
    """
    if is_random(checkpoint):
        if variant is None:
            raise checkpointing.CheckpointError("random weights (checkpoint none) need a variant")
        cfg = eval_config(variant, overrides)
        return cfg, random_params(cfg, seed)
    storage.require_local(checkpoint, "an evaluation checkpoint")
    path = Path(checkpoint)
    if not path.exists():
        raise checkpointing.CheckpointError(f"{path}: no such checkpoint file or directory")
    if path.is_file():
        from tam_jax.convert.checkpoint import load_official_checkpoint

        params, cfg = load_official_checkpoint(path, variant)
        cfg = eval_config(cfg.name, overrides)
    elif checkpointing.is_model_dir(path):
        params, saved = checkpointing.load_model(path)
        cfg = eval_config(variant or saved, overrides)
    else:
        if variant is None:
            variant, saved_overrides = read_model_description(path)
            overrides = {**saved_overrides, **dict(overrides or {})}
        params, _ = read_train_params(path)
        cfg = eval_config(variant, overrides)
    checkpointing.check_param_shapes(params, cfg, str(path))
    return cfg, params
