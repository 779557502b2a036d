"""SA-V training videos: `sav_XXX.tar` -> `sav_train/sav_0XX/sav_XXXXXX.mp4` + `_manual.json`
[+ `_auto.json`] (data_and_eval.md §2.1-§2.2), and the 6 fps frame extraction of SAM 2 (§2.5).

The annotation JSON is validated as the real files are: `video_*` fields are floats,
`masklet[t][k]` is the COCO RLE of object k on raw frame 4t, an absent object is an all-zero
RLE (not null). Objects whose RLEs are malformed or of the wrong size are dropped (reported);
objects never visible ("empty masklets") are dropped (reported); a video left with no object,
or whose mp4 does not decode, is skipped (reported).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import tarfile
from collections.abc import Iterator

import numpy as np

from input_pipeline import rle
from input_pipeline.errors import CorruptRecord

ANNOTATION_EVERY = 4  # SA-V annotates every 4th frame of its 24 fps videos (6 fps)
_MEMBER = re.compile(r"^(sav_\d+)(\.mp4|_manual\.json|_auto\.json)$")
_REQUIRED = ("video_id", "video_height", "video_width", "video_frame_count", "masklet")


@dataclasses.dataclass
class SavAnnotation:
    """Validated masklets of one video.

    rles[t][k]: RLE dict of object k on annotated frame t (raw 24 fps frame 4t); obj_ids[k]:
    `masklet_id`; first_frame[k]: first annotated frame where it is visible.
    """

    video_id: str
    height: int
    width: int
    frame_count: int
    rles: list[list[dict]]
    obj_ids: list[int]
    first_frame: list[int]
    skipped: list[CorruptRecord] = dataclasses.field(default_factory=list)

    @property
    def num_annotated(self) -> int:
        return len(self.rles)


@dataclasses.dataclass
class SavVideo:
    """One SA-V training video as found in a tar: the mp4 bytes and its annotations."""

    video_id: str
    mp4: bytes
    manual: SavAnnotation
    auto: SavAnnotation | None
    source: str


def _as_int(data: dict, key: str, source: str, record: str) -> int:
    v = data[key]
    if not isinstance(v, (int, float)) or v != int(v) or v < 0:
        raise CorruptRecord(source, record, "missing_keys", f"{key} = {v!r} is not a count")
    return int(v)


def parse_json(raw: bytes | str | dict, source: str, record: str) -> SavAnnotation:
    """Validate a `sav_*_manual.json` / `_auto.json` -> SavAnnotation. Raises CorruptRecord
    ("bad_json", "missing_keys", "empty_masklets") when nothing usable is left."""
    if isinstance(raw, dict):
        data = raw
    else:
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptRecord(source, record, "bad_json", f"not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CorruptRecord(source, record, "bad_json", "the JSON is not an object")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise CorruptRecord(source, record, "missing_keys", f"missing {missing}")
    h, w = (_as_int(data, k, source, record) for k in ("video_height", "video_width"))
    n_frames = _as_int(data, "video_frame_count", source, record)
    masklet = data["masklet"]
    if not isinstance(masklet, list) or not masklet:
        raise CorruptRecord(source, record, "empty_masklets", "masklet is empty")
    n_obj = max((len(fr) for fr in masklet if isinstance(fr, list)), default=0)
    ids = data.get("masklet_id", list(range(n_obj)))
    if not isinstance(ids, list) or len(ids) != n_obj:
        raise CorruptRecord(source, record, "missing_keys",
                            f"masklet_id has {len(ids) if isinstance(ids, list) else ids!r} "
                            f"entries for {n_obj} objects")
    skipped, good = [], []
    for k in range(n_obj):
        where = f"{record}#object{ids[k]}"
        try:
            areas = []
            for t, frame in enumerate(masklet):
                if not isinstance(frame, list) or len(frame) != n_obj:
                    raise rle.RleError(f"annotated frame {t} has no entry for this object")
                if frame[k] is None:  # tolerated by SAM 2's loader: treated as absent
                    areas.append(0)
                    continue
                rle.check(frame[k], (h, w))
                areas.append(rle.area(frame[k]))
        except rle.RleError as e:
            skipped.append(CorruptRecord(source, where, e.kind, f"frame {t}: {e}"))
            continue
        if not any(areas):
            skipped.append(CorruptRecord(source, where, "empty_masklets",
                                         "the object is never visible"))
            continue
        good.append((k, next(t for t, a in enumerate(areas) if a)))
    if not good:
        raise CorruptRecord(source, record, "empty_masklets",
                            f"no usable object among {n_obj}"
                            + (f" ({skipped[0].kind}, ...)" if skipped else ""))
    empty = {"size": [h, w], "counts": rle.encode(np.zeros((h, w), np.uint8))["counts"]}
    rles = [[frame[k] if frame[k] is not None else empty for k, _ in good] for frame in masklet]
    return SavAnnotation(video_id=str(data["video_id"]), height=h, width=w,
                         frame_count=n_frames, rles=rles, obj_ids=[int(ids[k]) for k, _ in good],
                         first_frame=[f for _, f in good], skipped=skipped)


def read_tar(path: str | os.PathLike) -> Iterator[SavVideo | CorruptRecord]:
    """Stream an SA-V train tar -> SavVideo per video with an mp4 and a manual JSON.

    Members are grouped by video id; a group is emitted once it is complete (mp4 + manual +
    auto) or when another video's members start (the real tars are grouped per video), so at
    most a few videos are held in memory. An auto JSON arriving after its video was emitted
    is reported ("orphan_member"); SAM 2 trains on manual masklets only.
    """
    source = os.fspath(path)
    pending: dict[str, dict[str, bytes]] = {}
    emitted: set[str] = set()
    current = None

    def flush(vid):
        group = pending.pop(vid)
        emitted.add(vid)
        return _video(source, vid, group)

    try:
        with tarfile.open(source, mode="r|*") as tar:
            for member in tar:
                m = _MEMBER.match(os.path.basename(member.name)) if member.isfile() else None
                if m is None:
                    continue
                vid, suffix = m.group(1), m.group(2)
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise tarfile.ReadError(f"member {member.name} is cut short")
                if vid in emitted:
                    yield CorruptRecord(source, member.name, "orphan_member",
                                        f"{vid} was already complete; this member is ignored")
                    continue
                if current is not None and vid != current and _ready(pending.get(current)):
                    yield from flush(current)
                current = vid
                pending.setdefault(vid, {})[suffix] = data
                if len(pending[vid]) == 3:
                    yield from flush(vid)
                    current = None
    except (tarfile.ReadError, EOFError, OSError) as e:
        yield CorruptRecord(source, "<tar>", "truncated_tar",
                            f"the tar breaks off ({e}); members before the break were read")
    for vid in sorted(pending):
        yield from flush(vid)


def _ready(group) -> bool:
    return group is not None and ".mp4" in group and "_manual.json" in group


def _video(source: str, vid: str, group: dict[str, bytes]):
    if ".mp4" not in group:
        yield CorruptRecord(source, f"{vid}.mp4", "missing_mp4", f"{vid} has no mp4")
        return
    if "_manual.json" not in group:
        yield CorruptRecord(source, f"{vid}_manual.json", "missing_json",
                            f"{vid} has no _manual.json")
        return
    try:
        manual = parse_json(group["_manual.json"], source, f"{vid}_manual.json")
    except CorruptRecord as e:
        yield e
        return
    auto = None
    if "_auto.json" in group:
        try:
            auto = parse_json(group["_auto.json"], source, f"{vid}_auto.json")
        except CorruptRecord as e:
            yield e  # the auto file is optional: report it, keep the video
    yield SavVideo(video_id=vid, mp4=group[".mp4"], manual=manual, auto=auto, source=source)


def read_folder(root: str | os.PathLike) -> Iterator[SavVideo | CorruptRecord]:
    """The same from an extracted tree (`<root>/**/sav_XXXXXX.mp4` + JSONs)."""
    root = os.fspath(root)
    groups: dict[str, dict[str, str]] = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            m = _MEMBER.match(f)
            if m:
                groups.setdefault(m.group(1), {})[m.group(2)] = os.path.join(dirpath, f)
    for vid in sorted(groups):
        group = {}
        for suffix, p in groups[vid].items():
            with open(p, "rb") as fh:
                group[suffix] = fh.read()
        yield from _video(groups[vid].get(".mp4", root), vid, group)


def extract_frames(mp4: bytes, source: str, record: str, every: int = ANNOTATION_EVERY,
                   max_frames: int | None = None) -> list[tuple[int, np.ndarray]]:
    """Decode an mp4 (PyAV) -> [(24 fps frame index, uint8 (H, W, 3))] for frames 0, every,
    2*every, ... (SAM 2's 6 fps extraction). Raises CorruptRecord("bad_mp4") when the file does
    not decode (a broken file may decode partly: that is reported, not silently shortened)."""
    import av  # the `data` extra

    frames = []
    try:
        with av.open(io.BytesIO(mp4), mode="r") as container:
            if not container.streams.video:
                raise CorruptRecord(source, record, "bad_mp4", "no video stream")
            for i, frame in enumerate(container.decode(video=0)):
                if i % every == 0:
                    frames.append((i, frame.to_ndarray(format="rgb24")))
                    if max_frames is not None and len(frames) >= max_frames:
                        break
    except CorruptRecord:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise CorruptRecord(source, record, "bad_mp4", f"cannot decode: {e}") from None
    if not frames:
        raise CorruptRecord(source, record, "bad_mp4", "no frame decodes")
    return frames


def expected_annotated(frame_count: int, every: int = ANNOTATION_EVERY) -> int:
    """Annotated frames of a video of `frame_count` 24 fps frames: ceil(frame_count / every)."""
    return math.ceil(frame_count / every)
