"""The AdamW recipe: schedules, parameter classification, jitted steps on sharded params
against a numpy reference (clipping, lr groups, decoupled decay, freezing), abstract init."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tam_jax import configs
from tam_jax.models.tam import abstract_param_shapes
from tam_jax.training import optimizer as opt
from tam_jax.training.optimizer import OptimizerConfig


def _nest(flat: dict) -> dict:
    """{path tuple: leaf} -> nested dict."""
    tree: dict = {}
    for path, leaf in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = leaf
    return tree


def _abstract(name: str) -> dict:
    shapes = abstract_param_shapes(configs.get_config(name))
    return _nest({k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()})


# --- schedules ------------------------------------------------------------------------------


def test_cosine_schedule():
    f = opt.lr_multiplier(OptimizerConfig(schedule="cosine", warmup_steps=10, total_steps=110))
    expected = {0: 0.0, 5: 0.5, 10: 1.0, 35: 0.1 + 0.45 * (1 + math.cos(math.pi / 4)),
                60: 0.55, 110: 0.1, 500: 0.1}
    for step, want in expected.items():
        np.testing.assert_allclose(float(f(step)), want, rtol=1e-6, atol=1e-7, err_msg=step)


def test_rsqrt_schedule_of_the_image_pretraining():
    # Paper stage 1: 1k warm-up, 5k cool-down, 90k steps; timescale = warm-up.
    f = opt.lr_multiplier(OptimizerConfig(
        schedule="rsqrt", warmup_steps=1000, cooldown_steps=5000, total_steps=90_000))
    expected = {0: 0.0, 500: 0.5, 1000: 1.0, 4000: 0.5, 85_000: math.sqrt(1 / 85),
                87_500: 0.5 * math.sqrt(1 / 87.5), 90_000: 0.0, 95_000: 0.0}
    for step, want in expected.items():
        np.testing.assert_allclose(float(f(step)), want, rtol=1e-6, atol=1e-7, err_msg=step)


def test_constant_schedule_and_logged_rates_under_jit():
    cfg = OptimizerConfig(schedule="constant", warmup_steps=4, lr=1e-3, lr_image_encoder=None)
    f = opt.lr_multiplier(cfg)
    assert [float(f(s)) for s in (0, 1, 4, 1000)] == [0.0, 0.25, 1.0, 1.0]
    rates = jax.jit(lambda s: opt.learning_rates(cfg, s))(jnp.int32(2))
    np.testing.assert_allclose(float(rates["lr"]), 5e-4, rtol=1e-6)
    np.testing.assert_allclose(float(rates["lr_image_encoder"]), 5e-4, rtol=1e-6)
    rates = opt.learning_rates(OptimizerConfig(warmup_steps=0, total_steps=10), 0)
    np.testing.assert_allclose([float(rates["lr"]), float(rates["lr_image_encoder"])],
                               [3e-4, 6e-5], rtol=1e-6)


def test_config_validation():
    with pytest.raises(ValueError, match="layer_decay"):
        OptimizerConfig(layer_decay=0.0)
    with pytest.raises(ValueError, match="cooldown_steps is for the rsqrt"):
        OptimizerConfig(schedule="cosine", cooldown_steps=5)
    with pytest.raises(ValueError, match="schedule must be"):
        OptimizerConfig(schedule="linear")
    with pytest.raises(ValueError, match="exceed total_steps"):
        OptimizerConfig(schedule="rsqrt", warmup_steps=10, cooldown_steps=10, total_steps=15)
    with pytest.raises(ValueError, match="rsqrt_timescale"):
        OptimizerConfig(schedule="rsqrt", warmup_steps=0, total_steps=15)
    assert OptimizerConfig(freeze=["image_encoder"]).freeze == ("image_encoder",)


# --- classification -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["efficienttam_ti", "efficienttam_s"])
def test_every_leaf_of_the_released_trees_is_classified(name):
    tree, depth = _abstract(name), configs.get_config(name).vit.depth
    assert depth == 12
    ocfg = OptimizerConfig()
    why = opt.explain(tree, configs.get_config(name), ocfg)
    assert len(why) == len(jax.tree.leaves(tree)) == 455
    label = {p: lab for p, (lab, _) in why.items()}
    enc, trunk = "lr_image_encoder", "image_encoder/trunk"
    # Block i -> layer i + 1 -> scale 0.8 ** (L + 1 - (i + 1)).
    assert label[f"{trunk}/blocks_3/attn/qkv/kernel"] == f"{enc}*0.8^9/decay"
    assert label[f"{trunk}/blocks_11/mlp/layers_1/kernel"] == f"{enc}*0.8^1/decay"
    assert label[f"{trunk}/blocks_3/norm1/scale"] == f"{enc}*0.8^9/no_decay"
    assert label[f"{trunk}/blocks_3/attn/qkv/bias"] == f"{enc}*0.8^9/no_decay"
    assert why[f"{trunk}/pos_embed"][1].layer_id == 0
    assert label[f"{trunk}/pos_embed"] == f"{enc}*0.8^13/no_decay"
    assert label[f"{trunk}/patch_embed/proj/kernel"] == f"{enc}*0.8^13/decay"
    assert label["image_encoder/neck/convs_0/conv_3x3/kernel"] == f"{enc}/decay"
    assert label["sam_mask_decoder/transformer/layers_0/mlp/layers_0/kernel"] == "lr/decay"
    assert label["sam_mask_decoder/iou_token/embedding"] == "lr/no_decay"
    assert label["memory_encoder/fuser/layers_0/gamma"] == "lr/no_decay"
    assert label["no_obj_ptr"] == "lr/no_decay"
    assert label["sam_prompt_encoder/pe_layer/positional_encoding_gaussian_matrix"] == "frozen"
    decayed = {p for p, (_, rule) in why.items() if rule.decay}
    assert decayed == {p for p in why if p.endswith("/kernel")}
    # Encoder layer ids 0..L+1 and the rest, each decayed or not, plus "frozen".
    assert len(set(label.values())) == 2 * (depth + 2) + 2 + 1


def test_unknown_leaves_and_prefixes_fail_loud():
    ocfg = OptimizerConfig()
    leaf = jax.ShapeDtypeStruct((3, 3), jnp.float32)
    with pytest.raises(ValueError, match="mask_decoder/new_thing.*no optimiser table"):
        opt.param_groups({"mask_decoder": {"new_thing": leaf}}, None, ocfg)
    with pytest.raises(ValueError, match="kernel of rank 1"):
        opt.param_groups({"head": {"kernel": jax.ShapeDtypeStruct((3,), jnp.float32)}},
                         None, ocfg)
    with pytest.raises(ValueError, match="match no parameter"):
        opt.param_groups({"head": {"kernel": leaf}}, None, OptimizerConfig(freeze=("heda",)))
    with pytest.raises(ValueError, match="depth"):
        opt.param_groups(_abstract("tiny"), configs.get_config("efficienttam_ti"), ocfg)


# --- steps against numpy, sharded under jit ------------------------------------------------

# A toy tree with the real path conventions and a 2-block ViT, so the layer-scale exponent is
# 3 - layer id. Leaves whose first dim is a multiple of 8 are sharded over the 8 fake devices.
_SHAPES = {
    ("image_encoder", "trunk", "pos_embed"): (1, 5, 8),
    ("image_encoder", "trunk", "patch_embed", "proj", "kernel"): (2, 2, 3, 8),
    ("image_encoder", "trunk", "patch_embed", "proj", "bias"): (8,),
    ("image_encoder", "trunk", "blocks_0", "attn", "qkv", "kernel"): (8, 24),
    ("image_encoder", "trunk", "blocks_0", "norm1", "scale"): (8,),
    ("image_encoder", "trunk", "blocks_1", "attn", "qkv", "kernel"): (8, 24),
    ("image_encoder", "trunk", "blocks_1", "attn", "qkv", "bias"): (24,),
    ("image_encoder", "neck", "conv", "kernel"): (1, 1, 8, 6),
    ("image_encoder", "neck", "norm", "scale"): (6,),
    ("sam_mask_decoder", "mlp", "kernel"): (16, 3),
    ("sam_mask_decoder", "mlp", "bias"): (3,),
    ("sam_mask_decoder", "iou_token", "embedding"): (1, 6),
    ("sam_prompt_encoder", "pe_layer", "positional_encoding_gaussian_matrix"): (2, 3),
    ("memory_encoder", "out_proj", "kernel"): (8, 3),
}
_LR, _LR_ENC, _DECAY, _WD = 1e-2, 2e-3, 0.5, 0.1
# Hand-written: (lr base, layer scale, decayed?) per leaf; None = frozen.
_EXPECTED = {
    ("image_encoder", "trunk", "pos_embed"): (_LR_ENC, _DECAY**3, False),
    ("image_encoder", "trunk", "patch_embed", "proj", "kernel"): (_LR_ENC, _DECAY**3, True),
    ("image_encoder", "trunk", "patch_embed", "proj", "bias"): (_LR_ENC, _DECAY**3, False),
    ("image_encoder", "trunk", "blocks_0", "attn", "qkv", "kernel"): (_LR_ENC, _DECAY**2, True),
    ("image_encoder", "trunk", "blocks_0", "norm1", "scale"): (_LR_ENC, _DECAY**2, False),
    ("image_encoder", "trunk", "blocks_1", "attn", "qkv", "kernel"): (_LR_ENC, _DECAY, True),
    ("image_encoder", "trunk", "blocks_1", "attn", "qkv", "bias"): (_LR_ENC, _DECAY, False),
    ("image_encoder", "neck", "conv", "kernel"): (_LR_ENC, 1.0, True),
    ("image_encoder", "neck", "norm", "scale"): (_LR_ENC, 1.0, False),
    ("sam_mask_decoder", "mlp", "kernel"): (_LR, 1.0, True),
    ("sam_mask_decoder", "mlp", "bias"): (_LR, 1.0, False),
    ("sam_mask_decoder", "iou_token", "embedding"): (_LR, 1.0, False),
    ("sam_prompt_encoder", "pe_layer", "positional_encoding_gaussian_matrix"): None,
    ("memory_encoder", "out_proj", "kernel"): None,
}


def _numpy_adamw(params, grads_seq, mults, clip, b1=0.9, b2=0.999, eps=1e-8):
    """Reference AdamW written out per leaf: clip over trainable leaves, moments, bias
    correction, update = -lr * scale * mult * (m_hat / (sqrt(v_hat) + eps) + wd * p)."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items() if _EXPECTED[k]}
    v = {k: np.zeros_like(x) for k, x in m.items()}
    for t, (grads, mult) in enumerate(zip(grads_seq, mults, strict=True), start=1):
        norm = math.sqrt(sum(float(np.sum(np.square(grads[k], dtype=np.float64))) for k in m))
        factor = clip / norm if norm > clip else 1.0
        for k in m:
            g = grads[k] * factor
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            adam = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            base, scale, decayed = _EXPECTED[k]
            wd = _WD if decayed else 0.0
            p[k] = p[k] - base * scale * mult * (adam + wd * p[k])
    return p


def _state_sizes(state):
    """(elements in non-scalar state leaves, number of scalar leaves)."""
    leaves = jax.tree.leaves(state)
    return sum(x.size for x in leaves if x.ndim), sum(1 for x in leaves if not x.ndim)


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def test_sharded_jitted_steps_match_a_numpy_adamw_reference():
    rng = np.random.default_rng(0)
    flat = {k: rng.standard_normal(s).astype(np.float32) for k, s in _SHAPES.items()}
    # Step 2's grads are tiny, so clipping is active on steps 1 and 3 only.
    grads_seq = [{k: (sc * rng.standard_normal(s)).astype(np.float32) for k, s in _SHAPES.items()}
                 for sc in (1.0, 1e-3, 2.0)]
    ocfg = OptimizerConfig(lr=_LR, lr_image_encoder=_LR_ENC, layer_decay=_DECAY,
                           weight_decay=_WD, clip_norm=0.1, schedule="constant",
                           warmup_steps=2, total_steps=10, freeze=("memory_encoder",))
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))

    def shard(x):
        spec = P("data") if x.shape[0] % 8 == 0 else P()
        return jax.device_put(x, NamedSharding(mesh, spec))

    params = jax.tree.map(shard, _nest(flat))
    tx = opt.make_optimizer(ocfg, params)  # ViT depth inferred from the tree

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = jax.jit(tx.init)(params)
    trainable = sum(math.prod(s) for k, s in _SHAPES.items() if _EXPECTED[k])
    assert _state_sizes(state) == (2 * trainable, 2)  # moments; Adam and schedule counts
    new = params
    for grads in grads_seq:
        new, state = step(new, state, jax.tree.map(shard, _nest(grads)))
    # The update of count t uses the schedule at t: 0, 0.5, 1 (warm-up of 2).
    want = _numpy_adamw(flat, grads_seq, mults=[0.0, 0.5, 1.0], clip=0.1)
    for k in _SHAPES:
        got = np.asarray(_get(new, k))
        np.testing.assert_allclose(got, want[k], rtol=1e-5, atol=1e-7, err_msg="/".join(k))
        assert np.array_equal(got, flat[k]) == (_EXPECTED[k] is None), k
    qkv = ("image_encoder", "trunk", "blocks_0", "attn", "qkv", "kernel")
    assert _get(new, qkv).sharding == _get(params, qkv).sharding
    label, _ = opt.explain(params, None, ocfg)["/".join(qkv)]
    assert label == "lr_image_encoder*0.5^2/decay"
    frozen_row = [r for r in opt.describe(params, None, ocfg).splitlines()
                  if r.startswith("frozen")]
    assert frozen_row[0].split()[1:3] == ["2", "30"]  # gaussian matrix + memory_encoder kernel


def test_abstract_init_of_the_tiny_tree_holds_moments_of_trainable_leaves_only():
    cfg, abstract = configs.get_config("tiny"), _abstract("tiny")
    ocfg = OptimizerConfig(freeze=("image_encoder",), warmup_steps=1, total_steps=10)
    tx = opt.make_optimizer(ocfg, abstract, cfg)
    state = jax.eval_shape(jax.jit(tx.init), abstract)
    why = opt.explain(abstract, cfg, ocfg)
    sizes = {jax.tree_util.keystr(p, simple=True, separator="/"): x.size
             for p, x in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    trainable = sum(n for p, n in sizes.items() if why[p][0] != "frozen")
    assert 0 < trainable < sum(sizes.values())
    assert _state_sizes(state) == (2 * trainable, 2)
