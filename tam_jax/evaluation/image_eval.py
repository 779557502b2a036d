"""Click-based image segmentation on an SA-1B-style folder: 1-click and 5-click mIoU.

Folder: `sa_<id>.jpg` + `sa_<id>.json` pairs (an extracted SA-1B tar; JSON schema and RLE
checks from `input_pipeline.sa1b.parse_json`). Every non-empty annotation is a ground-truth
mask; clicks follow the RITM "center" rule (`clicks.miou_at_clicks`): click 1 takes the
highest predicted-IoU mask of the 3-mask output, later clicks the single-mask output with the
previous low-res logits fed back (SAM's protocol, data_and_eval.md §4.2).

Writes `<out_dir>/per_image.csv` (image, num_masks, mIoU@N...) and `summary.json`.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from tam_jax.evaluation.clicks import PredictFn, miou_at_clicks
from tam_jax.evaluation.io import EvaluationInputError

IMAGE_CSV = "per_image.csv"
SUMMARY_JSON = "summary.json"


def list_sa1b_images(folder) -> list[str]:
    """Sorted stems `sa_<id>` of the folder's JPEGs that have a JSON beside them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationInputError(f"{folder}: not a folder")
    stems = sorted(
        (
            e.name[:-4]
            for e in os.scandir(folder)
            if e.name.startswith("sa_")
            and e.name.endswith(".jpg")
            and (folder / (e.name[:-4] + ".json")).is_file()
        ),
        key=lambda s: (len(s), s),
    )
    if not stems:
        raise EvaluationInputError(f"{folder}: no sa_<id>.jpg + sa_<id>.json pairs")
    return stems


def load_sa1b_image(folder, stem: str) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 (H, W, 3), non-empty masks bool (N, H, W)) of one image; bad input raises
    EvaluationInputError naming the file."""
    from input_pipeline import rle, sa1b
    from input_pipeline.errors import CorruptRecord

    folder = Path(folder)
    json_path = folder / f"{stem}.json"
    try:
        image, anns, _ = sa1b.parse_json(json_path.read_bytes(), str(json_path), json_path.name)
        with Image.open(folder / f"{stem}.jpg") as im:
            rgb = np.asarray(im.convert("RGB"))
    except (CorruptRecord, OSError) as e:
        raise EvaluationInputError(f"{folder / stem}: {e}") from e
    if rgb.shape[:2] != (int(image["height"]), int(image["width"])):
        raise EvaluationInputError(
            f"{folder / stem}.jpg is {rgb.shape[1]}x{rgb.shape[0]}, its JSON says "
            f"{image['width']}x{image['height']}"
        )
    h, w = rgb.shape[:2]
    masks = [rle.decode(a["segmentation"]).astype(bool) for a in anns]
    masks = [m for m in masks if m.any()]
    return rgb, np.stack(masks) if masks else np.zeros((0, h, w), bool)


def click_predict_fn(predictor) -> PredictFn:
    """An `ImagePredictor` (image already set) as `clicks.PredictFn`: multimask + best
    predicted IoU for the first click, single mask with the previous logits afterwards."""

    def predict(points, labels, prev_logits):
        if prev_logits is None:
            masks, ious, low_res = predictor.predict(points, labels, multimask_output=True)
            k = int(np.argmax(ious))
            return masks[k], low_res[k][None]
        masks, _, low_res = predictor.predict(
            points, labels, mask_input=prev_logits, multimask_output=False
        )
        return masks[0], low_res

    return predict


def evaluate_images(
    predictor,
    data_dir,
    out_dir,
    *,
    n_clicks: Sequence[int] = (1, 5),
    max_images: int | None = None,
    max_masks: int | None = None,
    progress: bool = True,
    context: dict | None = None,
) -> dict:
    """mIoU after each N in n_clicks over every mask of every image (the mean over masks, not
    images); max_masks keeps an image's first N non-empty masks. Returns the summary dict."""
    from tqdm import tqdm

    stems = list_sa1b_images(data_dir)
    if max_images is not None:
        stems = stems[: max(0, int(max_images))]
    n_clicks = sorted({int(n) for n in n_clicks})
    predict = click_predict_fn(predictor)
    rows, totals, count = [], dict.fromkeys(n_clicks, 0.0), 0
    for stem in tqdm(stems, desc="clicks (sa1b)", unit="image", disable=not progress):
        rgb, masks = load_sa1b_image(data_dir, stem)
        if max_masks is not None:
            masks = masks[: max(0, int(max_masks))]
        if len(masks) == 0:
            rows.append({"image": stem, "num_masks": 0})
            continue
        predictor.set_image(rgb)
        miou = miou_at_clicks(predict, masks, n_clicks)
        rows.append(
            {"image": stem, "num_masks": len(masks), **{f"mIoU@{n}": miou[n] for n in n_clicks}}
        )
        for n in n_clicks:
            totals[n] += miou[n] * len(masks)
        count += len(masks)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    columns = ["image", "num_masks", *(f"mIoU@{n}" for n in n_clicks)]
    with open(out / IMAGE_CSV, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()})
    summary = {
        "format": "sa1b-images",
        "scores": {f"mIoU@{n}": (totals[n] / count if count else None) for n in n_clicks},
        "num_images": len(stems),
        "num_masks": count,
        "data_dir": str(data_dir),
        **(context or {}),
    }
    (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_image_table(summary: dict) -> str:
    """The click summary as a two-line table in percent."""
    keys = list(summary["scores"])
    head = "".join(f"{k:>10}" for k in keys)
    vals = "".join(
        f"{100 * v:>10.1f}" if v is not None else f"{'-':>10}" for v in summary["scores"].values()
    )
    return (
        f"sa1b-images: {summary['num_masks']} masks in {summary['num_images']} images "
        f"(scores in %)\n{head}\n{vals}"
    )
