"""tam_jax/sharding.py on 8 fake CPU devices: meshes, the dp / fsdp / zero1 presets on the real
logical axes of `tiny` and `efficienttam_s` (abstract: nothing allocated), fallback to
replication, optimiser-state matching (adamw, multi_transform, masked, adafactor), sharded
creation with jit out_shardings, bytes per device, global batches and TPU AOT (libtpu only)."""

from __future__ import annotations

import functools
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from tam_jax import aot, configs, sharding
from tam_jax.models import tam

DF = ("data", "fsdp")


@functools.cache
def _model(name: str):
    """(abstract float32 params, logical specs) of a variant. Built from the model's cached
    eval_shape, so only one trace per variant."""
    cfg = configs.get_config(name)
    abstract: dict = {}
    for path, shape in tam.abstract_param_shapes(cfg).items():
        node = abstract
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = jax.ShapeDtypeStruct(shape, jnp.float32)
    return abstract, tam.logical_axes(cfg)


@functools.cache
def _mesh(data: int, fsdp: int):
    return sharding.make_mesh(sharding.MeshConfig(data=data, fsdp=fsdp))


def _get(tree, path: str):
    for key in path.split("/"):
        tree = tree[key]
    return tree


def _spec(sh) -> tuple:
    return tuple(sh.spec)


# --------------------------------------------------------------------------------------------
# Mesh
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("degrees, shape", [((2, 4), (2, 4)), ((1, 8), (1, 8)),
                                            ((8, 1), (8, 1)), ((-1, 2), (4, 2))])
def test_make_mesh(degrees, shape):
    mesh = sharding.make_mesh(sharding.MeshConfig(*degrees))
    assert mesh.axis_names == ("data", "fsdp")
    assert tuple(mesh.shape.values()) == shape
    assert set(mesh.devices.flat) == set(jax.devices())
    assert mesh.axis_types == (AxisType.Auto, AxisType.Auto)


def test_make_mesh_rejects_degrees_that_do_not_tile():
    with pytest.raises(ValueError, match="6 devices, but 8"):
        sharding.make_mesh(sharding.MeshConfig(data=3, fsdp=2))
    with pytest.raises(ValueError, match="fsdp=3 does not divide"):
        sharding.make_mesh(sharding.MeshConfig(data=-1, fsdp=3))
    with pytest.raises(ValueError, match=">= 1"):
        sharding.make_mesh(sharding.MeshConfig(data=0, fsdp=8))


def test_make_mesh_takes_an_explicit_device_list():
    devices = jax.devices()[:4]
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1, fsdp=2), devices)
    assert tuple(mesh.shape.values()) == (2, 2)
    assert set(mesh.devices.flat) == set(devices)


# --------------------------------------------------------------------------------------------
# Presets on the real logical axes
# --------------------------------------------------------------------------------------------

TINY_KERNEL = "image_encoder/trunk/blocks_0/attn/qkv/kernel"  # (32, 96) ("embed", "qkv")
TINY_NORM = "image_encoder/trunk/blocks_0/norm1/scale"  # (32,) ("norm",)
TINY_PIX = "memory_encoder/pix_feat_proj/kernel"  # (1, 1, 64, 64) (-, -, "hidden", "hidden")
TINY_PE = "sam_prompt_encoder/pe_layer/positional_encoding_gaussian_matrix"  # (2, 32) (-, -)

# preset -> {path: (param spec, Adam moment spec)} on the (2, 4) mesh.
TINY_EXPECTED = {
    "dp": {TINY_KERNEL: ((None, None), (None, None)), TINY_NORM: ((None,), (None,)),
           TINY_PIX: ((None,) * 4, (None,) * 4), TINY_PE: ((None, None), (None, None))},
    "fsdp": {TINY_KERNEL: (("fsdp", None), ("fsdp", None)), TINY_NORM: ((None,), (None,)),
             TINY_PIX: ((None, None, "fsdp", None),) * 2, TINY_PE: ((None, None),) * 2},
    "zero1": {TINY_KERNEL: ((None, None), (DF, None)), TINY_NORM: ((None,), (DF,)),
              TINY_PIX: ((None,) * 4, (None, None, DF, None)),
              TINY_PE: ((None, None), (None, None))},
}


@pytest.mark.parametrize("preset", ["dp", "fsdp", "zero1"])
def test_presets_on_tiny(preset):
    abstract, logical = _model("tiny")
    mesh = _mesh(2, 4)
    opt = jax.eval_shape(optax.adamw(1e-3).init, abstract)
    p_sh = sharding.param_shardings(abstract, logical, mesh, preset)
    o_sh = sharding.state_shardings(opt, abstract, logical, mesh, preset)
    assert jax.tree.structure(p_sh) == jax.tree.structure(abstract)
    assert jax.tree.structure(o_sh) == jax.tree.structure(opt)
    for path, (param_spec, moment_spec) in TINY_EXPECTED[preset].items():
        assert _spec(_get(p_sh, path)) == param_spec, path
        assert _spec(_get(o_sh[0].mu, path)) == moment_spec, path
        assert _spec(_get(o_sh[0].nu, path)) == moment_spec, path
    assert _spec(o_sh[0].count) == ()


S_QKV = "image_encoder/trunk/blocks_0/attn/qkv/kernel"  # (384, 1152) ("embed", "qkv")
S_MLP2 = "image_encoder/trunk/blocks_0/mlp/layers_1/kernel"  # (1536, 384) ("mlp", "embed")
S_PATCH = "image_encoder/trunk/patch_embed/proj/kernel"  # (16, 16, 3, 384) (-, -, -, "embed")
S_MEM_FF = "memory_attention/layers_0/linear1/kernel"  # (256, 2048) ("hidden", "mlp")
S_NORM = "memory_attention/layers_0/norm1/scale"  # (256,) ("norm",)


@pytest.mark.parametrize("degrees", [(2, 4), (1, 8), (8, 1)])
def test_presets_on_efficienttam_s(degrees):
    abstract, logical = _model("efficienttam_s")
    mesh = _mesh(*degrees)
    fsdp = sharding.param_shardings(abstract, logical, mesh, "fsdp")
    assert _spec(_get(fsdp, S_QKV)) == ("fsdp", None)
    assert _spec(_get(fsdp, S_MLP2)) == ("fsdp", None)
    assert _spec(_get(fsdp, S_PATCH)) == (None, None, None, "fsdp")
    assert _spec(_get(fsdp, S_MEM_FF)) == ("fsdp", None)
    assert _spec(_get(fsdp, S_NORM)) == (None,)
    for preset in ("dp", "zero1"):
        params = sharding.param_shardings(abstract, logical, mesh, preset)
        assert all(s.is_fully_replicated for s in jax.tree.leaves(params))
    opt = jax.eval_shape(optax.adam(1e-3).init, abstract)
    zero1 = sharding.state_shardings(opt, abstract, logical, mesh, "zero1")
    assert _spec(_get(zero1[0].mu, S_QKV)) == (DF, None)
    assert _spec(_get(zero1[0].nu, S_NORM)) == (DF,)
    # Every width of S divides 8 except the 1- to 16-channel mask convs.
    plan = sharding.plan_params(abstract, logical, mesh, "fsdp")
    assert {f.path.split("]")[0] for f in plan.fallbacks} <= {"['mask_downsample'",
                                                              "['sam_prompt_encoder'"}


def test_preset_rules_are_flax_logical_axis_rules():
    """The same table drives `nn.logical_axis_rules` for activation constraints."""
    rules = sharding.PRESETS["fsdp"].params
    assert nn.logical_to_mesh_axes(("act_batch", None), rules) == P(DF, None)
    # Flax, like resolve_spec, lets a mesh axis shard one dimension only.
    assert nn.logical_to_mesh_axes(("embed", "mlp"), rules) == P("fsdp", None)
    with pytest.raises(KeyError, match="unknown sharding preset"):
        sharding.get_preset("zero3")


# --------------------------------------------------------------------------------------------
# Fallback
# --------------------------------------------------------------------------------------------


def test_non_dividing_dimension_is_replicated_and_reported(caplog):
    abstract, logical = _model("tiny")
    mesh = _mesh(2, 4)
    path = "sam_prompt_encoder/mask_downscaling_3/kernel"  # (2, 2, 2, 8) (-, -, in, out)
    with caplog.at_level(logging.INFO, logger="tam_jax.sharding"):
        shardings = sharding.param_shardings(abstract, logical, mesh, "fsdp")
    # fsdp=4 does not divide conv_in=2, so it goes to the next named dimension.
    assert _spec(_get(shardings, path)) == (None, None, None, "fsdp")
    plan = sharding.plan_params(abstract, logical, mesh, "fsdp")
    (fallback,) = [f for f in plan.fallbacks if "['mask_downscaling_3']['kernel']" in f.path]
    assert fallback.shape == (2, 2, 2, 8)
    assert "dim 2" in fallback.reason and "replicated" in fallback.reason
    assert "mask_downscaling_3" in caplog.text


def test_resolve_spec_fallback_rules():
    mesh = _mesh(2, 4)
    rules = (("x", DF), ("y", "fsdp"))
    assert sharding.resolve_spec(P("x"), (8,), rules, mesh) == (P(DF), [])
    spec, reasons = sharding.resolve_spec(P("x"), (4,), rules, mesh)
    assert spec == P("fsdp") and "sharded over ('fsdp',)" in reasons[0]  # the larger subset
    assert sharding.resolve_spec(P("x"), (6,), rules, mesh)[0] == P("data")
    spec, reasons = sharding.resolve_spec(P("x"), (3,), rules, mesh)
    assert spec == P(None) and "replicated" in reasons[0]
    # A mesh axis shards at most one dimension: the second "y" is replicated, no fallback.
    assert sharding.resolve_spec(P("y", "y"), (8, 8), rules, mesh) == (P("fsdp", None), [])
    # A shorter logical spec is padded with None; size-1 axes keep the spec mesh-independent.
    assert sharding.resolve_spec(P("y"), (8, 3), rules, _mesh(8, 1)) == (P("fsdp", None), [])
    with pytest.raises(ValueError, match="mesh axis 'model'"):
        sharding.resolve_spec(P("x"), (8,), (("x", "model"),), mesh)


# --------------------------------------------------------------------------------------------
# Optimiser state
# --------------------------------------------------------------------------------------------


def test_zero1_shards_adam_moments_but_not_params():
    abstract, logical = _model("efficienttam_s")
    mesh = _mesh(2, 4)
    opt = jax.eval_shape(optax.adamw(1e-4, weight_decay=0.05).init, abstract)
    p_sh = sharding.param_shardings(abstract, logical, mesh, "zero1")
    o_sh = sharding.state_shardings(opt, abstract, logical, mesh, "zero1")
    assert all(s.is_fully_replicated for s in jax.tree.leaves(p_sh))
    assert o_sh[0].count.is_fully_replicated
    moments = jax.tree.leaves((o_sh[0].mu, o_sh[0].nu))
    assert sum(not s.is_fully_replicated for s in moments) / len(moments) > 0.9
    dp_opt = sharding.state_shardings(opt, abstract, logical, mesh, "dp")
    ratio = sharding.bytes_per_device(opt, o_sh) / sharding.bytes_per_device(opt, dp_opt)
    assert ratio < 1.1 / 8


def test_state_matching_through_multi_transform_masked_and_adafactor():
    abstract, logical = _model("tiny")
    mesh = _mesh(2, 4)
    is_norm = lambda path, _: any(getattr(k, "key", None) in ("norm1", "norm2") for k in path)
    labels = jax.tree_util.tree_map_with_path(
        lambda p, x: "frozen" if is_norm(p, x) else "train", abstract)
    decay = jax.tree.map(lambda x: x.ndim > 1, abstract)
    tx = optax.multi_transform({"train": optax.adamw(1e-3, mask=decay),
                                "frozen": optax.set_to_zero()}, labels)
    opt = jax.eval_shape(tx.init, abstract)
    o_sh = sharding.state_shardings(opt, abstract, logical, mesh, "zero1")
    assert jax.tree.structure(o_sh) == jax.tree.structure(opt)
    mu = o_sh.inner_states["train"].inner_state[0].mu  # frozen params are MaskedNodes here
    assert _spec(_get(mu, TINY_KERNEL)) == (DF, None)
    assert isinstance(_get(mu, TINY_NORM), optax.MaskedNode)

    masked = optax.masked(optax.adam(1e-3), decay)
    m_opt = jax.eval_shape(masked.init, abstract)
    m_sh = sharding.state_shardings(m_opt, abstract, logical, mesh, "fsdp")
    assert jax.tree.structure(m_sh) == jax.tree.structure(m_opt)
    assert _spec(_get(m_sh.inner_state[0].nu, TINY_KERNEL)) == ("fsdp", None)

    # Adafactor keeps (1,)-shaped row / column stats at param paths: replicated, reported.
    a_opt = jax.eval_shape(optax.adafactor(1e-3).init, abstract)
    plan = sharding.plan_state(a_opt, abstract, logical, mesh, "zero1")
    assert _spec(_get(plan.shardings[0].v_row, TINY_KERNEL)) == (None,)
    assert _spec(_get(plan.shardings[0].v, TINY_KERNEL)) == (DF, None)
    assert any("v_row" in f.path and "has shape" in f.reason for f in plan.fallbacks)


# --------------------------------------------------------------------------------------------
# Creating sharded arrays
# --------------------------------------------------------------------------------------------


def _assert_placed(arrays, shardings):
    for x, s in zip(jax.tree.leaves(arrays), jax.tree.leaves(shardings), strict=True):
        assert x.sharding.mesh == s.mesh and x.sharding.spec == s.spec
        assert x.addressable_shards[0].data.shape == s.shard_shape(x.shape)


def test_init_sharded_small_tree_and_zero1_adam_state():
    mesh = _mesh(2, 4)
    logical = {"w": P("embed", "mlp"), "b": P("mlp"), "scale": P("norm")}

    def init(key):
        return {"w": jax.random.normal(key, (64, 32)), "b": jnp.zeros((32,)),
                "scale": jnp.ones((32,))}

    abstract = jax.eval_shape(init, jax.random.key(0))
    p_sh = sharding.param_shardings(abstract, logical, mesh, "fsdp")
    params = sharding.init_sharded(init, p_sh, jax.random.key(0))
    _assert_placed(params, p_sh)
    assert params["w"].addressable_shards[0].data.shape == (16, 32)

    replicated = sharding.param_shardings(abstract, logical, mesh, "zero1")
    params = sharding.init_sharded(init, replicated, jax.random.key(0))
    tx = optax.adam(1e-3)
    o_sh = sharding.state_shardings(jax.eval_shape(tx.init, abstract), abstract, logical,
                                    mesh, "zero1")
    state = sharding.init_sharded(tx.init, o_sh, params)
    _assert_placed(state, o_sh)
    assert state[0].mu["w"].addressable_shards[0].data.shape == (8, 32)
    assert params["w"].sharding.is_fully_replicated


@pytest.mark.slow  # compiling the tiny model's init: ~35-60 s of XLA:CPU time here
def test_init_sharded_real_model():
    cfg = configs.get_config("tiny")
    abstract, logical = _model("tiny")
    mesh = _mesh(2, 4)
    p_sh = sharding.param_shardings(abstract, logical, mesh, "fsdp")
    # An rbg key roughly halves XLA:CPU compile time against threefry's unrolled rounds.
    key = jax.random.key(0, impl="rbg")
    params = sharding.init_sharded(lambda k: tam.init_params(cfg, k), p_sh, key)
    assert jax.tree.structure(params) == jax.tree.structure(abstract)
    _assert_placed(params, p_sh)
    assert _get(params, TINY_KERNEL).addressable_shards[0].data.shape == (8, 96)


def test_with_shardings_for_lowering():
    abstract, logical = _model("tiny")
    mesh = _mesh(2, 4)
    p_sh = sharding.param_shardings(abstract, logical, mesh, "fsdp")
    sds = sharding.with_shardings(abstract, p_sh)
    assert _get(sds, TINY_KERNEL).sharding.spec == P("fsdp", None)
    jax.jit(lambda p: sum(jnp.sum(x) for x in jax.tree.leaves(p))).lower(sds)


# --------------------------------------------------------------------------------------------
# Memory accounting
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("degrees", [(2, 4), (1, 8)])
def test_fsdp_shrinks_bytes_per_device(degrees):
    abstract, logical = _model("efficienttam_s")
    mesh = _mesh(*degrees)
    fsdp = degrees[1]
    dp_bytes = sharding.bytes_per_device(
        abstract, sharding.param_shardings(abstract, logical, mesh, "dp"))
    fsdp_bytes = sharding.bytes_per_device(
        abstract, sharding.param_shardings(abstract, logical, mesh, "fsdp"))
    assert dp_bytes == 34_056_098 * 4
    # Norms, the mask convs and the positional matrix stay replicated: a few % on top.
    assert dp_bytes / fsdp <= fsdp_bytes < 1.1 * dp_bytes / fsdp


def test_describe_shardings():
    abstract, logical = _model("efficienttam_s")
    opt = jax.eval_shape(optax.adam(1e-3).init, abstract)
    text = sharding.describe_shardings(abstract, logical, _mesh(2, 4), opt)
    assert "34,056,098 params" in text
    rows = {line.split()[0]: line for line in text.splitlines()[2:]}
    assert set(rows) == {"dp", "fsdp", "zero1"}
    assert "129.91 MiB" in rows["dp"] and "259.83 MiB" in rows["dp"]
    assert " 0/455" in rows["zero1"]


# --------------------------------------------------------------------------------------------
# Host batches
# --------------------------------------------------------------------------------------------


def test_global_batch():
    mesh = _mesh(2, 4)
    host = {"images": np.arange(8 * 3, dtype=np.float32).reshape(8, 3),
            "ids": np.arange(8, dtype=np.int32)}
    batch = sharding.global_batch(host, mesh)
    for name, x in batch.items():
        assert x.sharding.spec == P(DF)
        assert x.addressable_shards[0].data.shape == (1,) + host[name].shape[1:]
        np.testing.assert_array_equal(np.asarray(x), host[name])
    with pytest.raises(ValueError, match="multiple of this host's 8 devices"):
        sharding.global_batch({"images": np.zeros((6, 3))}, mesh)
    with pytest.raises(ValueError, match=r"\['step'\]"):
        sharding.global_batch({"step": np.zeros(())}, mesh)


# --------------------------------------------------------------------------------------------
# TPU ahead-of-time compilation (only where libtpu is installed)
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(aot.libtpu_path() is None, reason="libtpu not installed (`make libtpu`)")
def test_tpu_topology_mesh_and_aot_compile():
    aot.load_libtpu()
    devices = aot.topology_devices("v5e:4x4")
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1, fsdp=4), devices)
    assert tuple(mesh.shape.values()) == (4, 4)
    abstract, logical = _model("efficienttam_s")
    sds = sharding.with_shardings(
        abstract, sharding.param_shardings(abstract, logical, mesh, "fsdp"))
    compiled = jax.jit(lambda p: sum(jnp.sum(x * x) for x in jax.tree.leaves(p))).lower(
        sds).compile()
    per_device = compiled.memory_analysis().argument_size_in_bytes
    assert per_device < 34_056_098 * 4 / 3  # about a quarter of the f32 params
