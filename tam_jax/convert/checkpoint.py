"""Strict conversion between official PyTorch checkpoints and tam_jax params.

Official checkpoints are `torch.save({"model": state_dict})` (spec §9); bare state dicts and
DataParallel (`module.`-prefixed) keys are accepted too. Conversion is strict: every missing key,
unexpected key and shape mismatch is collected and reported in ONE `ConversionError`; nothing is
dropped or invented. The variant's width (Ti / S) is detected from the shapes; the resolution and
the memory-attention kind are not visible in the weights (all 4 variants of a width have the
same state dict, spec §1), so they come from the requested variant.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tam_jax.configs import EfficientTAMConfig, get_config
from tam_jax.convert.key_table import (
    flax_to_torch,
    key_specs,
    to_flax_layout,
    torch_shape,
)

_PATCH_KEY = "image_encoder.trunk.patch_embed.proj.weight"
_WIDTHS = {192: "ti", 384: "s"}


class ConversionError(ValueError):
    """A checkpoint that cannot be converted exactly. The message lists every problem."""


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an official `.pt` file into {key: float32/int numpy array}."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle garbage, wrong format ...
        raise ConversionError(
            f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e}); "
            "the file may be truncated or corrupt"
        ) from e
    return unwrap_state_dict(obj, source=str(path))


def unwrap_state_dict(obj: Any, source: str = "<state dict>") -> dict[str, np.ndarray]:
    """Accept {"model": sd}, a bare sd, or `module.`-prefixed keys; return numpy arrays."""
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj:
        raise ConversionError(f"{source}: expected a state dict or {{'model': state_dict}}, "
                              f"got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if not hasattr(v, "shape"):
            raise ConversionError(f"{source}: entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k] = v
    if all(k.startswith("module.") for k in out):
        out = {k[len("module."):]: v for k, v in out.items()}
    return {k: _to_numpy(v) for k, v in out.items()}


def _to_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu()
        return v.float().numpy() if v.is_floating_point() else v.numpy()
    return np.asarray(v)


def detect_width(state_dict: Mapping[str, Any], source: str = "<state dict>") -> str:
    """'ti' or 's' from the patch-embedding shape."""
    if _PATCH_KEY not in state_dict:
        raise ConversionError(f"{source}: no {_PATCH_KEY!r}; not an EfficientTAM checkpoint")
    dim = int(state_dict[_PATCH_KEY].shape[0])
    if dim not in _WIDTHS:
        raise ConversionError(f"{source}: ViT width {dim} matches no released variant "
                              "(192 = Ti, 384 = S)")
    return _WIDTHS[dim]


def resolve_variant(state_dict: Mapping[str, Any], variant: str | None,
                    source: str = "<state dict>") -> EfficientTAMConfig:
    """The config to convert with: the requested variant, checked against the weights' width."""
    width = detect_width(state_dict, source)
    if variant is None:
        return get_config(f"efficienttam_{width}")
    cfg = get_config(variant)
    if cfg.vit.embed_dim != state_dict[_PATCH_KEY].shape[0]:
        raise ConversionError(
            f"{source}: weights are EfficientTAM-{width.upper()} (ViT width "
            f"{state_dict[_PATCH_KEY].shape[0]}) but variant {variant!r} has ViT width "
            f"{cfg.vit.embed_dim}; pass a variant of the {width.upper()} family "
            f"(efficienttam_{width}, _1, _2, _512x512)"
        )
    return cfg


def official_to_params(state_dict: Mapping[str, Any], cfg: EfficientTAMConfig,
                       source: str = "<state dict>") -> dict:
    """Official state dict -> nested Flax params (numpy), strictly."""
    from tam_jax.models.tam import abstract_param_shapes

    want = abstract_param_shapes(cfg)
    specs = key_specs(cfg)
    problems = []
    expected_keys = {s.torch_key for s in specs}
    missing = [s.torch_key for s in specs if s.torch_key not in state_dict]
    unexpected = sorted(k for k in state_dict if k not in expected_keys)
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    params: dict = {}
    for s in specs:
        if s.torch_key not in state_dict:
            continue
        if s.flax_path not in want:
            problems.append(f"{s.torch_key}: no Flax parameter {'/'.join(s.flax_path)}")
            continue
        expect = torch_shape(want[s.flax_path], s.transform)
        got = tuple(np.shape(state_dict[s.torch_key]))
        if got != expect:
            problems.append(f"shape mismatch {s.torch_key}: checkpoint {got}, model {expect}")
            continue
        node = params
        for name in s.flax_path[:-1]:
            node = node.setdefault(name, {})
        node[s.flax_path[-1]] = to_flax_layout(np.asarray(state_dict[s.torch_key]), s.transform)
    if problems:
        raise ConversionError(f"{source}: cannot convert to {cfg.name}:\n  " +
                              "\n  ".join(problems))
    return params


def params_to_official(params: Mapping[str, Any], cfg: EfficientTAMConfig) -> dict[str, Any]:
    """Flax params -> {official key: numpy array}, in the official state-dict order."""
    try:
        return flax_to_torch(params, cfg)
    except KeyError as e:
        raise ConversionError(f"params lack {e} needed by the official {cfg.name}") from e


def save_official_checkpoint(params: Mapping[str, Any], cfg: EfficientTAMConfig,
                             path: str | os.PathLike) -> Path:
    """Write `{"model": state_dict}` as the official checkpoints do, atomically."""
    import torch

    sd = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in
          params_to_official(params, cfg).items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"model": sd}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_official_checkpoint(path: str | os.PathLike, variant: str | None = None):
    """(params, cfg) from an official `.pt`, strictly converted."""
    sd = load_torch_state_dict(path)
    cfg = resolve_variant(sd, variant, source=str(path))
    return official_to_params(sd, cfg, source=str(path)), cfg
