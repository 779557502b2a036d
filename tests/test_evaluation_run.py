"""`scripts/evaluate.py run` and `tam_jax.evaluation.run`: a model (random tiny weights) and
the copy-first-mask baseline over tiny DAVIS- and SA-V-style folders, end to end: predictions
in the ground truth's layout for every annotated frame, reports, scores in [0, 1], overlays and
animations; params read from a training checkpoint; click mIoU on an SA-1B-style folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts import evaluate
from tam_jax.evaluation import io
from tam_jax.evaluation.overlay import draw_masks, object_colour
from tam_jax.evaluation.run import copy_first_mask_baseline

S = 64  # frame size; the model runs at 64 px too
# The tiny variant cut to one block per stage at 64 px (XLA's CPU compile time grows with the
# number of ops; experiments/tiny_local.py trains this "micro" model).
OVERRIDES = {
    "image_size": 64,
    "vit.depth": 2,
    "vit.global_att_blocks": (1,),
    "memory_attention.num_layers": 1,
    "mask_decoder.transformer_depth": 1,
    "memory_encoder.fuser_layers": 1,
}
MODEL = ["--checkpoint", "none", "--variant", "tiny", "-q"]
for _key, _value in OVERRIDES.items():
    MODEL += ["--override", f"{_key}={_value!r}"]


def _square(t: int, x0: int, y0: int, speed: int, size: int = 16) -> np.ndarray:
    m = np.zeros((S, S), bool)
    x = x0 + speed * t
    m[y0 : y0 + size, x : x + size] = True
    return m


def _frame(masks: list[np.ndarray]) -> np.ndarray:
    yy, xx = np.mgrid[0:S, 0:S]
    img = np.stack([60 + 20 * np.sin(xx / 5.0), 70 + 20 * np.cos(yy / 7.0), 80 + 0 * xx], -1)
    for k, m in enumerate(masks):
        img[m] = object_colour(k)
    return img.astype(np.uint8)


def _videos(n_frames: int) -> dict[str, list[list[np.ndarray]]]:
    """{video: per frame, the object masks}: two objects each, standing still or moving (the
    same object count, so the tracker compiles once for both)."""
    return {
        "moving": [[_square(t, 4, 6, 6), _square(t, 40, 40, -5, 12)] for t in range(n_frames)],
        "static": [[_square(0, 20, 20, 0), _square(0, 44, 8, 0, 10)] for _ in range(n_frames)],
    }


def _write_jpeg(path: Path, masks) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_frame(masks)).save(path, quality=95)


@pytest.fixture(scope="module")
def davis_dir(tmp_path_factory) -> Path:
    """DAVIS layout without the resolution folder: JPEGImages/<v>/, Annotations/<v>/ (palette
    PNGs of ids 1..K), 4 frames."""
    root = tmp_path_factory.mktemp("davis")
    palette = [c for k in range(256) for c in ((0, 0, 0) if k == 0 else object_colour(k - 1))]
    for video, frames in _videos(4).items():
        for t, masks in enumerate(frames):
            _write_jpeg(root / "JPEGImages" / video / f"{t:05d}.jpg", masks)
            ids = np.zeros((S, S), np.uint8)
            for k, m in enumerate(masks):
                ids[m] = k + 1
            im = Image.fromarray(ids, mode="P")
            im.putpalette(palette)
            (root / "Annotations" / video).mkdir(parents=True, exist_ok=True)
            im.save(root / "Annotations" / video / f"{t:05d}.png")
    return root


@pytest.fixture(scope="module")
def sav_dir(tmp_path_factory) -> Path:
    """SA-V layout: 7 JPEG frames, per-object PNGs on frames 0, 2, 4, 6; in "moving", object
    001 is empty on frame 0 (it is prompted on frame 2) and object 002 is empty everywhere."""
    root = tmp_path_factory.mktemp("sav")
    for video, frames in _videos(7).items():
        for t, masks in enumerate(frames):
            _write_jpeg(root / "JPEGImages_24fps" / video / f"{t:05d}.jpg", masks)
            extra = [np.zeros((S, S), bool)] if video == "moving" else []
            for k, m in enumerate(masks + extra):
                if t % 2:
                    continue
                if video == "moving" and k == 1 and t == 0:
                    m = np.zeros_like(m)
                folder = root / "Annotations_6fps" / video / f"{k:03d}"
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(m.astype(np.uint8) * 255).save(folder / f"{t:05d}.png")
    return root


def _host_params(cfg) -> dict:
    """Random params of the model's shapes drawn with numpy (norm scales 1): `init_params`
    compiles the whole model once more, a minute on a busy 2-core CPU, and its values do not
    matter here (it is tested with the model)."""
    from tam_jax.models.tam import abstract_param_shapes

    rng = np.random.default_rng(0)
    tree: dict = {}
    for path, shape in abstract_param_shapes(cfg).items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        value = np.ones(shape) if path[-1] == "scale" else 0.1 * rng.standard_normal(shape)
        node[path[-1]] = value.astype(np.float32)
    return tree


@pytest.fixture(scope="module")
def random_model():
    """(cfg, params) of the random micro model; `--checkpoint none` below gets these params
    (weights.random_params patched for this module)."""
    from tam_jax.evaluation import weights

    cfg = weights.eval_config("tiny", OVERRIDES)
    params = _host_params(cfg)

    def fake_random_params(want, seed=0):
        assert want == cfg, "the CLI built another config than the test's"
        return params

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(weights, "random_params", fake_random_params)
        yield cfg, params


def _per_video(out: Path) -> dict[str, float]:
    with open(out / "per_video.csv") as fh:
        return {r["video"]: float(r["J&F"]) for r in csv.DictReader(fh)}


def _check_report(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    for name in ("per_object.csv", "per_video.csv"):
        assert (out / name).is_file()
    for key, value in summary["scores"].items():
        low = -1.0 if key.endswith("Decay") else 0.0  # decay: first quarter minus last
        assert low <= value <= 1.0, (key, value)
    assert summary["num_videos"] == 2
    return summary


@pytest.mark.parametrize("fmt", ["davis", "sav"])
def test_copy_first_mask_baseline(fmt, davis_dir, sav_dir, tmp_path):
    data = davis_dir if fmt == "davis" else sav_dir
    summary = copy_first_mask_baseline(data, fmt, tmp_path, progress=False)
    _check_report(tmp_path)
    scores = _per_video(tmp_path)
    assert scores["static"] == 1.0
    assert scores["moving"] < 0.9
    assert summary["tracker"] == "copy_first_mask"
    if fmt == "sav":  # the late object is absent before its first mask: frame 0 is empty
        first = np.asarray(Image.open(tmp_path / "predictions" / "moving" / "001" / "00000.png"))
        assert not first.any()
        assert (tmp_path / "predictions" / "moving" / "002" / "00006.png").is_file()


def test_run_davis_model_with_gif_overlays(random_model, davis_dir, tmp_path):
    out = tmp_path / "eval"
    rc = evaluate.main(
        [
            "run",
            *MODEL,
            "--data_dir",
            str(davis_dir),
            "--format",
            "davis",
            "--out",
            str(out),
            "--overlays",
            "--gif",
        ]
    )
    assert rc == 0
    summary = _check_report(out)
    assert summary["variant"] == "tiny" and summary["frames"] == 8
    for video in ("moving", "static"):
        gt = sorted(p.name for p in (davis_dir / "Annotations" / video).iterdir())
        pred_dir = out / "predictions" / video
        assert sorted(p.name for p in pred_dir.iterdir()) == gt
        with Image.open(pred_dir / gt[1]) as im:
            assert im.mode == "P" and im.size == (S, S)
            assert set(np.unique(np.asarray(im)).tolist()) <= {0, 1, 2}
        pngs = sorted((out / "overlays" / video).glob("*.png"))
        assert [p.stem for p in pngs] == [f"{t:05d}" for t in range(4)]
        with Image.open(out / "overlays" / f"{video}.gif") as gif:
            assert gif.n_frames == 4
    # the same predictions score the same through `score`
    rc = evaluate.main(
        [
            "score",
            "--pred_dir",
            str(out / "predictions"),
            "--gt_dir",
            str(davis_dir / "Annotations"),
            "--out",
            str(tmp_path / "rescore"),
            "-q",
        ]
    )
    assert rc == 0
    again = json.loads((tmp_path / "rescore" / "summary.json").read_text())
    assert again["scores"] == summary["scores"]


def test_evaluate_videos_sav_with_mp4(random_model, sav_dir, tmp_path):
    """The Python entry point on the SA-V layout (one video), MP4 animations."""
    av = pytest.importorskip("av")
    from tam_jax.evaluation.run import evaluate_videos
    from tam_jax.video_predictor import VideoPredictor

    predictor = VideoPredictor(*random_model, progress=True)
    out = tmp_path / "eval"
    summary = evaluate_videos(
        predictor, sav_dir, "sav", out, overlays=True, animation="mp4", max_videos=1, progress=False
    )
    assert predictor.progress  # restored
    assert summary["num_videos"] == 1 and summary["frames"] == 7
    assert summary["tracker"] == "model" and 0.0 <= summary["scores"]["J&F"] <= 1.0
    gt_root = sav_dir / "Annotations_6fps" / "moving"
    for obj in ("000", "001", "002"):
        gt = sorted(p.name for p in (gt_root / obj).iterdir())
        assert sorted(p.name for p in (out / "predictions" / "moving" / obj).iterdir()) == gt
    late = io.read_binary_mask(out / "predictions" / "moving" / "001" / "00000.png")
    assert not late.any()  # before its prompt frame an object is absent
    assert len(list((out / "overlays" / "moving").glob("*.png"))) == 7
    with av.open(str(out / "overlays" / "moving.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 7


def test_cli_baseline_needs_no_checkpoint(davis_dir, tmp_path):
    rc = evaluate.main(
        [
            "run",
            "--baseline",
            "copy_first_mask",
            "--data_dir",
            str(davis_dir),
            "--format",
            "davis",
            "--out",
            str(tmp_path),
            "-q",
        ]
    )
    assert rc == 0
    assert _per_video(tmp_path)["static"] == 1.0
    rc = evaluate.main(
        [
            "run",
            "--checkpoint",
            str(tmp_path / "nothing"),
            "--variant",
            "tiny",
            "--data_dir",
            str(davis_dir),
            "--format",
            "davis",
            "--out",
            str(tmp_path),
            "-q",
        ]
    )
    assert rc == 2  # a clear error, no traceback


def test_train_checkpoint_params_round_trip(random_model, tmp_path):
    import jax
    import optax

    from tam_jax import checkpointing
    from tam_jax.evaluation.weights import load_eval_model, read_train_params
    from tam_jax.training.train_step import create_train_state

    cfg, params = random_model
    with checkpointing.TrainCheckpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(3, create_train_state(params, optax.adamw(1e-3), 0), force=True)
    got, step = read_train_params(tmp_path)
    assert step == 3
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)
    cfg2, got2 = load_eval_model(tmp_path / "checkpoints", "tiny", OVERRIDES)
    assert cfg2 == cfg and jax.tree.structure(got2) == jax.tree.structure(params)
    with pytest.raises(checkpointing.CheckpointError, match="needs a variant"):
        load_eval_model(tmp_path, None)
    model_dir = checkpointing.save_model(tmp_path / "model", params, "tiny")
    cfg3, got3 = load_eval_model(model_dir, None, OVERRIDES)  # the variant from the directory
    assert cfg3 == cfg and jax.tree.structure(got3) == jax.tree.structure(params)


def test_sa1b_click_miou(random_model, tmp_path):
    from input_pipeline import rle
    from tam_jax.evaluation.image_eval import evaluate_images
    from tam_jax.predictors import ImagePredictor

    masks = [_square(0, 8, 8, 0, 20), _square(0, 36, 30, 0, 14)]
    Image.fromarray(_frame(masks)).save(tmp_path / "sa_7.jpg")
    anns = [
        {"id": k, "segmentation": rle.encode(m), "bbox": [0.0, 0.0, 1.0, 1.0], "area": int(m.sum())}
        for k, m in enumerate([*masks, np.zeros((S, S), bool)])
    ]
    meta = {"image_id": 7, "width": S, "height": S, "file_name": "sa_7.jpg"}
    (tmp_path / "sa_7.json").write_text(json.dumps({"image": meta, "annotations": anns}))
    summary = evaluate_images(
        ImagePredictor(*random_model), tmp_path, tmp_path / "out", n_clicks=(1, 2), progress=False
    )
    assert summary["num_masks"] == 2 and summary["num_images"] == 1  # the empty one skipped
    assert all(0.0 <= v <= 1.0 for v in summary["scores"].values())
    assert (tmp_path / "out" / "per_image.csv").is_file()


def test_draw_masks_colours_and_contour():
    rgb = np.zeros((20, 20, 3), np.uint8)
    m = np.zeros((20, 20), bool)
    m[5:15, 5:15] = True
    out = draw_masks(rgb, [m], alpha=0.5, contour=1)
    colour = np.array(object_colour(0))
    assert (out[10, 10] == np.rint(colour * 0.5)).all()  # blended inside
    assert (out[5, 10] == colour).all()  # the outline, full colour
    assert (out[0, 0] == 0).all()  # background untouched


def test_model_description_round_trip(tmp_path):
    """The trainer's model.json gives evaluation the variant and overrides of a workdir; a
    missing or broken one is a clear error naming the file."""
    import ml_collections

    from tam_jax import checkpointing
    from tam_jax.evaluation.weights import read_model_description
    from tam_jax.training.trainer import write_model_description

    config = ml_collections.ConfigDict({"model": {
        "variant": "tiny", "overrides": [("vit.depth", 2), ("vit.global_att_blocks", (1,))]}})
    write_model_description(config, tmp_path)
    (tmp_path / "checkpoints").mkdir()
    for where in (tmp_path, tmp_path / "checkpoints"):
        variant, overrides = read_model_description(where)
        assert variant == "tiny"
        assert overrides == {"vit.depth": 2, "vit.global_att_blocks": (1,)}
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(checkpointing.CheckpointError, match="model.json: not a model desc"):
        read_model_description(tmp_path)
    (tmp_path / "model.json").unlink()
    with pytest.raises(checkpointing.CheckpointError, match="no model.json"):
        read_model_description(tmp_path)
