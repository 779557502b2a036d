"""Device meshes, logical-axis rule presets, and host <-> global array helpers.

Sharding is data (architecture.md §1.5). Every parameter carries logical axis names
(`models.tam.logical_axes(cfg)`; the names are listed in `models/layers.py`). A preset is two
rules tables: one for the parameters, one for the optimiser state. Each maps those names to the
axes of a ("data", "fsdp") mesh, so switching DP / FSDP / ZeRO-1 is choosing a preset name:

    mesh = make_mesh(MeshConfig(data=-1, fsdp=4))
    logical = tam.logical_axes(cfg)
    abstract = jax.eval_shape(lambda: tam.init_params(cfg))              # no allocation
    p_sh = param_shardings(abstract, logical, mesh, "fsdp")
    params = init_sharded(lambda k: tam.init_params(cfg, k), p_sh, key)  # born sharded
    tx = optax.adamw(1e-4)
    abstract_opt = jax.eval_shape(tx.init, abstract)
    o_sh = state_shardings(abstract_opt, abstract, logical, mesh, "fsdp")
    opt_state = init_sharded(tx.init, o_sh, params)
    batch = global_batch(host_batch, mesh)                               # P(("data", "fsdp"))

The rules use Flax's `logical_axis_rules` format, a sequence of (logical name, mesh axes). The
same table can therefore also drive `nn.logical_axis_rules` for activation constraints. The
model has none yet; give them names that start with "act_" (as "act_batch" here), so that the
weight rules never shard an activation's feature dimension. The rules are resolved here
rather than by Flax because of the fallback: a mesh axis that does not divide a dimension leaves
that dimension replicated. That is never an error; it is recorded in `Plan.fallbacks` and
logged.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES: tuple[str, str] = ("data", "fsdp")
# The batch is split over every device in every preset: each device holds whole examples.
BATCH_AXES: tuple[str, str] = ("data", "fsdp")

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]


# ---------------------------------------------------------------------------------------------
# Mesh
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh degrees. `data` = -1 takes all devices that `fsdp` leaves.

    "data" is the pure data-parallel axis and "fsdp" the axis along which the fsdp preset
    shards weights. In a multi-host job, keep "fsdp" within a host / ICI domain.
    """

    data: int = -1
    fsdp: int = 1

    def shape(self, num_devices: int) -> tuple[int, int]:
        """(data, fsdp) for `num_devices` devices. Raises ValueError if they do not tile."""
        if self.fsdp < 1 or self.data == 0 or self.data < -1:
            raise ValueError(f"mesh degrees must be >= 1 (data may be -1): {self}")
        data = self.data
        if data == -1:
            if num_devices % self.fsdp:
                raise ValueError(f"fsdp={self.fsdp} does not divide the {num_devices} devices")
            data = num_devices // self.fsdp
        if data * self.fsdp != num_devices:
            raise ValueError(f"mesh data={data} x fsdp={self.fsdp} = {data * self.fsdp} devices, "
                             f"but {num_devices} devices were given")
        return data, self.fsdp


def num_slices(devices: Sequence[Any]) -> int:
    """How many TPU slices (ICI domains joined over the data-centre network) `devices` span;
    1 for devices without a `slice_index` (CPU, GPU, a single slice)."""
    return len({getattr(d, "slice_index", 0) or 0 for d in devices})


def make_mesh(mesh_cfg: MeshConfig, devices: Sequence[Any] | None = None) -> Mesh:
    """A ("data", "fsdp") mesh over `devices` (default: all of `jax.devices()`).

    `jax.make_mesh` orders the devices along the physical TPU topology (rings / tori). That is
    also the case for the devices of `jax.experimental.topologies.get_topology_desc(...)`, so
    ahead-of-time compilation for a pod works from a CPU host. The axes are `Auto`: GSPMD
    propagates shardings from the rules tables, whereas `Explicit` (the `jax.make_mesh`
    default) would require sharding-typed code.

    Multi-slice (devices with several `slice_index` values, e.g. 2 x v5e-256 over DCN): the
    mesh comes from `mesh_utils.create_hybrid_device_mesh`, with "data" split across slices
    (only gradients' all-reduce crosses DCN) and "fsdp" kept inside a slice, where its
    all-gathers ride ICI. `fsdp` must then divide a slice's device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    data, fsdp = mesh_cfg.shape(len(devices))
    slices = num_slices(devices)
    if slices == 1:
        return jax.make_mesh((data, fsdp), MESH_AXES,
                             axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)
    from jax.experimental import mesh_utils

    per_slice = len(devices) // slices
    if per_slice % fsdp or data % slices:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} over {slices} slices of {per_slice} "
                         "devices: fsdp must divide a slice's devices (it stays on ICI) and "
                         "data must be a multiple of the slice count")
    grid = mesh_utils.create_hybrid_device_mesh((per_slice // fsdp, fsdp), (slices, 1), devices)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


# ---------------------------------------------------------------------------------------------
# Presets: logical name -> mesh axes, as data
# ---------------------------------------------------------------------------------------------


class Preset(NamedTuple):
    """Rules for the parameters and for the optimiser state (Adam moments and the like)."""

    params: Rules
    opt_state: Rules


# Logical names of weight dimensions (models/layers.py). "norm" (LayerNorm scale / bias) is left
# out of the fsdp table: those vectors are tiny and every token reads them, so gathering them
# would cost more latency than the bytes it saves.
_WIDTHS = ("embed", "qkv", "mlp", "hidden", "mem", "conv_in", "conv_out")
_ACTIVATIONS: Rules = (("act_batch", BATCH_AXES),)

# FSDP: each width name may take "fsdp". Because a mesh axis shards at most one dimension of an
# array, the first named dimension (in dim order) that fsdp divides is the one that is sharded.
# For a Dense kernel that is its input dimension; for a conv kernel (h, w, ., .) it is its first
# named channel dimension. In the released variants the large widths are multiples of 64 (embed
# 192 / 384, hidden 256, mem 64, MLPs 128 to 2048), so any fsdp in {2, 4, ..., 64} divides them
# (jax_style_anchors.md §5). Only the 1- to 16-channel mask convs fall back to replication.
_FSDP: Rules = _ACTIVATIONS + tuple((name, "fsdp") for name in _WIDTHS)

# ZeRO-1: each moment is split across the whole data-parallel group (data x fsdp together),
# including the norms. The parameters stay replicated, as in pure DP.
_ZERO1_STATE: Rules = _ACTIVATIONS + tuple((name, BATCH_AXES) for name in _WIDTHS + ("norm",))

PRESETS: dict[str, Preset] = {
    "dp": Preset(params=_ACTIVATIONS, opt_state=_ACTIVATIONS),
    "fsdp": Preset(params=_FSDP, opt_state=_FSDP),
    "zero1": Preset(params=_ACTIVATIONS, opt_state=_ZERO1_STATE),
}


def get_preset(preset: str | Preset) -> Preset:
    """A preset by name, or a `Preset` passed through (custom rules are data too)."""
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise KeyError(f"unknown sharding preset {preset!r}; known: {', '.join(PRESETS)}")
    return PRESETS[preset]


# ---------------------------------------------------------------------------------------------
# Resolving logical specs against a mesh
# ---------------------------------------------------------------------------------------------


class Fallback(NamedTuple):
    """An array that got less sharding than its rules asked for, and why."""

    path: str
    shape: tuple[int, ...]
    reason: str


@dataclasses.dataclass(frozen=True)
class Plan:
    """Shardings of a pytree (same structure, NamedSharding leaves) and their fallbacks."""

    shardings: Any
    fallbacks: tuple[Fallback, ...]


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def _best_fit(wanted: tuple[str, ...], size: int, mesh: Mesh) -> tuple[str, ...]:
    """`wanted` if its size product divides `size`; otherwise the order-preserving subset of it
    with the largest product > 1 that does (so a data=2 x fsdp=4 rule on a dimension of 4 keeps
    fsdp), or () when none does. A fallback thus never leaves a size-1 axis in the spec."""
    prod = lambda axes: math.prod(mesh.shape[a] for a in axes)
    if size % prod(wanted) == 0:
        return wanted
    subsets = [tuple(a for i, a in enumerate(wanted) if mask >> i & 1)
               for mask in range(2 ** len(wanted) - 1)]
    fits = [s for s in subsets if prod(s) > 1 and size % prod(s) == 0]
    return max(fits, key=prod, default=())


def resolve_spec(logical: PartitionSpec | Sequence[str | None], shape: Sequence[int],
                 rules: Rules, mesh: Mesh) -> tuple[PartitionSpec, list[str]]:
    """Logical names of one array -> its mesh PartitionSpec (one entry per dim) + fallbacks.

    Dimensions are resolved in order. For a dimension named n, the rules' entries for n are
    tried in table order. Mesh axes that an earlier dimension already uses are dropped (a mesh
    axis shards at most one dimension of an array). The rest is used if its size product divides
    the dimension, else the best subset that does (`_best_fit`); an entry that yields nothing
    passes the turn to the next entry for n. Any cut made for divisibility is reported as a
    fallback reason.
    """
    names = tuple(logical)
    if len(names) > len(shape):
        raise ValueError(f"logical spec {names} has more entries than shape {tuple(shape)}")
    names += (None,) * (len(shape) - len(names))
    used: set[str] = set()
    spec, reasons = [], []
    for dim, (name, size) in enumerate(zip(names, shape)):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"dim {dim}: one logical name per dimension expected, got {name!r}")
        chosen: tuple[str, ...] = ()
        for rule_name, rule_axes in rules:
            if rule_name != name:
                continue
            for axis in _as_tuple(rule_axes):
                if axis not in mesh.shape:
                    raise ValueError(f"rule ({rule_name!r}, {rule_axes!r}) names mesh axis "
                                     f"{axis!r}; mesh axes are {tuple(mesh.shape)}")
            wanted = tuple(a for a in _as_tuple(rule_axes) if a not in used)
            fit = _best_fit(wanted, size, mesh)
            if fit != wanted:
                total = math.prod(mesh.shape[a] for a in wanted)
                got = f"sharded over {fit}" if fit else "replicated"
                reasons.append(f"dim {dim} ({name!r}, size {size}) not divisible by "
                               f"{wanted}={total}: {got}")
            if fit:
                chosen = fit
                break
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else chosen)
    return PartitionSpec(*spec), reasons


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(getattr(x, "shape", np.shape(x)))


def _plan(abstract: Any, logical_specs: Any, mesh: Mesh, rules: Rules) -> Plan:
    fallbacks: list[Fallback] = []

    def one(path, x, logical):
        spec, reasons = resolve_spec(logical, _shape(x), rules, mesh)
        fallbacks.extend(Fallback(jax.tree_util.keystr(path), _shape(x), r) for r in reasons)
        return NamedSharding(mesh, spec)

    # The specs tree is flattened up to the params' structure, so each PartitionSpec arrives
    # whole whether or not this jax version treats it as a pytree leaf.
    shardings = jax.tree_util.tree_map_with_path(one, abstract, logical_specs)
    return Plan(shardings, tuple(fallbacks))


def _log(kind: str, plan: Plan) -> None:
    for f in plan.fallbacks:
        log.info("%s %s %s: %s", kind, f.path, f.shape, f.reason)


def plan_params(abstract_params: Any, logical_specs: Any, mesh: Mesh,
                preset: str | Preset) -> Plan:
    """Shardings of the parameters under `preset`'s param rules, with the fallbacks."""
    return _plan(abstract_params, logical_specs, mesh, get_preset(preset).params)


def param_shardings(abstract_params: Any, logical_specs: Any, mesh: Mesh,
                    preset: str | Preset) -> Any:
    """Pytree of NamedSharding for the params (arrays or ShapeDtypeStructs); fallbacks logged.

    `logical_specs` has the params' structure with a PartitionSpec of logical names per leaf
    (`tam.logical_axes(cfg)`); a shorter spec is padded with None (replicated).
    """
    plan = plan_params(abstract_params, logical_specs, mesh, preset)
    _log("param", plan)
    return plan.shardings


def plan_state(abstract_opt_state: Any, abstract_params: Any, logical_specs: Any, mesh: Mesh,
               preset: str | Preset) -> Plan:
    """Shardings of an optax state under `preset`'s optimiser-state rules, with the fallbacks.

    The leaves of the state that mirror a parameter (Adam mu / nu, EMA copies, ...) get the
    optimiser rules applied to that parameter's logical spec. Everything else is replicated
    (step counts, injected hyperparameters).

    Mirroring is found by path suffix. Optax nests each param-shaped subtree somewhere inside
    the state, e.g. `[0].mu['image_encoder']...['kernel']`, or inside `.inner_states[label]
    .inner_state` for `multi_transform` / `masked`. Masked-out params are `MaskedNode`s, which
    have no leaves. So a state leaf is matched to the parameter whose full path is the longest
    suffix of the leaf's path, and only if the two shapes are equal. A leaf at a param path but
    with another shape (factored statistics such as Adafactor's) stays replicated and is
    reported. Unlike `optax.tree_map_params`, this needs neither the optimizer nor a
    placeholder `init`.
    """
    rules = get_preset(preset).opt_state
    index: dict[tuple[str, ...], tuple[tuple[int, ...], Any]] = {}
    flat_params, treedef = jax.tree_util.tree_flatten_with_path(abstract_params)
    for (path, x), logical in zip(flat_params, treedef.flatten_up_to(logical_specs)):
        index[tuple(str(k) for k in path)] = (_shape(x), logical)
    fallbacks: list[Fallback] = []

    def one(path, x):
        keys, shape = tuple(str(k) for k in path), _shape(x)
        match = next((keys[i:] for i in range(len(keys)) if keys[i:] in index), None)
        if match is None:
            return NamedSharding(mesh, PartitionSpec(*(None,) * len(shape)))
        param_shape, logical = index[match]
        if param_shape != shape:
            fallbacks.append(Fallback(jax.tree_util.keystr(path), shape,
                                      f"param {''.join(match)} has shape {param_shape}: "
                                      "replicated"))
            return NamedSharding(mesh, PartitionSpec(*(None,) * len(shape)))
        spec, reasons = resolve_spec(logical, shape, rules, mesh)
        fallbacks.extend(Fallback(jax.tree_util.keystr(path), shape, r) for r in reasons)
        return NamedSharding(mesh, spec)

    shardings = jax.tree_util.tree_map_with_path(one, abstract_opt_state)
    return Plan(shardings, tuple(fallbacks))


def state_shardings(abstract_opt_state: Any, abstract_params: Any, logical_specs: Any,
                    mesh: Mesh, preset: str | Preset) -> Any:
    """Pytree of NamedSharding for an optax state (see `plan_state`); fallbacks logged."""
    plan = plan_state(abstract_opt_state, abstract_params, logical_specs, mesh, preset)
    _log("opt state", plan)
    return plan.shardings


# ---------------------------------------------------------------------------------------------
# Memory accounting
# ---------------------------------------------------------------------------------------------


def bytes_per_device(abstract: Any, shardings: Any) -> int:
    """Bytes one device holds for `abstract` laid out by `shardings` (a device's shard of each
    leaf; a replicated leaf counts in full). Exact for even shardings, which `resolve_spec`
    guarantees."""
    leaves = jax.tree.leaves(abstract)
    shs = jax.tree.structure(abstract).flatten_up_to(shardings)
    return sum(math.prod(s.shard_shape(_shape(x))) * np.dtype(x.dtype).itemsize
               for x, s in zip(leaves, shs))


def _mib(n: int) -> str:
    return f"{n / 2**20:9.2f} MiB"


def describe_shardings(abstract_params: Any, logical_specs: Any, mesh: Mesh,
                       abstract_opt_state: Any = None,
                       presets: Mapping[str, Preset] | Sequence[str] = PRESETS) -> str:
    """A table: per preset, params / optimiser state bytes per device, how many param arrays
    are split, and how many fallbacks there were."""
    leaves = jax.tree.leaves(abstract_params)
    n_params = sum(math.prod(_shape(x)) for x in leaves)
    total = sum(math.prod(_shape(x)) * np.dtype(x.dtype).itemsize for x in leaves)
    axes = " x ".join(f"{k}={v}" for k, v in mesh.shape.items())
    lines = [f"mesh {axes} ({mesh.size} devices); {n_params:,} params in {len(leaves)} arrays, "
             f"{total / 2**20:.2f} MiB",
             f"{'preset':<8} {'params/device':>14} {'opt/device':>14} {'split':>9} "
             f"{'fallbacks':>9}"]
    names = presets.keys() if isinstance(presets, Mapping) else presets
    for name in names:
        preset = presets[name] if isinstance(presets, Mapping) else get_preset(name)
        p_plan = plan_params(abstract_params, logical_specs, mesh, preset)
        p_bytes = bytes_per_device(abstract_params, p_plan.shardings)
        split = sum(s.shard_shape(_shape(x)) != _shape(x) for x, s in
                    zip(leaves, jax.tree.structure(abstract_params).flatten_up_to(
                        p_plan.shardings)))
        n_fallbacks = len(p_plan.fallbacks)
        opt = "-"
        if abstract_opt_state is not None:
            o_plan = plan_state(abstract_opt_state, abstract_params, logical_specs, mesh, preset)
            opt = _mib(bytes_per_device(abstract_opt_state, o_plan.shardings))
            n_fallbacks += len(o_plan.fallbacks)
        lines.append(f"{name:<8} {_mib(p_bytes):>14} {opt:>14} {split:>4}/{len(leaves):<4} "
                     f"{n_fallbacks:>9}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Creating sharded arrays
# ---------------------------------------------------------------------------------------------


def init_sharded(init_fn: Callable[..., Any], shardings: Any, *args: Any) -> Any:
    """`init_fn(*args)` compiled with `out_shardings=shardings`.

    Each device computes only its own shard. A model (or optimiser state) that does not fit on
    one device is therefore never materialised whole. Pass the params' shardings for
    `tam.init_params`, or `state_shardings(...)` for `tx.init`.
    """
    return jax.jit(init_fn, out_shardings=shardings)(*args)


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying shardings: the input of `jax.jit(f).lower(...)` for
    ahead-of-time compilation, and the target of an Orbax restore onto this mesh."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(_shape(x), x.dtype, sharding=s),
                        abstract, shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over BATCH_AXES, the other axes replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def global_batch(host_batch: Any, mesh: Mesh) -> Any:
    """This host's numpy batch (leaves (b, ...)) -> global jax.Arrays (b * hosts, ...) split
    over BATCH_AXES.

    Each device receives whole examples, so b must be a multiple of this host's number of
    devices in the mesh. (`input_pipeline.device.to_global(batch, mesh, BATCH_AXES)` does the
    same for the pipeline's dict batches; this copy keeps `tam_jax` free of `input_pipeline`.)
    """
    sharding = batch_sharding(mesh)
    local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)

    def one(path, x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % local:
            raise ValueError(f"batch field {jax.tree_util.keystr(path)} of shape {x.shape}: "
                             f"leading axis must be a multiple of this host's {local} devices")
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree_util.tree_map_with_path(one, host_batch)
