"""SAM 2 training losses against a straightforward PyTorch reference (`data_and_eval.md` §3.5).

The reference is written here from the documented formulas, in float64, one object at a time,
with no padding: padded slots are checked by comparing against the batch without them.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tam_jax.training import losses as L

RTOL = 1e-5
CFG = L.LossConfig()


# ------------------------------------------------------------------ reference (PyTorch, float64)
def ref_focal(x, t, alpha, gamma):
    """Elementwise sigmoid focal loss, textbook form."""
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return loss


def ref_step(cfg, masks, ious, obj, tgt, num_objects):
    """masks (N, M, H, W), ious (N, M), obj (N, 1), tgt (N, H, W) 0/1, all valid -> 4 scalars."""
    tgt = tgt.to(masks.dtype)
    t = tgt[:, None].expand_as(masks)
    focal = ref_focal(masks, t, cfg.focal_alpha, cfg.focal_gamma).flatten(2).mean(-1)  # (N, M)
    sig = torch.sigmoid(masks).flatten(2)
    tf = t.flatten(2)
    dice = 1 - (2 * (sig * tf).sum(-1) + 1) / (sig.sum(-1) + tf.sum(-1) + 1)
    pred = masks.flatten(2) > 0
    tb = tf > 0
    actual = (pred & tb).sum(-1).double() / torch.clamp((pred | tb).sum(-1).double(), min=1.0)
    err = ious - actual.to(ious.dtype)
    iou_l = err.abs() if cfg.iou_use_l1 else err**2
    if masks.shape[1] > 1:
        best = torch.argmin(cfg.weight_mask * focal + cfg.weight_dice * dice, dim=-1)
        rows = torch.arange(masks.shape[0])
        focal, dice, iou_best = focal[rows, best], dice[rows, best], iou_l[rows, best]
        iou_l = iou_l.mean(-1) if cfg.supervise_all_iou else iou_best
    else:
        focal, dice, iou_l = focal[:, 0], dice[:, 0], iou_l[:, 0]
    target_obj = (tgt.flatten(1) > 0).any(-1).to(masks.dtype)
    if cfg.pred_obj_scores:
        cls = ref_focal(obj, target_obj[:, None], cfg.focal_alpha_obj_score,
                        cfg.focal_gamma_obj_score).mean(1)
    else:
        cls = torch.zeros_like(target_obj)
        target_obj = torch.ones_like(target_obj)
    no = max(float(num_objects), 1.0)
    return {
        "loss_mask": (focal * target_obj).sum() / no,
        "loss_dice": (dice * target_obj).sum() / no,
        "loss_iou": (iou_l * target_obj).sum() / no,
        "loss_class": cls.sum() / no,
    }


def ref_total(cfg, comps):
    return sum(w * comps[k] for k, w in cfg.weights.items())


# ------------------------------------------------------------------ helpers
def make_inputs(seed, n=4, m=3, h=24, w=20, empty=(), scale=3.0):
    rng = np.random.default_rng(seed)
    masks = (rng.standard_normal((n, m, h, w)) * scale).astype(np.float32)
    ious = rng.uniform(0, 1, (n, m)).astype(np.float32)
    obj = rng.standard_normal((n, 1)).astype(np.float32) * 2
    tgt = rng.uniform(size=(n, h, w)) < rng.uniform(0.1, 0.6, (n, 1, 1))
    for i in empty:
        tgt[i] = False
    return masks, ious, obj, tgt


def run_jax(cfg, masks, ious, obj, tgt, valid=None, num_objects=None):
    n = masks.shape[0]
    valid = np.ones(n, bool) if valid is None else valid
    num_objects = int(valid.sum()) if num_objects is None else num_objects
    return L.step_losses(cfg, jnp.asarray(masks), jnp.asarray(ious), jnp.asarray(obj),
                         jnp.asarray(tgt), jnp.asarray(valid), num_objects)


def run_ref(cfg, masks, ious, obj, tgt, num_objects=None):
    t = lambda a: torch.tensor(np.asarray(a, np.float64))
    num_objects = masks.shape[0] if num_objects is None else num_objects
    return ref_step(cfg, t(masks), t(ious), t(obj), t(tgt), num_objects)


def assert_comps_close(got, want, rtol=RTOL, atol=0.0):
    assert set(got) == set(L.TERMS)
    for k in L.TERMS:
        assert got[k].dtype == jnp.float32, k
        np.testing.assert_allclose(float(got[k]), float(want[k]), rtol=rtol, atol=atol, err_msg=k)


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("x_scale", [1.0, 30.0, 1024.0])
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 0.0), (0.5, 1.0), (0.25, 0.5)])
def test_sigmoid_focal_elementwise(alpha, gamma, x_scale):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(500) * x_scale).astype(np.float32)
    x[:4] = [-1024.0, 1024.0, -1024.0, 1024.0]
    t = rng.uniform(size=500) < 0.5
    t[:4] = [True, True, False, False]
    got = L.sigmoid_focal(jnp.asarray(x), jnp.asarray(t), alpha, gamma)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    want = ref_focal(xt, torch.tensor(t, dtype=torch.float64), alpha, gamma)
    # atol: the float64 textbook form itself loses digits below ~1e-12 (1 - p_t for |x| > 25).
    np.testing.assert_allclose(np.asarray(got), want.detach().numpy(), rtol=RTOL, atol=1e-10)

    grad = jax.grad(lambda v: L.sigmoid_focal(v, jnp.asarray(t), alpha, gamma).sum())(
        jnp.asarray(x))
    assert np.isfinite(np.asarray(grad)).all()
    want.sum().backward()
    ok = np.isfinite(xt.grad.numpy())  # the textbook form may itself be nan for gamma < 1
    np.testing.assert_allclose(np.asarray(grad)[ok], xt.grad.numpy()[ok], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("m", [3, 1])
@pytest.mark.parametrize("seed", [0, 1])
def test_step_losses_match_reference(m, seed):
    masks, ious, obj, tgt = make_inputs(seed, m=m)
    got = run_jax(CFG, masks, ious, obj, tgt)
    want = run_ref(CFG, masks, ious, obj, tgt)
    assert_comps_close(got, want)
    np.testing.assert_allclose(float(L.total(CFG, got)), float(ref_total(CFG, want)), rtol=RTOL)


@pytest.mark.parametrize("cfg", [
    dataclasses.replace(CFG, supervise_all_iou=False),
    dataclasses.replace(CFG, iou_use_l1=False),
    dataclasses.replace(CFG, pred_obj_scores=False),
    dataclasses.replace(CFG, weight_mask=1.0, weight_dice=5.0, focal_alpha=-1.0, focal_gamma=0.0),
], ids=["best_iou", "mse", "no_obj_scores", "other_weights"])
def test_options_match_reference(cfg):
    masks, ious, obj, tgt = make_inputs(3, m=3, empty=(1,))
    assert_comps_close(run_jax(cfg, masks, ious, obj, tgt), run_ref(cfg, masks, ious, obj, tgt))


def test_absent_object_only_class_term():
    masks, ious, obj, tgt = make_inputs(4, n=2, m=3, empty=(0, 1))
    got = run_jax(CFG, masks, ious, obj, tgt)
    for k in ("loss_mask", "loss_dice", "loss_iou"):
        assert float(got[k]) == 0.0, k
    want = run_ref(CFG, masks, ious, obj, tgt)
    assert float(got["loss_class"]) > 0
    assert_comps_close(got, want)
    # Only the object score gets a gradient.
    g = jax.grad(lambda a, b, c: L.total(CFG, L.step_losses(
        CFG, a, b, c, jnp.asarray(tgt), jnp.ones(2, bool), 2)), argnums=(0, 1, 2))(
        jnp.asarray(masks), jnp.asarray(ious), jnp.asarray(obj))
    assert not np.asarray(g[0]).any() and not np.asarray(g[1]).any()
    assert np.asarray(g[2]).all()


@pytest.mark.parametrize("garbage", [0.0, np.nan, np.inf])
def test_padded_slot_contributes_nothing(garbage):
    masks, ious, obj, tgt = make_inputs(5, n=4, m=3, empty=(2,))
    valid = np.array([True, True, True, False])
    masks[3], ious[3], obj[3] = garbage, garbage, garbage
    tgt[3] = True
    got = run_jax(CFG, masks, ious, obj, tgt, valid, num_objects=3)
    want = run_jax(CFG, masks[:3], ious[:3], obj[:3], tgt[:3], num_objects=3)
    assert_comps_close(got, want, rtol=1e-7)
    assert_comps_close(got, run_ref(CFG, masks[:3], ious[:3], obj[:3], tgt[:3], num_objects=3))

    def f(a, b, c):
        comps = L.step_losses(CFG, a, b, c, jnp.asarray(tgt), jnp.asarray(valid), 3)
        return L.total(CFG, comps)

    grads = jax.grad(f, argnums=(0, 1, 2))(jnp.asarray(masks), jnp.asarray(ious),
                                           jnp.asarray(obj))
    for g in grads:
        g = np.asarray(g)
        assert np.isfinite(g).all()
        assert not g[3].any()
        assert g[:3].any()


def test_absent_logits_minus_1024_finite():
    """The model writes -1024 where it judges the object absent; present targets then give
    large but finite losses and gradients."""
    masks, ious, obj, tgt = make_inputs(6, n=3, m=3, empty=(2,))
    masks[0] = -1024.0
    masks[1, 1] = -1024.0
    masks[2] = -1024.0
    masks[1, 2, :4] = 1024.0
    got = run_jax(CFG, masks, ious, obj, tgt)
    assert all(np.isfinite(float(v)) for v in got.values())
    assert_comps_close(got, run_ref(CFG, masks, ious, obj, tgt))
    grads = jax.grad(lambda a: L.total(CFG, L.step_losses(
        CFG, a, jnp.asarray(ious), jnp.asarray(obj), jnp.asarray(tgt), jnp.ones(3, bool), 3)))(
        jnp.asarray(masks))
    assert np.isfinite(np.asarray(grads)).all()


def test_best_mask_selection():
    """Mask and dice losses are those of argmin(20 focal + dice); IoU loss averages all M."""
    masks, ious, obj, tgt = make_inputs(7, n=3, m=3, scale=2.0)
    best = np.array([1, 2, 0])
    for i, b in enumerate(best):
        masks[i, b] = np.where(tgt[i], 4.0, -4.0)  # clearly the best of the three
    got = run_jax(CFG, masks, ious, obj, tgt)
    rows = np.arange(3)
    single = run_jax(CFG, masks[rows, best][:, None], ious[rows, best][:, None], obj, tgt)
    # (N, 3, H, W) and (N, 1, H, W) sums reduce in different orders: float32 rounding apart
    # (4e-5 relative seen on one CPU), so a looser tolerance than the reference comparisons
    for k in ("loss_mask", "loss_dice", "loss_class"):
        np.testing.assert_allclose(float(got[k]), float(single[k]), rtol=2e-4, err_msg=k)
    assert float(got["loss_iou"]) != pytest.approx(float(single["loss_iou"]))
    assert_comps_close(got, run_ref(CFG, masks, ious, obj, tgt))
    _, metrics = L.step_losses_and_metrics(CFG, jnp.asarray(masks), jnp.asarray(ious),
                                           jnp.asarray(obj), jnp.asarray(tgt),
                                           jnp.ones(3, bool), 3)
    np.testing.assert_allclose(float(metrics["best_iou_sum"]), 3.0, rtol=RTOL)


def test_num_objects_normalisation():
    masks, ious, obj, tgt = make_inputs(8, n=3, m=3, empty=(0,))
    one = run_jax(CFG, masks, ious, obj, tgt, num_objects=1)
    for num in (7, 7.5, jnp.asarray(7, jnp.int32)):
        got = run_jax(CFG, masks, ious, obj, tgt, num_objects=num)
        for k in L.TERMS:
            np.testing.assert_allclose(float(got[k]) * float(num), float(one[k]), rtol=RTOL)
    zero = run_jax(CFG, masks, ious, obj, tgt, num_objects=0)  # clamped to 1
    for k in L.TERMS:
        assert float(zero[k]) == float(one[k])


@pytest.mark.parametrize("m", [3, 1])
def test_grad_matches_torch_autograd(m):
    masks, ious, obj, tgt = make_inputs(9, n=4, m=m, empty=(3,))
    masks[0, 0, :3] = -1024.0

    def f(a, b, c):
        return L.total(CFG, L.step_losses(CFG, a, b, c, jnp.asarray(tgt), jnp.ones(4, bool), 4))

    got = jax.grad(f, argnums=(0, 1, 2))(jnp.asarray(masks), jnp.asarray(ious), jnp.asarray(obj))
    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (masks, ious, obj)]
    ref_total(CFG, ref_step(CFG, *ts, torch.tensor(tgt, dtype=torch.float64), 4)).backward()
    for g, t in zip(got, ts, strict=True):
        want = t.grad.numpy()
        np.testing.assert_allclose(np.asarray(g), want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


def test_bfloat16_logits_accumulate_in_float32():
    masks, ious, obj, tgt = make_inputs(10, n=2, m=3)
    m16 = jnp.asarray(masks, jnp.bfloat16)
    got = L.step_losses(CFG, m16, jnp.asarray(ious, jnp.bfloat16), jnp.asarray(obj, jnp.bfloat16),
                        jnp.asarray(tgt), jnp.ones(2, bool), 2)
    rounded = [np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32))
               for a in (masks, ious, obj)]
    assert_comps_close(got, run_ref(CFG, *rounded, tgt))
    g = jax.grad(lambda a: L.total(CFG, L.step_losses(
        CFG, a, jnp.asarray(ious), jnp.asarray(obj), jnp.asarray(tgt), jnp.ones(2, bool), 2)))(m16)
    assert g.dtype == jnp.bfloat16 and np.isfinite(np.asarray(g, np.float32)).all()


def test_metrics():
    """iou_sum uses the mask with the highest predicted IoU; obj_acc counts valid slots only."""
    h = w = 8
    tgt = np.zeros((3, h, w), bool)
    tgt[0, :4] = True  # present
    tgt[2, :2] = True  # padded slot
    masks = np.full((3, 2, h, w), -5.0, np.float32)
    masks[0, 0, :2] = 5.0  # IoU 0.5
    masks[0, 1, :4] = 5.0  # IoU 1
    ious = np.array([[0.9, 0.1], [0.5, 0.5], [0.5, 0.5]], np.float32)
    obj = np.array([[3.0], [2.0], [1.0]], np.float32)  # object 1 absent but scored present
    _, sums = L.step_losses_and_metrics(CFG, *map(jnp.asarray, (masks, ious, obj, tgt)),
                                        jnp.array([True, True, False]), 2)
    np.testing.assert_allclose(float(sums["iou_sum"]), 0.5)
    np.testing.assert_allclose(float(sums["best_iou_sum"]), 1.0)
    assert float(sums["num_present"]) == 1 and float(sums["num_valid"]) == 2
    means = L.summarize_metrics(sums)
    np.testing.assert_allclose(float(means["obj_acc"]), 0.5)
    np.testing.assert_allclose(float(means["iou"]), 0.5)


def test_composes_with_scan_and_jit():
    """Summing over frames inside a jitted lax.scan equals summing the per-frame results."""
    frames = [make_inputs(20 + i, n=3, m=3, empty=(i % 3,)) for i in range(3)]
    stacked = [jnp.asarray(np.stack(x)) for x in zip(*frames, strict=True)]
    valid = jnp.array([True, True, False])

    @jax.jit
    def scanned(masks, ious, obj, tgt):
        def body(acc, xs):
            comps = L.step_losses(CFG, *xs, valid, 2)
            return jax.tree.map(jnp.add, acc, comps), None

        zeros = {k: jnp.zeros((), jnp.float32) for k in L.TERMS}
        return jax.lax.scan(body, zeros, (masks, ious, obj, tgt))[0]

    got = scanned(*stacked)
    per = [run_jax(CFG, *f, np.asarray(valid), num_objects=2) for f in frames]
    for k in L.TERMS:
        np.testing.assert_allclose(float(got[k]), sum(float(p[k]) for p in per), rtol=RTOL)


def test_low_res_logits_are_upsampled_inside_the_loss():
    """Passing the heads' low-res logits gives the losses, metrics and gradient of passing
    their upsampling (`models.tam.upsample_masks`, what the heads return as high-res)."""
    from tam_jax.models.tam import upsample_masks

    rng = np.random.default_rng(4)
    low = jnp.asarray(rng.normal(size=(3, 3, 16, 16)).astype(np.float32) * 3)
    ious = jnp.asarray(rng.random((3, 3)).astype(np.float32))
    obj = jnp.asarray(rng.normal(size=(3, 1)).astype(np.float32))
    tgt = jnp.asarray(rng.random((3, 64, 64)) > 0.6)
    valid = jnp.array([True, True, False])

    def loss(logits, upsample_first):
        x = upsample_masks(logits, 64) if upsample_first else logits
        terms, metrics = L.step_losses_and_metrics(CFG, x, ious, obj, tgt, valid, 2)
        return L.total(CFG, terms), (terms, metrics)

    (l_hi, aux_hi), g_hi = jax.value_and_grad(loss, has_aux=True)(low, True)
    (l_lo, aux_lo), g_lo = jax.value_and_grad(loss, has_aux=True)(low, False)
    np.testing.assert_allclose(float(l_lo), float(l_hi), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(aux_lo), jax.tree.leaves(aux_hi), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    assert float(jnp.abs(g_hi).max()) > 0
    np.testing.assert_allclose(np.asarray(g_lo), np.asarray(g_hi), rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="only square low-res logits"):
        L.step_losses_and_metrics(CFG, low[..., :8], ious, obj, tgt, valid, 2)
