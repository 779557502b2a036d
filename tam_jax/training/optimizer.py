"""AdamW with layer-wise lr decay, per-part learning rates, freezing and lr schedules.

The recipe of the EfficientTAM paper and SAM 2's trainer (`efficienttam_spec.md` §12):

    update = -lr(step) * group_scale * (adam(clip(g)) + wd * param)     (decoupled decay)

- `clip`: clip_by_global_norm(clip_norm) over the *trainable* gradients only.
- `adam`: bias-corrected moments, eps added after the square root (torch.optim.AdamW's form).
- `lr(step) = base * schedule(step)`: one schedule shape (cosine / rsqrt / constant, all with
  linear warm-up) shared by two bases, `lr` (everything else) and `lr_image_encoder`.
- `group_scale`: ViT layer-wise decay (BEiT style): patch_embed and pos_embed -> layer 0,
  `blocks_i` -> i + 1, the rest of the image encoder (neck) -> L + 1, and
  scale = layer_decay ** (L + 1 - layer_id). Outside the image encoder the scale is 1.
- `wd`: only on weight matrices and conv kernels (leaf `kernel`); biases, norm scales, tokens,
  embeddings and other free parameters get none. `classify_param` states the reason for every
  leaf and raises for a leaf name it does not know, so a new parameter never silently decays.
- frozen parameters (by path prefix, plus the prompt encoder's random Fourier matrix, which is a
  torch *buffer* in the official model) get a zero update and hold no optimiser state.

`step` is the number of updates already applied (optax's count): the first update uses
schedule(0), which is 0 under a warm-up, as with `optax.warmup_cosine_decay_schedule`.

Labels depend on parameter paths and ranks only, never on values, so `init` runs under `jax.jit`
or `jax.eval_shape` on abstract or sharded parameters. Parameters must be unboxed (plain dicts,
as `tam.init_params` returns them). Leaves sharing (lr base, layer scale, decay?) form one optax
group (about 2 * (L + 3) groups for a ViT of depth L).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax

from tam_jax.configs import EfficientTAMConfig

Schedule = Literal["cosine", "rsqrt", "constant"]
FROZEN = "frozen"


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW + schedule settings. Defaults: the paper's full (video) training, spec §12."""

    lr: float = 3e-4  # everything outside the image encoder
    lr_image_encoder: float | None = 6e-5  # None: same as `lr`
    weight_decay: float = 0.1
    layer_decay: float = 0.8  # ViT layer-wise lr decay; 1.0 turns it off
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float | None = 0.1  # global L2 norm of the trainable grads; None: no clipping
    schedule: Schedule = "cosine"
    warmup_steps: int = 15_000
    cooldown_steps: int = 0  # rsqrt only: linear cool-down over the last steps of total_steps
    total_steps: int = 300_000
    cosine_end_ratio: float = 0.1  # SAM 2 decays the cosine to lr / 10
    rsqrt_timescale: int | None = None  # None: warmup_steps
    freeze: tuple[str, ...] = ()  # param path prefixes, "/"-joined, e.g. "image_encoder/trunk"

    def __post_init__(self):
        # ml_collections / CLI overrides hand over lists; keep the dataclass hashable.
        if isinstance(self.freeze, str | list):
            object.__setattr__(
                self, "freeze", (self.freeze,) if isinstance(self.freeze, str) else
                tuple(self.freeze))
        errors = []
        if not self.lr > 0:
            errors.append(f"lr must be > 0, got {self.lr}")
        if self.lr_image_encoder is not None and not self.lr_image_encoder > 0:
            errors.append(f"lr_image_encoder must be > 0 or None, got {self.lr_image_encoder}")
        if not self.weight_decay >= 0:
            errors.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 < self.layer_decay <= 1:
            errors.append(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            errors.append(f"b1, b2 must be in [0, 1), got {self.b1}, {self.b2}")
        if not self.eps > 0:
            errors.append(f"eps must be > 0, got {self.eps}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            errors.append(f"clip_norm must be > 0 or None, got {self.clip_norm}")
        if self.schedule not in ("cosine", "rsqrt", "constant"):
            errors.append(f"schedule must be cosine, rsqrt or constant, not {self.schedule!r}")
        if not self.total_steps > 0:
            errors.append(f"total_steps must be > 0, got {self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            errors.append(f"warmup_steps must be in [0, total_steps], got {self.warmup_steps}")
        if self.cooldown_steps < 0:
            errors.append(f"cooldown_steps must be >= 0, got {self.cooldown_steps}")
        if self.cooldown_steps and self.schedule != "rsqrt":
            errors.append(f"cooldown_steps is for the rsqrt schedule, not {self.schedule!r}")
        if self.warmup_steps + self.cooldown_steps > self.total_steps:
            errors.append("warmup_steps + cooldown_steps exceed total_steps")
        if not 0 <= self.cosine_end_ratio <= 1:
            errors.append(f"cosine_end_ratio must be in [0, 1], got {self.cosine_end_ratio}")
        if self.schedule == "rsqrt" and not self.timescale > 0:
            errors.append("the rsqrt schedule needs rsqrt_timescale > 0 (or warmup_steps > 0)")
        bad = [p for p in self.freeze if not isinstance(p, str) or not p.strip("/")]
        if bad:
            errors.append(f"freeze prefixes must be non-empty strings, got {bad}")
        if errors:
            raise ValueError("invalid OptimizerConfig: " + "; ".join(errors))

    @property
    def timescale(self) -> int:
        return self.warmup_steps if self.rsqrt_timescale is None else self.rsqrt_timescale

    @property
    def image_encoder_lr(self) -> float:
        return self.lr if self.lr_image_encoder is None else self.lr_image_encoder


# ------------------------------------------------------------------------------------------
# Schedules: step -> multiplier of the base lr. jnp throughout, so they run inside jit.


def _warmup(step: jax.Array, warmup_steps: int) -> jax.Array:
    """Linear 0 -> 1 over `warmup_steps`, then 1."""
    if warmup_steps <= 0:
        return jnp.ones_like(step)
    return jnp.minimum(step / warmup_steps, 1.0)


def cosine_multiplier(step, *, warmup_steps: int, total_steps: int, end_ratio: float):
    """Linear warm-up, then cosine from 1 at `warmup_steps` to `end_ratio` at `total_steps`,
    constant `end_ratio` after."""
    step = jnp.asarray(step, jnp.float32)
    t = jnp.clip((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
    cosine = end_ratio + (1.0 - end_ratio) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
    return _warmup(step, warmup_steps) * cosine


def rsqrt_multiplier(step, *, warmup_steps: int, cooldown_steps: int, total_steps: int,
                     timescale: int):
    """min(step / warmup, 1) * sqrt(timescale / max(step, timescale)), times a linear ramp
    1 -> 0 over the last `cooldown_steps` before `total_steps` (0 after)."""
    step = jnp.asarray(step, jnp.float32)
    mult = _warmup(step, warmup_steps) * jnp.sqrt(timescale / jnp.maximum(step, timescale))
    if cooldown_steps > 0:
        mult = mult * jnp.clip((total_steps - step) / cooldown_steps, 0.0, 1.0)
    return mult


def constant_multiplier(step, *, warmup_steps: int):
    """Linear warm-up, then 1."""
    return _warmup(jnp.asarray(step, jnp.float32), warmup_steps)


def lr_multiplier(opt_cfg: OptimizerConfig) -> Callable[[Any], jax.Array]:
    """The configured schedule as a function step -> multiplier (float32 scalar)."""
    c = opt_cfg
    if c.schedule == "cosine":
        return lambda step: cosine_multiplier(
            step, warmup_steps=c.warmup_steps, total_steps=c.total_steps,
            end_ratio=c.cosine_end_ratio)
    if c.schedule == "rsqrt":
        return lambda step: rsqrt_multiplier(
            step, warmup_steps=c.warmup_steps, cooldown_steps=c.cooldown_steps,
            total_steps=c.total_steps, timescale=c.timescale)
    return lambda step: constant_multiplier(step, warmup_steps=c.warmup_steps)


def learning_rates(opt_cfg: OptimizerConfig, step) -> dict[str, jax.Array]:
    """The two base learning rates at `step` (before layer scales), for logging; jittable."""
    mult = lr_multiplier(opt_cfg)(step)
    return {"lr": opt_cfg.lr * mult, "lr_image_encoder": opt_cfg.image_encoder_lr * mult}


# ------------------------------------------------------------------------------------------
# Parameter classification: every leaf gets a reason, from its path and rank only.

_DECAYED = {"kernel": "weight matrix / conv kernel"}
_NOT_DECAYED = {
    "bias": "bias",
    "scale": "norm scale (LayerNorm / LayerNorm2d)",
    "embedding": "learned token / prompt embedding (nn.Embed)",
    "gamma": "CXBlock layer scale",
    "pos_embed": "learned ViT position embedding",
    "maskmem_tpos_enc": "learned memory temporal position encoding",
    "no_mem_embed": "learned no-memory embedding",
    "no_mem_pos_enc": "learned no-memory position encoding",
    "no_obj_ptr": "learned no-object pointer",
}
# Tensors the official model registers as buffers: they are never trained.
_BUFFERS = {"positional_encoding_gaussian_matrix": "fixed random Fourier matrix (torch buffer)"}

_BLOCK_RE = re.compile(r"^blocks_(\d+)$")


@dataclasses.dataclass(frozen=True)
class ParamRule:
    """What the optimiser does with one leaf, and why."""

    path: str  # "/"-joined flax path
    decay: bool
    trainable: bool  # False for buffers (config freezing is applied on top)
    layer_id: int | None  # ViT layer id for image-encoder leaves, None elsewhere
    reason: str


def classify_param(path: tuple[str, ...], ndim: int, num_layers: int) -> ParamRule:
    """The rule for the leaf at `path` (rank `ndim`) of a model whose ViT has `num_layers`
    blocks. Raises ValueError for a leaf name none of the tables knows."""
    name, joined = path[-1], "/".join(path)
    if name in _DECAYED:
        if ndim < 2:
            raise ValueError(f"parameter {joined!r}: a kernel of rank {ndim} (expected >= 2)")
        decay, trainable, reason = True, True, _DECAYED[name]
    elif name in _NOT_DECAYED:
        decay, trainable, reason = False, True, _NOT_DECAYED[name]
    elif name in _BUFFERS:
        decay, trainable, reason = False, False, _BUFFERS[name]
    else:
        raise ValueError(
            f"parameter {joined!r}: leaf name {name!r} is in no optimiser table; add it to "
            "_DECAYED or _NOT_DECAYED in tam_jax/training/optimizer.py")
    return ParamRule(joined, decay, trainable, _layer_id(path, num_layers), reason)


def _layer_id(path: tuple[str, ...], num_layers: int) -> int | None:
    """BEiT-style ViT layer id (spec §12); None outside the image encoder."""
    if path[0] != "image_encoder":
        return None
    if len(path) > 2 and path[1] == "trunk":
        if path[2] in ("patch_embed", "pos_embed"):
            return 0
        if m := _BLOCK_RE.match(path[2]):
            return int(m.group(1)) + 1
    return num_layers + 1


@dataclasses.dataclass(frozen=True)
class Group:
    """One optax sub-transform: leaves sharing a base lr, a layer scale and decay-or-not."""

    base: str  # "lr" | "lr_image_encoder"
    exponent: int  # layer scale = layer_decay ** exponent
    decay: bool


def _path_keys(path) -> tuple[str, ...]:
    keys = []
    for k in path:
        if not isinstance(k, jax.tree_util.DictKey):
            raise TypeError(
                f"optimizer: parameter path {jax.tree_util.keystr(path)} is not made of dict "
                "keys; pass unboxed params (flax.linen.meta.unbox)")
        keys.append(str(k.key))
    return tuple(keys)


def _num_layers(params, model_cfg: EfficientTAMConfig | None) -> int:
    """ViT depth: from the config, checked against the blocks in the tree, else from the tree."""
    blocks = set()
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = _path_keys(path)
        if keys[:2] == ("image_encoder", "trunk") and len(keys) > 2:
            if m := _BLOCK_RE.match(keys[2]):
                blocks.add(int(m.group(1)))
    found = max(blocks) + 1 if blocks else 0
    if model_cfg is None:
        return found
    if blocks and found != model_cfg.vit.depth:
        raise ValueError(
            f"params hold ViT blocks 0..{found - 1} but config {model_cfg.name!r} has depth "
            f"{model_cfg.vit.depth}")
    return model_cfg.vit.depth


def _frozen_by_config(keys: tuple[str, ...], freeze: tuple[tuple[str, ...], ...]) -> bool:
    return any(keys[: len(p)] == p for p in freeze)


def _group_of(rule: ParamRule, keys: tuple[str, ...], opt_cfg: OptimizerConfig,
              num_layers: int, freeze) -> Group | None:
    """None for a frozen leaf."""
    if not rule.trainable or _frozen_by_config(keys, freeze):
        return None
    if rule.layer_id is None:
        return Group("lr", 0, rule.decay)
    # With lr_image_encoder None, the encoder's top layers share the "lr" groups.
    base = "lr" if opt_cfg.lr_image_encoder is None else "lr_image_encoder"
    exponent = num_layers + 1 - rule.layer_id if opt_cfg.layer_decay != 1.0 else 0
    return Group(base, exponent, rule.decay)


def _label(group: Group | None, layer_decay: float) -> str:
    if group is None:
        return FROZEN
    name = group.base if group.exponent == 0 else f"{group.base}*{layer_decay:g}^{group.exponent}"
    return f"{name}/{'decay' if group.decay else 'no_decay'}"


def _assign(params, opt_cfg: OptimizerConfig, num_layers: int):
    """(labels pytree, {label: Group or None}, [(keys, rule, label, size)]) for `params`."""
    freeze = tuple(tuple(p.strip("/").split("/")) for p in opt_cfg.freeze)
    groups: dict[str, Group | None] = {}
    rows = []

    def one(path, leaf):
        keys = _path_keys(path)
        rule = classify_param(keys, len(jnp.shape(leaf)), num_layers)
        group = _group_of(rule, keys, opt_cfg, num_layers, freeze)
        label = _label(group, opt_cfg.layer_decay)
        groups[label] = group
        rows.append((keys, rule, label, math.prod(jnp.shape(leaf))))
        return label

    labels = jax.tree_util.tree_map_with_path(one, params)
    unused = [p for p, k in zip(opt_cfg.freeze, freeze, strict=True)
              if not any(_frozen_by_config(r[0], (k,)) for r in rows)]
    if unused:
        raise ValueError(f"freeze prefixes {unused} match no parameter")
    return labels, groups, rows


def param_groups(params, model_cfg: EfficientTAMConfig | None, opt_cfg: OptimizerConfig):
    """A pytree like `params` of group labels ("frozen", "lr/decay",
    "lr_image_encoder*0.8^3/decay", ...). `params` may be arrays, tracers or
    ShapeDtypeStructs; only paths and ranks are read."""
    return _assign(params, opt_cfg, _num_layers(params, model_cfg))[0]


def make_optimizer(opt_cfg: OptimizerConfig, params,
                   model_cfg: EfficientTAMConfig | None = None) -> optax.GradientTransformation:
    """The whole AdamW recipe as one optax chain (see the module docstring).

    `params` (concrete or abstract) fixes the groups and validates every leaf now; the
    returned transformation recomputes labels from the paths of whatever tree it is given.
    `update` needs `params` (decoupled weight decay).
    """
    num_layers = _num_layers(params, model_cfg)
    _, groups, _ = _assign(params, opt_cfg, num_layers)

    def labels_fn(tree):
        return _assign(tree, opt_cfg, num_layers)[0]

    def trainable_fn(tree):
        return jax.tree.map(lambda label: label != FROZEN, labels_fn(tree))

    per_group: dict[str, optax.GradientTransformation] = {FROZEN: optax.set_to_zero()}
    for label, group in groups.items():
        if group is None:
            continue
        base = opt_cfg.lr if group.base == "lr" else opt_cfg.image_encoder_lr
        steps = []
        if group.decay and opt_cfg.weight_decay > 0:
            steps.append(optax.add_decayed_weights(opt_cfg.weight_decay))
        # The sign and the static part of the lr; the schedule multiplies every group below.
        steps.append(optax.scale(-base * opt_cfg.layer_decay ** group.exponent))
        per_group[label] = optax.chain(*steps)

    chain = []
    # optax.masked keeps frozen leaves out of the norm and out of Adam's state.
    if opt_cfg.clip_norm is not None:
        chain.append(optax.masked(optax.clip_by_global_norm(opt_cfg.clip_norm), trainable_fn))
    chain.append(optax.masked(
        optax.scale_by_adam(b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps), trainable_fn))
    chain.append(optax.partition(per_group, labels_fn))
    chain.append(optax.scale_by_schedule(lr_multiplier(opt_cfg)))
    return optax.chain(*chain)


def describe(params, model_cfg: EfficientTAMConfig | None, opt_cfg: OptimizerConfig) -> str:
    """A table of the groups (one row each): tensors, parameters, lr base, scale, decay."""
    num_layers = _num_layers(params, model_cfg)
    _, groups, rows = _assign(params, opt_cfg, num_layers)
    stats: dict[str, list[int]] = {label: [0, 0] for label in groups}
    for _, _, label, size in rows:
        stats[label][0] += 1
        stats[label][1] += size

    def order(label):
        g = groups[label]
        return (g is None, g is not None and g.base == "lr", -(g.exponent if g else 0), label)

    header = f"{'group':<36} {'tensors':>7} {'params':>11} {'base':>16} {'scale':>8} {'wd':>5}"
    lines = [header, "-" * len(header)]
    for label in sorted(groups, key=order):
        g = groups[label]
        n, size = stats[label]
        if g is None:
            base, scale, wd = "-", "0", "-"
        else:
            base = g.base
            scale = f"{opt_cfg.layer_decay ** g.exponent:.4g}"
            wd = f"{opt_cfg.weight_decay:g}" if g.decay else "0"
        lines.append(f"{label:<36} {n:>7} {size:>11,} {base:>16} {scale:>8} {wd:>5}")
    total_n = sum(s[0] for s in stats.values())
    total = sum(s[1] for s in stats.values())
    trained = sum(s[1] for label, s in stats.items() if groups[label] is not None)
    lines.append("-" * len(header))
    lines.append(f"{'total':<36} {total_n:>7} {total:>11,}   trainable {trained:,}")
    return "\n".join(lines)


def explain(params, model_cfg: EfficientTAMConfig | None,
            opt_cfg: OptimizerConfig) -> Mapping[str, tuple[str, ParamRule]]:
    """{path: (group label, rule)} for every leaf: why each parameter is treated as it is."""
    num_layers = _num_layers(params, model_cfg)
    _, _, rows = _assign(params, opt_cfg, num_layers)
    return {rule.path: (label, rule) for _, rule, label, _ in rows}
