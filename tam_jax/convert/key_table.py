"""The one declarative key table between official PyTorch state dicts and Flax params.

Each row names an official *module* (or bare parameter) and its kind; the kind fixes the leaf
names and the layout transform (spec §9, §11):

    kind      torch leaf -> flax leaf          transform (torch -> flax)
    linear    weight (out, in) -> kernel      transpose
    conv      weight OIHW -> kernel HWIO      permute (2, 3, 1, 0)   (depthwise too)
    conv_t    weight (in, out, kh, kw)        permute (2, 3, 1, 0) -> (kh, kw, out, in), used
              -> kernel                        with ConvTranspose(transpose_kernel=True)
    norm      weight -> scale                 none
    embed     weight -> embedding             none
    param     <name> -> <name>                none (bare nn.Parameter / buffer)
    (bias -> bias, unchanged, for every kind that has one)

Flax module paths mirror the torch ones, with every integer component glued to the name before
it: torch `blocks.3.mlp.layers.0` <-> flax `blocks_3/mlp/layers_0`. Both converter directions
(`torch_to_flax`, `flax_to_torch`) read this table; nothing is inferred from key spelling, so
torch names such as `norm_0` (a real attribute name) never get confused with an index.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from tam_jax.configs import EfficientTAMConfig


@dataclasses.dataclass(frozen=True)
class Row:
    torch: str  # dotted torch module path, or the full key for kind "param"
    kind: str  # linear | conv | conv_t | norm | embed | param
    bias: bool = True


_LEAVES = {
    "linear": (("weight", "kernel"),),
    "conv": (("weight", "kernel"),),
    "conv_t": (("weight", "kernel"),),
    "norm": (("weight", "scale"),),
    "embed": (("weight", "embedding"),),
}


def _attn(prefix: str) -> list[Row]:
    return [Row(f"{prefix}.{p}_proj", "linear") for p in ("q", "k", "v", "out")]


def _mlp(prefix: str, n: int) -> list[Row]:
    return [Row(f"{prefix}.layers.{i}", "linear") for i in range(n)]


def key_table(cfg: EfficientTAMConfig) -> list[Row]:
    """Every official module of the model `cfg`, in state-dict order (455 keys for Ti / S)."""
    rows = [Row(n, "param") for n in ("maskmem_tpos_enc", "no_mem_embed", "no_mem_pos_enc",
                                      "no_obj_ptr")]
    t = "image_encoder.trunk"
    rows += [Row(f"{t}.pos_embed", "param"), Row(f"{t}.patch_embed.proj", "conv")]
    for i in range(cfg.vit.depth):
        b = f"{t}.blocks.{i}"
        rows += [Row(f"{b}.norm1", "norm"), Row(f"{b}.attn.qkv", "linear"),
                 Row(f"{b}.attn.proj", "linear"), Row(f"{b}.norm2", "norm")]
        rows += _mlp(f"{b}.mlp", 2)
    n = "image_encoder.neck.convs.0"
    rows += [Row(f"{n}.conv_1x1", "conv", bias=False), Row(f"{n}.norm_0", "norm"),
             Row(f"{n}.conv_3x3", "conv", bias=False), Row(f"{n}.norm_1", "norm")]
    rows.append(Row("mask_downsample", "conv"))

    for i in range(cfg.memory_attention.num_layers):
        layer = f"memory_attention.layers.{i}"
        rows += _attn(f"{layer}.self_attn") + _attn(f"{layer}.cross_attn_image")
        rows += [Row(f"{layer}.linear1", "linear"), Row(f"{layer}.linear2", "linear")]
        rows += [Row(f"{layer}.norm{j}", "norm") for j in (1, 2, 3)]
    rows.append(Row("memory_attention.norm", "norm"))

    enc = "memory_encoder.mask_downsampler.encoder"
    for s in range(num_mask_downsampler_stages(cfg)):
        rows += [Row(f"{enc}.{3 * s}", "conv"), Row(f"{enc}.{3 * s + 1}", "norm")]
    rows.append(Row(f"{enc}.{3 * num_mask_downsampler_stages(cfg)}", "conv"))
    rows.append(Row("memory_encoder.pix_feat_proj", "conv"))
    for i in range(cfg.memory_encoder.fuser_layers):
        f = f"memory_encoder.fuser.layers.{i}"
        rows += [Row(f"{f}.gamma", "param"), Row(f"{f}.dwconv", "conv"), Row(f"{f}.norm", "norm"),
                 Row(f"{f}.pwconv1", "linear"), Row(f"{f}.pwconv2", "linear")]
    rows.append(Row("memory_encoder.out_proj", "conv"))

    p = "sam_prompt_encoder"
    rows.append(Row(f"{p}.pe_layer.positional_encoding_gaussian_matrix", "param"))
    rows += [Row(f"{p}.point_embeddings.{i}", "embed") for i in range(4)]
    rows.append(Row(f"{p}.not_a_point_embed", "embed"))
    rows += [Row(f"{p}.mask_downscaling.{i}", k) for i, k in
             ((0, "conv"), (1, "norm"), (3, "conv"), (4, "norm"), (6, "conv"))]
    rows.append(Row(f"{p}.no_mask_embed", "embed"))

    d = "sam_mask_decoder"
    for i in range(cfg.mask_decoder.transformer_depth):
        layer = f"{d}.transformer.layers.{i}"
        rows += _attn(f"{layer}.self_attn") + [Row(f"{layer}.norm1", "norm")]
        rows += _attn(f"{layer}.cross_attn_token_to_image") + [Row(f"{layer}.norm2", "norm")]
        rows += _mlp(f"{layer}.mlp", 2)
        rows += [Row(f"{layer}.norm3", "norm"), Row(f"{layer}.norm4", "norm")]
        rows += _attn(f"{layer}.cross_attn_image_to_token")
    rows += _attn(f"{d}.transformer.final_attn_token_to_image")
    rows.append(Row(f"{d}.transformer.norm_final_attn", "norm"))
    rows += [Row(f"{d}.{n}", "embed") for n in ("iou_token", "mask_tokens", "obj_score_token")]
    rows += [Row(f"{d}.output_upscaling.0", "conv_t"), Row(f"{d}.output_upscaling.1", "norm"),
             Row(f"{d}.output_upscaling.3", "conv_t")]
    for i in range(cfg.mask_decoder.num_multimask_outputs + 1):
        rows += _mlp(f"{d}.output_hypernetworks_mlps.{i}", 3)
    rows += _mlp(f"{d}.iou_prediction_head", cfg.mask_decoder.iou_head_depth)
    rows += _mlp(f"{d}.pred_obj_score_head", 3)
    rows += _mlp("obj_ptr_proj", 3)
    return rows


def num_mask_downsampler_stages(cfg: EfficientTAMConfig) -> int:
    """Stages of the memory encoder's mask downsampler: from image to feature grid (total
    stride = the ViT patch size, 16 in every released variant) in steps of `stride`."""
    total, s = cfg.vit.patch_size, cfg.memory_encoder.downsampler_stride
    n = round(np.log(total) / np.log(s))
    if s**n != total:
        raise ValueError(f"mask downsampler stride {s} does not reach the total stride "
                         f"{total} (the patch size) in whole steps")
    return n


def flax_module_path(torch_path: str) -> tuple[str, ...]:
    """`a.b.3.c` -> ("a", "b_3", "c")."""
    out: list[str] = []
    for part in torch_path.split("."):
        if part.isdigit():
            out[-1] = f"{out[-1]}_{part}"
        else:
            out.append(part)
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class KeySpec:
    torch_key: str
    flax_path: tuple[str, ...]
    transform: str  # "transpose" | "conv" | "none"


_TRANSFORM = {"linear": "transpose", "conv": "conv", "conv_t": "conv"}


def key_specs(cfg: EfficientTAMConfig) -> list[KeySpec]:
    """Every official state-dict key with its Flax path and transform, in state-dict order."""
    specs = []
    for row in key_table(cfg):
        if row.kind == "param":
            specs.append(KeySpec(row.torch, flax_module_path(row.torch), "none"))
            continue
        mod = flax_module_path(row.torch)
        for tleaf, fleaf in _LEAVES[row.kind]:
            specs.append(KeySpec(f"{row.torch}.{tleaf}", (*mod, fleaf),
                                 _TRANSFORM.get(row.kind, "none")))
        if row.bias and row.kind != "embed":
            specs.append(KeySpec(f"{row.torch}.bias", (*mod, "bias"), "none"))
    return specs


def to_flax_layout(value: np.ndarray, transform: str) -> np.ndarray:
    if transform == "transpose":
        return np.ascontiguousarray(value.T)
    if transform == "conv":
        return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
    return value


def to_torch_layout(value: np.ndarray, transform: str) -> np.ndarray:
    if transform == "transpose":
        return np.ascontiguousarray(value.T)
    if transform == "conv":
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    return value


def torch_shape(flax_shape: tuple[int, ...], transform: str) -> tuple[int, ...]:
    if transform == "transpose":
        return tuple(reversed(flax_shape))
    if transform == "conv":
        h, w, i, o = flax_shape
        return (o, i, h, w)
    return tuple(flax_shape)


def _as_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # torch.Tensor, without importing torch
        return v.detach().cpu().float().numpy() if v.is_floating_point() else v.cpu().numpy()
    return np.asarray(v)


def torch_to_flax(
    state_dict: Mapping[str, Any], prefix: str = "", cfg: EfficientTAMConfig | None = None
) -> dict:
    """Convert the official keys under `prefix` into a nested Flax params dict (numpy leaves).

    With `cfg`, the table of that config is used and every table key under `prefix` must be
    present (use `convert.checkpoint` for the strict, whole-model conversion with one error
    listing every problem). Without `cfg`, the table is derived from the keys present, which is
    what per-module parity tests want.
    """
    specs = key_specs(cfg) if cfg is not None else _specs_from_keys(state_dict)
    out: dict = {}
    for spec in specs:
        if not spec.torch_key.startswith(prefix):
            continue
        if spec.torch_key not in state_dict:
            raise KeyError(f"missing official key {spec.torch_key!r}")
        rel = flax_module_path(prefix.rstrip(".")) if prefix else ()
        path = spec.flax_path[len(rel):]
        node = out
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = to_flax_layout(_as_numpy(state_dict[spec.torch_key]), spec.transform)
    return out


def flax_to_torch(params: Mapping[str, Any], cfg: EfficientTAMConfig, prefix: str = "") -> dict:
    """Flax params of the module at `prefix` -> {official key: numpy array}, in table order."""
    rel = flax_module_path(prefix.rstrip(".")) if prefix else ()
    out = {}
    for spec in key_specs(cfg):
        if not spec.torch_key.startswith(prefix):
            continue
        node: Any = params
        for name in spec.flax_path[len(rel):]:
            node = node[name]
        out[spec.torch_key] = to_torch_layout(np.asarray(node), spec.transform)
    return out


_WIDTH_RE = re.compile(r"^image_encoder\.trunk\.blocks\.(\d+)\.")


def _specs_from_keys(state_dict: Mapping[str, Any]) -> list[KeySpec]:
    """The table rows of whatever official keys are present (counts read from the keys)."""
    from tam_jax.configs import get_config

    # The structure counts that vary (ViT depth, layer counts) are read off the keys; any
    # official-width config then gives the right kinds for every module.
    cfg = get_config("efficienttam_s")
    depth = 1 + max((int(m.group(1)) for k in state_dict if (m := _WIDTH_RE.match(k))),
                    default=cfg.vit.depth - 1)
    ma = 1 + max((int(k.split(".")[2]) for k in state_dict
                  if k.startswith("memory_attention.layers.")),
                 default=cfg.memory_attention.num_layers - 1)
    cfg = dataclasses.replace(
        cfg,
        vit=dataclasses.replace(cfg.vit, depth=depth, global_att_blocks=()),
        memory_attention=dataclasses.replace(cfg.memory_attention, num_layers=ma),
    )
    return [s for s in key_specs(cfg) if s.torch_key in state_dict]
