"""SA-1B tar shards: `sa_XXXXXX.tar` holding `sa_<id>.jpg` + `sa_<id>.json` (data_and_eval.md §1).

The tar is streamed (never extracted, never seeked: a real shard is ~10 GB); members may carry
a leading `./` and come in any order, so a JPEG waits for its JSON (and vice versa) by stem.
Every image comes out as an `Sa1bImage` whose JSON has been validated and whose annotations
are the usable ones; everything else comes out as a `CorruptRecord` naming the tar and member,
for the preparation report. A truncated tar yields what it held before the break, then one
`CorruptRecord("truncated_tar")`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tarfile
from collections.abc import Iterator

from input_pipeline import rle
from input_pipeline.errors import CorruptRecord

_MEMBER = re.compile(r"^sa_(\d+)\.(jpg|json)$")
_IMAGE_KEYS = {"image_id": int, "width": int, "height": int, "file_name": str}
_ANN_KEYS = ("id", "segmentation", "bbox", "area")


@dataclasses.dataclass
class Sa1bImage:
    """One image of SA-1B: JPEG bytes and its validated annotations.

    annotations: the JSON dicts (`segmentation` = {"size": [h, w], "counts": str}, `bbox` XYWH
    floats, `area` int, `id` int, and `predicted_iou`, `stability_score`, `point_coords`,
    `crop_box` when present). `skipped`: CorruptRecords of annotations that were dropped.
    """

    image_id: int
    file_name: str
    height: int
    width: int
    jpeg: bytes
    annotations: list[dict]
    skipped: list[CorruptRecord] = dataclasses.field(default_factory=list)


def member_key(name: str) -> tuple[str, str] | None:
    """Tar member name -> (stem "sa_<id>", "jpg" | "json"), or None for other members.

    Accepts `sa_1.jpg`, `./sa_1.jpg` and `sa_000020/sa_1.jpg` (an extracted-then-retarred shard).
    """
    m = _MEMBER.match(os.path.basename(name))
    return (f"sa_{m.group(1)}", m.group(2)) if m else None


def parse_json(raw: bytes, source: str, record: str) -> tuple[dict, list[dict], list]:
    """Validate an `sa_<id>.json` -> (image dict, usable annotations, skipped CorruptRecords).

    Raises CorruptRecord for the whole image ("bad_json", "missing_keys"); an annotation whose
    RLE disagrees with the image size or is malformed is dropped and returned as skipped.
    """
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptRecord(source, record, "bad_json", f"not valid JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("image"), dict) \
            or not isinstance(data.get("annotations"), list):
        raise CorruptRecord(source, record, "missing_keys",
                            "expected {'image': {...}, 'annotations': [...]}")
    image = data["image"]
    for key, typ in _IMAGE_KEYS.items():
        if key not in image:
            raise CorruptRecord(source, record, "missing_keys", f"image.{key} is missing")
        value = image[key]
        if typ is int and not (isinstance(value, (int, float)) and value == int(value)):
            raise CorruptRecord(source, record, "missing_keys",
                                f"image.{key} = {image[key]!r} is not an integer")
    hw = (int(image["height"]), int(image["width"]))
    kept, skipped = [], []
    for k, ann in enumerate(data["annotations"]):
        where = f"{record}#annotation{k}"
        if not isinstance(ann, dict) or any(key not in ann for key in _ANN_KEYS):
            missing = [key for key in _ANN_KEYS if not isinstance(ann, dict) or key not in ann]
            skipped.append(CorruptRecord(source, where, "missing_keys",
                                         f"annotation lacks {missing}"))
            continue
        try:
            rle.check(ann["segmentation"], hw)
        except rle.RleError as e:
            skipped.append(CorruptRecord(source, where, e.kind, str(e)))
            continue
        kept.append(ann)
    return image, kept, skipped


def read_tar(path: str | os.PathLike) -> Iterator[Sa1bImage | CorruptRecord]:
    """Stream one SA-1B shard -> Sa1bImage per complete pair, CorruptRecord for the rest.

    Checks here are the cheap structural ones (pairing, JSON schema, RLE sizes); decoding the
    JPEG (to catch truncation) is left to the caller, who decodes it anyway.
    """
    source = os.fspath(path)
    pending: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(source, mode="r|*") as tar:
            for member in tar:
                key = member_key(member.name) if member.isfile() else None
                if key is None:
                    continue
                stem, ext = key
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise tarfile.ReadError(f"member {member.name} is cut short")
                pair = pending.setdefault(stem, {})
                if ext in pair:
                    yield CorruptRecord(source, member.name, "duplicate_member",
                                        f"a second {stem}.{ext} in the shard; the first is kept")
                    continue
                pair[ext] = data
                if len(pair) == 2:
                    del pending[stem]
                    yield _image(source, stem, pair["jpg"], pair["json"])
    except (tarfile.ReadError, EOFError, OSError) as e:
        yield CorruptRecord(source, "<tar>", "truncated_tar",
                            f"the tar breaks off ({e}); members before the break were read")
    for stem, pair in sorted(pending.items()):
        missing = "json" if "jpg" in pair else "jpg"
        yield CorruptRecord(source, f"{stem}.{missing}", f"missing_{missing}",
                            f"{stem} has no .{missing} in the shard")


def _image(source: str, stem: str, jpeg: bytes, raw_json: bytes) -> Sa1bImage | CorruptRecord:
    try:
        image, anns, skipped = parse_json(raw_json, source, f"{stem}.json")
    except CorruptRecord as e:
        return e
    if f"sa_{int(image['image_id'])}" != stem:
        return CorruptRecord(source, f"{stem}.json", "missing_keys",
                             f"image_id {image['image_id']} does not match the file name")
    return Sa1bImage(image_id=int(image["image_id"]), file_name=str(image["file_name"]),
                     height=int(image["height"]), width=int(image["width"]), jpeg=jpeg,
                     annotations=anns, skipped=skipped)
