"""The train step: it learns, it is the same computation on 8 devices under every sharding
preset as on one, a non-finite step changes nothing, and the pooled memory attention's
gradients agree with finite differences.

Tiny config (128 px, 8 x 8 grid); clips of 2 frames with the GT-mask plan (its compile is the
cheapest: no correction loop; the correction loop's forward is proved against the official
model in test_clip_forward_parity.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from tam_jax import configs, sharding
from tam_jax.models.attention import PooledMemoryCrossAttention
from tam_jax.models.tam import init_params, logical_axes
from tam_jax.training import optimizer, prompts
from tam_jax.training.train_step import StepConfig, TrainState, create_train_state, make_train_step

KIND = prompts.PlanKind(point_input=False, init_prompts=("mask",), corrections=0)
ORDER, CORRECTED = jnp.asarray([0, 1], jnp.int32), jnp.asarray([False, False])


def _batch(b, t=2, o=2, seed=0):
    cfg = configs.get_config("tiny")
    s = cfg.image_size
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, size=(b, t, s, s, 3), dtype=np.uint8)
    masks = np.zeros((b, t, o, s, s), bool)
    for i in range(b):
        for k in range(o):
            for f in range(t):
                y, x = 10 + 30 * k + 4 * f + i, 20 + 5 * f + 3 * i
                masks[i, f, k, y:y + 30, x:x + 40] = True
                images[i, f, y:y + 30, x:x + 40] = (200, 40 * k, 90)  # the object is visible
    valid = np.ones((b, o), bool)
    valid[0, 1] = False  # a padded slot
    return {"images": images, "masks": masks, "obj_valid": valid}


# The tiny variant cut to one block per stage: XLA's CPU compile time of a train step grows
# with the number of ops (minutes for the full tiny model on 2 cores), not with widths.
MICRO = {"vit.depth": 2, "vit.global_att_blocks": (1,), "memory_attention.num_layers": 1,
         "mask_decoder.transformer_depth": 1, "memory_encoder.fuser_layers": 1}


@functools.lru_cache(maxsize=1)
def _setup(lr=3e-3):
    model_cfg = configs.for_training(configs.override(configs.get_config("tiny"), MICRO))
    opt_cfg = optimizer.OptimizerConfig(lr=lr, lr_image_encoder=lr, schedule="constant",
                                        warmup_steps=0, total_steps=100, clip_norm=1.0,
                                        layer_decay=1.0)
    params = init_params(model_cfg, 0)
    opt = optimizer.make_optimizer(opt_cfg, params, model_cfg)
    step_cfg = StepConfig(model=model_cfg, optimizer=opt_cfg, dropout=False)
    step = make_train_step(step_cfg, opt, KIND)
    return model_cfg, params, opt, step, jax.jit(step)


def test_loss_falls_on_a_fixed_batch():
    _, params, opt, _, run = _setup()
    state = create_train_state(params, opt, seed=0)
    batch = jax.tree.map(jnp.asarray, _batch(8))
    losses = []
    for _ in range(30):
        state, m = run(state, batch, ORDER, CORRECTED)
        assert m["finite"] == 1.0
        losses.append(float(m["loss"]))
    print(f"\n  loss {losses[0]:.4f} -> {losses[-1]:.4f} (min {min(losses):.4f})")
    assert int(state.step) == 30
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.slow
def test_sharded_step_equals_single_device_for_every_preset():
    model_cfg, params, opt, step, single = _setup()
    batch = _batch(8)
    state0 = create_train_state(params, opt, seed=1)
    one = jax.devices()[0]
    want_state, want = single(jax.device_put(state0, one), jax.device_put(batch, one), ORDER,
                              CORRECTED)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=4))
    rep = NamedSharding(mesh, PartitionSpec())
    logical = logical_axes(model_cfg)
    abstract = jax.eval_shape(lambda: state0)
    for preset in ("dp", "fsdp", "zero1"):
        p_sh = sharding.param_shardings(abstract.params, logical, mesh, preset)
        o_sh = sharding.state_shardings(abstract.opt_state, abstract.params, logical, mesh,
                                        preset)
        state_sh = TrainState(step=rep, params=p_sh, opt_state=o_sh, rng=rep)
        batch_sh = sharding.batch_sharding(mesh)
        run = jax.jit(step, in_shardings=(state_sh, batch_sh, rep, rep),
                      out_shardings=(state_sh, rep))
        state = jax.device_put(state0, state_sh)
        got_state, got = run(state, jax.device_put(batch, batch_sh), ORDER, CORRECTED)
        n_sharded = sum(len(x.sharding.device_set) > 1 and not x.sharding.is_fully_replicated
                        for x in jax.tree.leaves(got_state.opt_state))
        print(f"\n  {preset}: loss {float(got['loss']):.6f} vs {float(want['loss']):.6f}; "
              f"{n_sharded} sharded optimiser leaves")
        assert n_sharded > 0 or preset == "dp"
        np.testing.assert_allclose(float(got["loss"]), float(want["loss"]), rtol=2e-5)
        np.testing.assert_allclose(float(got["grad_norm"]), float(want["grad_norm"]), rtol=1e-4)
        # Adam's first update is ~ lr * g / (|g| + eps): where |g| is tiny, float
        # reduction-order differences of the gradient move the update by a fraction of lr
        # (measured: up to 1.1e-5 = 0.4 % of lr on 3 of 24576 elements); 1 % of lr is the bar.
        for a, b in zip(jax.tree.leaves(got_state.params), jax.tree.leaves(want_state.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=3e-5, rtol=1e-4)


def test_non_finite_step_changes_nothing():
    _, params, opt, _, run = _setup()
    # one NaN weight in the image encoder -> NaN features -> NaN loss and gradients
    params = jax.tree.map(np.array, params)
    jax.tree.leaves(params["image_encoder"])[0].flat[0] = np.nan
    state = create_train_state(params, opt, seed=0)
    new, m = run(state, jax.tree.map(jnp.asarray, _batch(8)), ORDER, CORRECTED)
    assert m["finite"] == 0.0 and not np.isfinite(float(m["loss"]))
    for a, b in zip(jax.tree.leaves((new.params, new.opt_state)),
                    jax.tree.leaves((state.params, state.opt_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(new.step) == 1  # the step is counted: the trainer reports it and stops


def test_pooled_memory_attention_gradients_match_finite_differences():
    """jax.grad of EfficientTAM's pooled cross-attention (2x2 pooling, ln-area constant on
    the logits, a masked frame, pointer tokens) against central differences along random
    directions in (params, q, k, v). The logits and softmax run in float32 by design (inputs
    here are float64), so differences use eps 1e-3 and agree to ~1e-3 relative; a wrong
    gradient term is off by O(1)."""
    with jax.enable_x64(True):
        g, n, frames, ptr = 4, 16, 3, 4
        attn = PooledMemoryCrossAttention(
            embedding_dim=16, num_heads=2, kv_in_dim=8, feat_hw=(g, g), rope_k_repeat=True,
            pool_window=2, log_area_constant="logits", dtype=jnp.float64)
        rng = np.random.default_rng(0)
        q = jnp.asarray(rng.normal(size=(2, n, 16)))
        k = jnp.asarray(rng.normal(size=(2, frames * n + ptr, 8)))
        v = jnp.asarray(rng.normal(size=(2, frames * n + ptr, 8)))
        valid = np.ones((2, frames * n + ptr), bool)
        valid[1, n:2 * n] = False  # element 1: its second frame is absent
        valid = jnp.asarray(valid)
        params = attn.init(jax.random.key(0), q, k, v, ptr, valid)["params"]
        x0 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), (params, q, k, v))

        def f(x):
            params, q, k, v = x
            return jnp.sum(jnp.sin(attn.apply({"params": params}, q, k, v, ptr, valid)))

        grad = jax.grad(f)(x0)
        leaves, treedef = jax.tree.flatten(x0)
        for seed in range(4):
            r = np.random.default_rng(100 + seed)
            d = treedef.unflatten([jnp.asarray(r.normal(size=x.shape)) for x in leaves])
            analytic = sum(float(jnp.vdot(a, b)) for a, b in
                           zip(jax.tree.leaves(grad), jax.tree.leaves(d)))
            plus = jax.tree.map(lambda x, dx: x + 1e-3 * dx, x0, d)
            minus = jax.tree.map(lambda x, dx: x - 1e-3 * dx, x0, d)
            numeric = float(f(plus) - f(minus)) / 2e-3
            assert abs(analytic - numeric) <= 5e-3 * max(1.0, abs(analytic)), (analytic, numeric)


def _click_clip_grads(corrections: int, corrected, **clip_loss_kwargs):
    """Loss and gradients of the micro model's clip loss on a 3-frame clip of 2 x 2 objects,
    click plan with `corrections` correction clicks on the frames `corrected` marks."""
    from tam_jax.training import clip_forward

    model_cfg, params, *_ = _setup()
    kind = prompts.PlanKind(point_input=True, init_prompts=("click",), corrections=corrections)
    prompt_cfg = prompts.PromptConfig(num_correction_points=corrections)
    batch = _batch(2, t=3)
    batch = {"images": (jnp.asarray(batch["images"], jnp.float32) - 128.0) / 64.0,
             "masks": jnp.asarray(batch["masks"]), "obj_valid": jnp.asarray(batch["obj_valid"])}
    order, corrected = jnp.arange(3, dtype=jnp.int32), jnp.asarray(corrected)
    f = functools.partial(clip_forward.clip_loss, model_cfg, kind=kind, prompt_cfg=prompt_cfg,
                          deterministic=True, **clip_loss_kwargs)
    fn = jax.jit(jax.value_and_grad(
        lambda p: f(p, batch, order=order, corrected=corrected, key=jax.random.key(1),
                    num_objects=3)[0]))
    return fn(params)


def _assert_same_loss_and_grads(got, want):
    """Loss to 1e-5; each gradient leaf to 1e-3 of its largest entry, plus a floor of 1e-6 of
    the largest entry of the whole gradient: recomputed or reordered activations round
    differently in float32 (2e-5 on entries of 0.3 seen), while a term dropped or doubled
    would be off by order 1.

    Why the floor is the tree's, not the leaf's: a plain (unrotated) attention's key bias has an
    exact gradient of zero (softmax does not move when every key logit gains the same q.b),
    so those leaves hold only rounding noise (~1e-8, their remat and plain values differing
    by 1.4e-7 on a 2-core EPYC host, where the largest gradient entry is 7.1) and no relative
    bound fits them."""
    import optax

    (l1, g1), (l0, g0) = got, want
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    assert float(optax.global_norm(g0)) > 0
    floor = 1e-6 * max(float(np.abs(np.asarray(b)).max()) for b in jax.tree.leaves(g0))
    named = jax.tree_util.tree_leaves_with_path(g0)
    for a, (path, b) in zip(jax.tree.leaves(g1), named, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        diff, bound = np.abs(a - b).max(), 1e-3 * np.abs(b).max() + floor
        assert diff <= bound, f"{jax.tree_util.keystr(path)}: |diff| {diff:.3g} > {bound:.3g}"


@pytest.mark.slow  # two gradient compiles of the micro model with correction clicks
def test_remat_of_frames_and_correction_steps_changes_no_number():
    """`remat_frames` (each tracked frame and each correction step a `jax.checkpoint`) trades
    memory for a second forward: the loss and every gradient equal the plain step's. Click
    plan with 2 corrections on frame 0 and on tracked frame 2 (the scanned click loop, inside
    and outside the frame scan)."""
    corrected = [True, False, True]
    _assert_same_loss_and_grads(_click_clip_grads(2, corrected, remat_frames=True),
                                _click_clip_grads(2, corrected, remat_frames=False))


@pytest.mark.slow  # two gradient compiles of the micro model
def test_memory_segments_change_no_number():
    """`memory_segments` (the tracked frames in several scans, each attending only over the
    memory frames it can have) leaves the loss and every gradient as with one scan over every
    slot. 3 frames, a click plan with a correction on tracked frame 1 (written as a
    conditioning frame, then read by frame 2 among 2 kept frames), tiny's pooled memory
    attention: frame 1 attends over one frame (the static unpooled path, as the official rule
    for fewer than two frames)."""
    from tam_jax.training import clip_forward

    assert clip_forward.frame_segments(1, 3, 2, 8) == [(1, 2, 1), (2, 3, 2)]
    corrected = [False, True, False]
    _assert_same_loss_and_grads(_click_clip_grads(1, corrected, memory_segments=2),
                                _click_clip_grads(1, corrected, memory_segments=0))


def test_memory_segments_keep_the_readout_loss():
    """The same with the memory-readout loss on (the demo's recipe: weight 10, and
    `memory_segments` 2): each memory frame's stored GT tokens are read out over the frames a
    scan keeps, so the term, the loss and every gradient equal one scan over every slot. The
    readout term is checked to be in the loss (the loss moves with its weight)."""
    from tam_jax.training import losses

    readout = losses.LossConfig(weight_memory_readout=10.0)
    corrected = [False, False, False]
    with_segments = _click_clip_grads(0, corrected, memory_segments=2, loss_cfg=readout)
    _assert_same_loss_and_grads(with_segments,
                                _click_clip_grads(0, corrected, memory_segments=0,
                                                  loss_cfg=readout))
    without_readout = _click_clip_grads(0, corrected, memory_segments=2)
    assert float(with_segments[0]) > float(without_readout[0]) + 1e-3
