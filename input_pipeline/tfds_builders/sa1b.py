"""SA-1B as a TFDS dataset: one example per image, JPEG bytes + COCO RLE strings.

Features (stored sizes; masks and image agree):
    image            JPEG bytes (the original, or re-encoded when `max_side` shrinks it)
    image_id         int64        height, width (stored)   orig_height, orig_width
    mask_rles        (K,) str     COCO compressed RLE counts at (height, width)
    mask_area        (K,) int64   mask_bbox (K, 4) float32 XYWH px   point_coords (K, 2) float32
    predicted_iou, stability_score (K,) float32            ann_id (K,) int64
Every annotation with a valid RLE is kept (also area 0 and > 90 % masks: the training
pipeline filters them, so the dataset stays the raw data).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from input_pipeline import jpeg, rle, sa1b
from input_pipeline.errors import CorruptRecord
from input_pipeline.tfds_builders.base import ShardBuilder

NAME = "sa1b"
VERSION = "1.0.0"
SHARD_GLOB = "sa_*.tar"
FOLDER_GLOB = None  # SA-1B shards are tars only


@dataclasses.dataclass(frozen=True)
class Sa1bConfig:
    """max_side: shrink images whose long side exceeds it (masks are re-encoded at the new
    size: ~3x cheaper mask decoding in training, at the price of fixing the resize up front);
    None keeps the originals byte for byte. jpeg_quality for re-encoded images."""

    max_side: int | None = None
    jpeg_quality: int = 95


def features() -> tfds.features.FeaturesDict:
    f = tfds.features
    return f.FeaturesDict({
        "image": f.Tensor(shape=(), dtype=np.object_),
        "image_id": f.Scalar(dtype=np.int64),
        "height": f.Scalar(dtype=np.int32),
        "width": f.Scalar(dtype=np.int32),
        "orig_height": f.Scalar(dtype=np.int32),
        "orig_width": f.Scalar(dtype=np.int32),
        "mask_rles": f.Sequence(f.Text()),
        "mask_area": f.Tensor(shape=(None,), dtype=np.int64),
        "mask_bbox": f.Tensor(shape=(None, 4), dtype=np.float32),
        "point_coords": f.Tensor(shape=(None, 2), dtype=np.float32),
        "predicted_iou": f.Tensor(shape=(None,), dtype=np.float32),
        "stability_score": f.Tensor(shape=(None,), dtype=np.float32),
        "ann_id": f.Tensor(shape=(None,), dtype=np.int64),
    })


def _resized(img: sa1b.Sa1bImage, image: np.ndarray, cfg: Sa1bConfig):
    """-> (jpeg bytes, (h, w), rle counts, areas, boxes, points) at the stored size."""
    h, w = img.height, img.width
    anns = img.annotations
    counts = [str(a["segmentation"]["counts"]) for a in anns]
    areas = [int(a["area"]) for a in anns]
    boxes = [a["bbox"] for a in anns]
    points = [(a.get("point_coords") or [[0.0, 0.0]])[0] for a in anns]
    if cfg.max_side is None or max(h, w) <= cfg.max_side:
        return img.jpeg, (h, w), counts, areas, boxes, points
    s = cfg.max_side / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    counts, areas, boxes = [], [], []
    for a in anns:
        m = Image.fromarray(rle.decode(a["segmentation"], validate=False) * 255)
        m = np.asarray(m.resize((nw, nh), Image.NEAREST)) > 0
        enc = rle.encode(m)
        counts.append(enc["counts"])
        areas.append(int(m.sum()))
        ys, xs = np.nonzero(m)
        boxes.append([float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1),
                      float(np.ptp(ys) + 1)] if len(xs) else [0.0, 0.0, 0.0, 0.0])
    points = [[p[0] * nw / w, p[1] * nh / h] for p in points]
    return jpeg.encode(small, cfg.jpeg_quality), (nh, nw), counts, areas, boxes, points


def example_from_image(img: sa1b.Sa1bImage, source: str, cfg: Sa1bConfig) -> dict:
    """Sa1bImage -> TFDS example. Decodes the JPEG fully (a truncated one raises
    CorruptRecord("bad_jpeg")) and checks its size against the JSON."""
    image = jpeg.checked_decode(img.jpeg, source, img.file_name, (img.height, img.width))
    if not img.annotations:
        raise CorruptRecord(source, img.file_name, "no_masks", "no usable annotation")
    data, (h, w), counts, areas, boxes, points = _resized(img, image, cfg)
    anns = img.annotations
    return {
        "image": data, "image_id": img.image_id, "height": h, "width": w,
        "orig_height": img.height, "orig_width": img.width,
        "mask_rles": counts,
        "mask_area": np.asarray(areas, np.int64),
        "mask_bbox": np.asarray(boxes, np.float32).reshape(-1, 4),
        "point_coords": np.asarray(points, np.float32).reshape(-1, 2),
        "predicted_iou": np.asarray([a.get("predicted_iou", 0.0) for a in anns], np.float32),
        "stability_score": np.asarray([a.get("stability_score", 0.0) for a in anns], np.float32),
        "ann_id": np.asarray([a["id"] for a in anns], np.int64),
    }


def examples_from_tar(path: str, cfg: Sa1bConfig = Sa1bConfig()
                      ) -> Iterator[tuple[str, dict] | CorruptRecord]:
    """One original shard -> (key, example) per good image; CorruptRecord for everything
    skipped (whole images, and annotations dropped from kept images)."""
    for item in sa1b.read_tar(path):
        if isinstance(item, CorruptRecord):
            yield item
            continue
        yield from item.skipped
        try:
            yield f"sa_{item.image_id}", example_from_image(item, path, cfg)
        except CorruptRecord as e:
            yield e


class Sa1b(ShardBuilder):
    """SA-1B from its original tars in `manual_dir` (single process; for many shards in
    parallel, resumable, use `python scripts/prepare_data.py sa1b`)."""

    name = NAME
    VERSION = tfds.core.Version(VERSION)
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download the SA-1B tars (sa_000000.tar ... sa_000999.tar) from "
        "https://ai.meta.com/datasets/segment-anything-downloads/ into manual_dir.")

    SHARD_GLOB = SHARD_GLOB
    FOLDER_GLOB = FOLDER_GLOB

    def __init__(self, *, config: Sa1bConfig = Sa1bConfig(), **kwargs):
        super().__init__(config=config, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=features(),
                                     description="SA-1B images with COCO-RLE masks.")

    def convert(self, path: str):
        return examples_from_tar(path, self.prep_config)
