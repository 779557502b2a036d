"""tam_jax.evaluation: J / F on hand-built cases, F against an independent reference, frame rules,
aggregation, both folder layouts end to end through scripts/evaluate.py, and click simulation.

Formulas: docs/data_and_eval.md §4.1 (J&F), §3.3 / §4.2 (RITM "center" clicks, mIoU).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from tam_jax.evaluation import clicks, metrics
from tam_jax.evaluation.metrics import (
    aggregate,
    boundary_f,
    boundary_map,
    boundary_precision_recall,
    region_j,
    video_scores,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "evaluate.py"


def _square(shape, top, left, size):
    m = np.zeros(shape, bool)
    m[top : top + size, left : left + size] = True
    return m


# ------------------------------------------------------------------ independent reference for F


def _ref_boundary(x: np.ndarray) -> np.ndarray:
    """B(X) pixel by pixel from the §4.1 text: a pixel is boundary if it differs from its E, S or
    SE neighbour (0 outside the image); last row: E only; last column: S only; corner: 0."""
    h, w = x.shape

    def at(i, j):
        return bool(x[i, j]) if i < h and j < w else False

    b = np.zeros((h, w), bool)
    for i in range(h):
        for j in range(w):
            if i == h - 1 and j == w - 1:
                continue
            if i == h - 1:
                b[i, j] = at(i, j) != at(i, j + 1)
            elif j == w - 1:
                b[i, j] = at(i, j) != at(i + 1, j)
            else:
                b[i, j] = any(at(i, j) != at(i + di, j + dj) for di, dj in ((0, 1), (1, 0), (1, 1)))
    return b


def _ref_f(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, float]:
    """Boundary P, R, F with the disk dilation written as 'Euclidean distance <= r' (scipy EDT)."""
    r = int(np.ceil(0.008 * np.sqrt(pred.shape[0] ** 2 + pred.shape[1] ** 2)))
    bp, bg = _ref_boundary(pred), _ref_boundary(gt)
    if not bp.any() or not bg.any():
        p, rc = {(False, True): (1.0, 0.0), (True, False): (0.0, 1.0)}.get(
            (bool(bp.any()), bool(bg.any())), (1.0, 1.0)
        )
    else:
        near_g = ndimage.distance_transform_edt(~bg) <= r
        near_p = ndimage.distance_transform_edt(~bp) <= r
        p = (bp & near_g).sum() / bp.sum()
        rc = (bg & near_p).sum() / bg.sum()
    f = 0.0 if p + rc == 0 else 2 * p * rc / (p + rc)
    return p, rc, f


def _blob(rng, shape, sigma, level):
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return noise > level * noise.std()


# ----------------------------------------------------------------------------- frame-level cases


def test_region_j_hand_cases():
    gt = _square((40, 40), 10, 10, 10)
    shifted = _square((40, 40), 10, 13, 10)  # 3 px right: overlap 10 x 7 = 70, union 130
    assert region_j(shifted, gt) == pytest.approx(70 / 130)
    empty = np.zeros((40, 40), bool)
    assert region_j(empty, gt) == 0.0  # empty prediction
    assert region_j(gt, empty) == 0.0  # empty ground truth
    assert region_j(empty, empty) == 1.0  # both empty
    one = np.zeros((40, 40), bool)
    one[7, 9] = True
    assert region_j(one, one) == 1.0
    with pytest.raises(ValueError, match="shape"):
        region_j(gt, gt[:-1])


def test_boundary_map_interior_and_edges():
    h, w = 6, 7
    one = np.zeros((h, w), bool)
    one[3, 4] = True  # a lone pixel: boundary = the 2x2 block ending at it (top-left side)
    expect = np.zeros((h, w), bool)
    expect[2:4, 3:5] = True
    np.testing.assert_array_equal(boundary_map(one), expect)

    corner = np.zeros((h, w), bool)
    corner[0, 0] = True
    np.testing.assert_array_equal(boundary_map(corner), corner)

    br = np.zeros((h, w), bool)  # bottom-right pixel: forced 0 itself; its W / N / NW marked
    br[-1, -1] = True
    expect = np.zeros((h, w), bool)
    expect[-2, -2] = expect[-2, -1] = expect[-1, -2] = True
    np.testing.assert_array_equal(boundary_map(br), expect)

    last_row = np.zeros((h, w), bool)  # last row X xor E: 0 inside a full row
    last_row[-1, :] = True
    expect = np.zeros((h, w), bool)
    expect[-2, :] = True
    np.testing.assert_array_equal(boundary_map(last_row), expect)

    last_col = np.zeros((h, w), bool)  # last column X xor S: 0 inside a full column
    last_col[:, -1] = True
    expect = np.zeros((h, w), bool)
    expect[:, -2] = True
    np.testing.assert_array_equal(boundary_map(last_col), expect)

    assert not boundary_map(np.ones((h, w), bool)).any()  # a full mask has no boundary

    rng = np.random.default_rng(0)
    for shape in ((1, 5), (5, 1), (9, 13)):
        x = rng.random(shape) > 0.5
        np.testing.assert_array_equal(boundary_map(x), _ref_boundary(x))


def test_radius_and_disk():
    assert metrics.boundary_radius((480, 854)) == 8
    assert metrics.boundary_radius((720, 1280)) == 12
    assert metrics.boundary_radius((1024, 1024)) == 12
    assert metrics.boundary_radius((1080, 1920)) == 18
    assert metrics.boundary_radius((10, 10), bound_th=3) == 3
    np.testing.assert_array_equal(metrics.disk(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    np.testing.assert_array_equal(
        metrics.disk(2),
        [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]],
    )
    assert metrics.disk(8).shape == (17, 17) and metrics.disk(8).sum() == 197  # x^2+y^2 <= 64


def test_boundary_f_edge_cases():
    gt = _square((40, 40), 10, 10, 10)
    empty = np.zeros((40, 40), bool)
    assert boundary_precision_recall(empty, gt) == (1.0, 0.0)
    assert boundary_f(empty, gt) == 0.0
    assert boundary_precision_recall(gt, empty) == (0.0, 1.0)
    assert boundary_f(gt, empty) == 0.0
    assert boundary_precision_recall(empty, empty) == (1.0, 1.0)
    assert boundary_f(empty, empty) == 1.0
    assert boundary_f(gt, gt) == 1.0

    # One-pixel objects, 20 x 20 (radius ceil(0.008 * 28.3) = 1, a plus-shaped disk).
    a = np.zeros((20, 20), bool)
    a[5, 5] = True
    near = np.zeros((20, 20), bool)
    near[5, 6] = True  # boundary blocks cols 4-5 vs 5-6: every pixel within the plus
    far = np.zeros((20, 20), bool)
    far[5, 8] = True  # cols 4-5 vs 7-8: nothing within 1 px -> P = R = 0 -> F = 0
    assert region_j(near, a) == 0.0 and boundary_f(near, a) == 1.0
    assert boundary_precision_recall(far, a) == (0.0, 0.0) and boundary_f(far, a) == 0.0


def test_boundary_f_matches_independent_reference():
    rng = np.random.default_rng(1)
    for shape in ((60, 97), (120, 200), (150, 260)):  # radii 1, 2, 3
        gt = _blob(rng, shape, 4.0, 0.3)
        for pred in (
            np.roll(gt, (2, -3), axis=(0, 1)),
            ndimage.binary_dilation(gt, iterations=2),
            _blob(rng, shape, 4.0, 0.3),
        ):
            p, r, f = _ref_f(pred, gt)
            got_p, got_r = boundary_precision_recall(pred, gt)
            assert (got_p, got_r) == pytest.approx((p, r), abs=1e-12)
            assert boundary_f(pred, gt) == pytest.approx(f, abs=1e-12)
            assert 0.0 < f < 1.0


# ---------------------------------------------------------------------------- object statistics


def test_recall_and_decay():
    assert metrics.recall([0.5, 0.6, 0.2, 0.9]) == 0.5  # strictly above 0.5
    v = np.arange(10.0)  # edges 0, 2, 5, 7, 9: mean(v[0:3]) - mean(v[7:10]) = 1 - 8
    assert metrics.decay(v) == pytest.approx(-7.0)
    assert metrics.decay([1.0, 1.0, 0.0, 0.0]) == 1.0  # n = 4: edges 0, 1, 2, 2, 3
    assert metrics.decay([0.7]) == 0.0
    assert metrics.decay([1.0, 0.0]) == 1.0  # n = 2: edges 0, 0, 1, 1, 1
    # Halves round up (DAVIS: round(x + 1e-10)): n = 3 -> 1, 1.5, 2, 2.5, 3 -> edges 0, 1, 1, 2, 2
    assert metrics.decay([1.0, 0.5, 0.0]) == 0.75  # mean(v[0:2]) - mean(v[2:3])
    assert metrics.decay(np.arange(7.0)) == -4.5  # edges 0, 2, 3, 5, 6: 1 - 5.5


def test_frame_exclusion_rule():
    gt = np.stack([_square((32, 32), 8, 8, 12)] * 5)  # (T=5, H, W), the object on every frame
    pred = gt.copy()
    pred[0] = pred[4] = False  # wrong on the first and the last annotated frame only
    (obj,) = video_scores({"a": pred}, {"a": gt}, video="v")
    assert obj.frames == ("1", "2", "3")
    assert obj.j_mean == 1.0 and obj.f_mean == 1.0
    (obj,) = video_scores({"a": pred}, {"a": gt}, skip_first_and_last=False)
    assert obj.j_mean == pytest.approx(3 / 5)


def test_first_appearance_and_unreported_objects():
    t, shape = 7, (32, 32)
    gt = np.zeros((t, *shape), bool)
    gt[3:6] = _square(shape, 8, 8, 12)  # appears on frame 3
    pred = np.zeros_like(gt)
    pred[3:5] = gt[3:5]  # right on 3 and 4, empty on 5
    (obj,) = video_scores({"a": pred}, {"a": gt}, frames={"a": [f"{i:05d}" for i in range(t)]})
    # Frames 1 and 2 are empty in both and come before the first appearance: not scored.
    assert obj.frames == ("00003", "00004", "00005")
    np.testing.assert_allclose(obj.j, [1.0, 1.0, 0.0])

    gone = np.zeros((5, *shape), bool)
    gone[1] = _square(shape, 4, 4, 6)  # visible on frame 1, then gone in GT and prediction
    (obj,) = video_scores({"a": gone}, {"a": gone})
    np.testing.assert_array_equal(obj.j, [1.0, 1.0, 1.0])  # both empty after it: counts as 1

    only_first = np.zeros((5, *shape), bool)
    only_first[0] = True  # in GT only on the (skipped) first frame: not reported
    assert video_scores({"a": only_first}, {"a": only_first}) == []

    (missing,) = video_scores({}, {"b": gt})  # no prediction for this object -> empty masks
    np.testing.assert_array_equal(missing.j, 0.0)


def test_aggregation_is_an_object_level_mean():
    gt = np.stack([_square((24, 24), 4, 4, 10)] * 4)
    perfect = video_scores({"0": gt}, {"0": gt}, video="A")  # 1 object, J = F = 1
    empty = video_scores({}, {k: gt for k in "123"}, video="B")  # 3 objects, J = F = 0
    s = aggregate(perfect + empty)
    assert s["J"] == 0.25 and s["F"] == 0.25 and s["J&F"] == 0.25  # not (1 + 0) / 2 per video
    assert s["J-Recall"] == 0.25 and s["J-Decay"] == 0.0
    assert s["num_objects"] == 4 and s["num_videos"] == 2


# ---------------------------------------------------------------------- folder layouts, the CLI


def _load_script():
    spec = importlib.util.spec_from_file_location("evaluate_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _score(tmp_path: Path, *extra: str) -> int:
    """scripts/evaluate.py score on tmp_path/pred vs tmp_path/gt, in this process."""
    argv = ["score", "--pred_dir", str(tmp_path / "pred"), "--gt_dir", str(tmp_path / "gt")]
    return _load_script().main([*argv, "-q", *extra])


def _save(path: Path, arr: np.ndarray, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if mode == "P":
        img = img.convert("P")  # keeps the index values: an (id -> grey) palette
        img.putpalette([c for i in range(256) for c in (i * 37 % 256, i * 91 % 256, i)])
    img.save(path)


SAV_FRAMES = [f"{4 * i:05d}" for i in range(5)]


def _sav_case(tmp_path: Path):
    """Ground truth: video v1 with objects 000 (a square) and 001 (a square appearing on the
    third frame), video v2 with object 000. Prediction: v1/000 shifted by 2 px, v1/001 missing,
    v2/000 perfect. GT as L 0/255, predictions as P 0/1 (both are accepted)."""
    shape = (48, 64)
    gt = {
        ("v1", "000"): np.stack([_square(shape, 10, 10 + i, 16) for i in range(5)]),
        ("v1", "001"): np.stack(
            [_square(shape, 30, 40, 8) if i >= 2 else np.zeros(shape, bool) for i in range(5)]
        ),
        ("v2", "000"): np.stack([_square(shape, 5, 5, 20)] * 5),
    }
    pred = {("v1", "000"): np.roll(gt[("v1", "000")], 2, axis=2), ("v2", "000"): gt[("v2", "000")]}
    for (v, o), masks in gt.items():
        for name, m in zip(SAV_FRAMES, masks):
            _save(tmp_path / "gt" / v / o / f"{name}.png", m * 255, "L")
    for (v, o), masks in pred.items():
        for name, m in zip(SAV_FRAMES, masks):
            _save(tmp_path / "pred" / v / o / f"{name}.png", m, "P")
    expect = []
    for (v, o), masks in gt.items():
        p = {o: pred[(v, o)]} if (v, o) in pred else {}
        expect += video_scores(p, {o: masks}, video=v, frames={o: SAV_FRAMES})
    return expect


def test_score_sav_layout_end_to_end(tmp_path, capsys):
    expect = _sav_case(tmp_path)
    out = tmp_path / "out"
    assert _score(tmp_path, "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "sav layout: 3 objects in 2 videos" in printed and "v1/001" in printed

    rows = list(csv.DictReader(open(out / "per_object.csv")))
    assert [(r["video"], r["object"]) for r in rows] == [
        ("v1", "000"),
        ("v1", "001"),
        ("v2", "000"),
    ]
    for row, obj in zip(rows, expect):
        assert float(row["J"]) == pytest.approx(obj.j_mean, abs=1e-6)
        assert float(row["F"]) == pytest.approx(obj.f_mean, abs=1e-6)
        assert int(row["num_frames"]) == len(obj.frames)
    assert rows[1]["first_frame"] == "00008" and float(rows[1]["J"]) == 0.0  # missing -> empty
    summary = json.loads((out / "summary.json").read_text())
    want = aggregate(expect)
    for key in ("J", "F", "J&F", "J-Recall", "J-Decay", "F-Recall", "F-Decay"):
        assert summary["scores"][key] == pytest.approx(want[key], abs=1e-12)
    assert summary["missing_objects"] == ["v1/001"] and summary["format"] == "sav"
    videos = list(csv.DictReader(open(out / "per_video.csv")))
    assert [r["video"] for r in videos] == ["v1", "v2"] and float(videos[1]["J"]) == 1.0


def test_score_missing_prediction_file_is_a_clear_error(tmp_path, capsys):
    _sav_case(tmp_path)
    missing = tmp_path / "pred" / "v1" / "000" / "00008.png"  # an evaluated frame
    missing.unlink()
    assert _score(tmp_path) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "missing prediction" in err

    (tmp_path / "gt" / "v3" / "000").mkdir(parents=True)  # a video without any prediction
    assert _score(tmp_path) == 2 and "['v3']" in capsys.readouterr().err


def test_score_davis_layout_end_to_end(tmp_path):
    """Palette PNGs: object 1 on every frame (prediction shifted), object 2 appears on frame 2
    and is never predicted (-> empty), id 3 only in the prediction (ignored)."""
    shape, t = (40, 56), 6
    gt = np.zeros((t, *shape), np.uint8)
    pred = np.zeros_like(gt)
    for i in range(t):
        gt[i][_square(shape, 4, 4 + i, 12)] = 1
        pred[i][_square(shape, 5, 4 + i, 12)] = 1
        if i >= 2:
            gt[i][_square(shape, 24, 30, 10)] = 2
        pred[i][_square(shape, 30, 2, 5)] = 3
    frames = [f"{i:05d}" for i in range(t)]
    for i, name in enumerate(frames):
        _save(tmp_path / "gt" / "bear" / f"{name}.png", gt[i], "P")
        _save(tmp_path / "pred" / "bear" / f"{name}.png", pred[i], "P")
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "score", "--pred_dir", str(tmp_path / "pred")]
    cmd += ["--gt_dir", str(tmp_path / "gt"), "--format", "auto", "--out", str(out)]
    rc = subprocess.run(cmd, capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr
    assert "davis layout: 2 objects in 1 videos" in rc.stdout and "J-Decay" in rc.stdout

    expect = video_scores(
        {"1": pred == 1, "2": pred == 2},
        {"1": gt == 1, "2": gt == 2},
        video="bear",
        frames={"1": frames, "2": frames},
    )
    rows = list(csv.DictReader(open(out / "per_object.csv")))
    assert [r["object"] for r in rows] == ["1", "2"]
    assert rows[1]["first_frame"] == "00002" and float(rows[1]["J"]) == 0.0
    for row, obj in zip(rows, expect):
        assert float(row["J"]) == pytest.approx(obj.j_mean, abs=1e-6)
        assert float(row["F"]) == pytest.approx(obj.f_mean, abs=1e-6)
    assert 0.0 < float(rows[0]["J"]) < 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["format"] == "davis" and summary["missing_objects"] == ["bear/2"]

    _save(tmp_path / "pred" / "bear" / "00003.png", np.zeros((40, 55)), "P")  # wrong size
    assert _score(tmp_path, "--out", str(out)) == 2


# ------------------------------------------------------------------------------ click simulation


def test_first_click_is_the_centre_of_the_mask():
    gt = _square((50, 60), 10, 30, 11)  # rows 10-20, cols 30-40
    point, label = clicks.error_center_click(gt)
    assert point.tolist() == [35.0, 15.0] and label == 1  # (x, y)
    corner = _square((50, 60), 0, 0, 11)  # touching the border: padding keeps it centred
    point, _ = clicks.error_center_click(corner)
    assert point.tolist() == [5.0, 5.0]
    point, _ = clicks.error_center_click(corner, padding=False)
    assert point.tolist() == [0.0, 0.0]


def test_correction_clicks_in_fn_and_fp_regions():
    gt = _square((50, 60), 10, 30, 11)
    left = gt.copy()
    left[:, 35:] = False  # the prediction misses the right part: a positive click there
    point, label = clicks.error_center_click(gt, left)
    x, y = int(point[0]), int(point[1])
    assert label == 1 and gt[y, x] and not left[y, x]

    extra = gt | _square((50, 60), 30, 5, 9)  # a false-positive blob, rows 30-38, cols 5-13
    point, label = clicks.error_center_click(gt, extra)
    assert label == 0 and point.tolist() == [9.0, 34.0]


def test_miou_at_clicks_drives_predict_fn():
    gt = _square((40, 40), 14, 14, 11)
    calls = []

    def predict_fn(points, labels, prev_logits):
        calls.append((points.copy(), labels.copy(), prev_logits))
        mask = np.zeros(gt.shape, bool)
        for (x, y), lab in zip(points.astype(int), labels):
            if lab == 1:
                mask[max(y - 4, 0) : y + 5, max(x - 4, 0) : x + 5] = True
        for (x, y), lab in zip(points.astype(int), labels):
            if lab == 0:
                mask[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = False
        return mask, len(calls)  # the "logits" are the call count

    res = clicks.miou_at_clicks(predict_fn, [gt], n_clicks=(1, 5))
    assert set(res) == {1, 5}
    assert res[1] == pytest.approx(81 / 121)  # a 9 x 9 square at the centre of the 11 x 11 one
    assert [len(p) for p, _, _ in calls] == [1, 2, 3, 4, 5]
    assert [c[2] for c in calls] == [None, 1, 2, 3, 4]  # previous logits fed back
    assert calls[0][0].tolist() == [[19.0, 19.0]] and calls[0][1].tolist() == [1]
    calls.clear()
    ious = clicks.click_ious(predict_fn, gt, 5)
    assert res[5] == pytest.approx(ious[4])
    with pytest.raises(ValueError, match="non-empty"):
        clicks.miou_at_clicks(predict_fn, [np.zeros((8, 8), bool)])
