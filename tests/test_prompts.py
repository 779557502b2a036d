"""Prompt simulation (SAM 2's `SAM2Train` rules): the host-side plan and the device clicks /
boxes. Statistics use many draws with loose bounds (a wrong rule is far outside them)."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tam_jax.training import prompts

CFG = prompts.PromptConfig()


def _plans(num_frames, n=2000, cfg=CFG):
    return [prompts.sample_plan(cfg, num_frames, prompts.plan_rng(7, s)) for s in range(n)]


def test_plan_structure_and_frequencies():
    plans = _plans(8)
    kinds = collections.Counter()
    for p in plans:
        k = p.kind
        order, corrected = list(p.order), list(p.corrected)
        assert sorted(order) == list(range(8)) and order[0] == 0
        rest = order[k.num_init_cond:]
        assert rest == sorted(rest)  # the other frames in increasing order
        assert 1 <= k.num_init_cond <= 2
        if k.point_input:
            assert all(x in ("click", "box") for x in k.init_prompts)
            assert all(corrected[:k.num_init_cond])  # every init frame is corrected
            assert k.num_init_cond <= sum(corrected) <= 2
            assert k.corrections == 7
        else:
            assert k.init_prompts == ("mask",) * k.num_init_cond
            assert not any(corrected) and k.corrections == 0
        kinds["points" if k.point_input else "mask"] += 1
        kinds[f"init{k.num_init_cond}"] += 1
        for pr in k.init_prompts:
            kinds[pr] += 1
        if k.point_input and k.num_init_cond == 1:
            kinds["extra_corrected"] += sum(corrected) - 1
            kinds["one_init_points"] += 1
    n = len(plans)
    assert abs(kinds["points"] / n - 0.5) < 0.05
    assert abs(kinds["init1"] / n - 0.5) < 0.05
    assert abs(kinds["box"] / (kinds["box"] + kinds["click"]) - 0.5) < 0.05
    # one init frame + point input: the number of corrected frames is uniform on {1, 2}
    assert abs(kinds["extra_corrected"] / kinds["one_init_points"] - 0.5) < 0.07


def test_plan_images_and_determinism():
    for p in _plans(1, n=200):
        assert p.kind.point_input and p.kind.num_init_cond == 1
        assert p.kind.init_prompts[0] in ("click", "box") and p.kind.corrections == 7
        assert list(p.order) == [0] and list(p.corrected) == [True]
    a = prompts.sample_plan(CFG, 8, prompts.plan_rng(3, 11))
    b = prompts.sample_plan(CFG, 8, prompts.plan_rng(3, 11))
    assert a.kind == b.kind and (a.order == b.order).all() and (a.corrected == b.corrected).all()
    assert any(prompts.sample_plan(CFG, 8, prompts.plan_rng(3, s)).kind != a.kind
               for s in range(12, 20))
    with pytest.raises(ValueError):
        prompts.PromptConfig(prob_box_input=1.5)


def _draw_clicks(gt, pred, n):
    keys = jax.random.split(jax.random.key(0), n)
    f = jax.jit(jax.vmap(lambda k: prompts.correction_click(k, gt, pred)))
    pts, lbl = f(keys)  # (n, N, 1, 2), (n, N, 1)
    return np.asarray(pts)[:, :, 0].astype(int), np.asarray(lbl)[:, :, 0]


def test_correction_clicks_come_uniformly_from_the_error_region():
    h, w = 12, 16
    gt = np.zeros((1, h, w), bool)
    gt[0, 2:8, 3:9] = True
    pred = np.zeros((1, h, w), bool)
    pred[0, 4:10, 6:12] = True
    fn, fp = gt & ~pred, pred & ~gt
    pts, lbl = _draw_clicks(jnp.asarray(gt), jnp.asarray(pred), 4000)
    xs, ys = pts[:, 0, 0], pts[:, 0, 1]
    assert (fn[0, ys, xs] == (lbl[:, 0] == 1)).all()  # FN -> positive
    assert (fp[0, ys, xs] == (lbl[:, 0] == 0)).all()  # FP -> negative
    assert (fn | fp)[0, ys, xs].all()
    # uniform over the union: positive share = |FN| / |FN u FP|, each pixel ~ equally often
    share = fn.sum() / (fn | fp).sum()
    assert abs((lbl == 1).mean() - share) < 0.03
    counts = collections.Counter(zip(ys.tolist(), xs.tolist()))
    expected = len(xs) / (fn | fp).sum()
    assert len(counts) == (fn | fp).sum()
    assert max(counts.values()) < 2.2 * expected and min(counts.values()) > 0.3 * expected


def test_initial_click_and_edge_cases():
    h, w = 10, 10
    gt = np.zeros((3, h, w), bool)
    gt[0, 3:5, 6:9] = True  # a normal object
    # object 1: empty GT -> a negative click anywhere (the background)
    gt[2] = True  # object 2: the whole image -> every pixel is a positive candidate
    pts, lbl = _draw_clicks(jnp.asarray(gt), None, 300)
    assert gt[0][pts[:, 0, 1], pts[:, 0, 0]].all() and (lbl[:, 0] == 1).all()
    assert (lbl[:, 1] == 0).all() and len(set(map(tuple, pts[:, 1]))) > 50
    assert (lbl[:, 2] == 1).all()
    # a perfect prediction: a negative click on the background
    pts, lbl = _draw_clicks(jnp.asarray(gt[:1]), jnp.asarray(gt[:1]), 200)
    assert (lbl == 0).all() and (~gt[0][pts[:, 0, 1], pts[:, 0, 0]]).all()
    # perfect all-foreground prediction: no candidate at all -> pixel (0, 0), negative
    full = jnp.ones((1, h, w), bool)
    pts, lbl = _draw_clicks(full, full, 5)
    assert (pts == 0).all() and (lbl == 0).all()


def test_boxes():
    h, w = 40, 60
    gt = np.zeros((3, h, w), bool)
    gt[0, 5:25, 10:50] = True  # 40 wide, 20 high
    gt[1, 30:40, 0:3] = True  # touches the border
    box = np.asarray(prompts.mask_to_box(jnp.asarray(gt)))
    np.testing.assert_array_equal(box[0], [10, 5, 49, 24])
    np.testing.assert_array_equal(box[1], [0, 30, 2, 39])
    np.testing.assert_array_equal(box[2], [w, h, -1, -1])  # empty: SAM 2's convention
    keys = jax.random.split(jax.random.key(1), 500)
    pts, lbl = jax.vmap(lambda k: prompts.noisy_box(k, jnp.asarray(gt[:2])))(keys)
    pts, lbl = np.asarray(pts), np.asarray(lbl)
    assert (lbl == np.array([2, 3])).all()
    corners = pts.reshape(500, 2, 4)  # x0, y0, x1, y1
    d = corners - box[None, :2]
    # noise bound: min(0.1 * side, 20): object 0 -> dx <= 3.9, dy <= 1.9
    assert np.abs(d[:, 0, [0, 2]]).max() <= 3.9 + 1e-5
    assert np.abs(d[:, 0, [1, 3]]).max() <= 1.9 + 1e-5
    assert np.abs(d[:, 0, [0, 2]]).max() > 3.0  # the noise is used, not zero
    assert corners.min() >= 0 and corners[..., [0, 2]].max() <= w - 1
    assert corners[..., [1, 3]].max() <= h - 1
    tight = np.asarray(prompts.noisy_box(jax.random.key(0), jnp.asarray(gt[:1]), noise=0.0)[0])
    np.testing.assert_array_equal(tight.reshape(4), box[0])
