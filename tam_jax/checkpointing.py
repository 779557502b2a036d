"""Orbax checkpoints of model params. The only module that imports orbax.

A model directory holds:
    params/          Orbax PyTree checkpoint of the Flax params (float32)
    tam_jax.json     {"variant": <config name>, "format": 1}

Writes are atomic: everything goes into `<dir>.partial-XXXX` first and is renamed into place at
the end, so a crash never leaves a half-written model directory under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

META_FILE = "tam_jax.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A model directory that is missing, incomplete or of another format."""


def is_model_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / META_FILE).is_file()


def save_model(path: str | os.PathLike, params: Mapping[str, Any], variant: str,
               overwrite: bool = False) -> Path:
    """Save `params` and the variant name to the directory `path` atomically."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path} already exists (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".partial-", dir=path.parent))
    try:
        params = jax.tree.map(np.asarray, dict(params))
        with ocp.PyTreeCheckpointer() as ckptr:
            ckptr.save(tmp / "params", params)
        (tmp / META_FILE).write_text(json.dumps({"variant": variant, "format": FORMAT_VERSION}))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_model(path: str | os.PathLike) -> tuple[dict, str]:
    """(params as numpy, variant name) from a directory written by `save_model`."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise CheckpointError(f"{path}: not a tam_jax model directory (no {META_FILE})")
    try:
        meta = json.loads(meta_file.read_text())
        variant = meta["variant"]
    except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"{meta_file}: unreadable metadata ({e})") from e
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_file}: format {meta.get('format')} is not supported")
    with ocp.PyTreeCheckpointer() as ckptr:
        params = ckptr.restore(path / "params")
    return jax.tree.map(np.asarray, params), variant
