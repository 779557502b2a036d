"""Parallel, resumable preparation of SA-1B / SA-V / DAVIS-style folders into TFDS
array_record datasets.

    prepare("sa1b", manual_dir, data_dir, num_workers=8)

Each original shard (`sa_XXXXXX.tar`, `sav_XXX.tar`; for DAVIS-style folders a group of
`videos_per_shard` videos, `tfds_builders.davis.VideoShard`) is converted by one worker process
into one array_record file of TFDS-serialised examples (`examples_from_tar` of the builder, or
its `examples_from_shard`: the same conversion as the single-process `GeneratorBasedBuilder`),
in `<data_dir>/<name>/<version>.work/`. A shard is written to a temporary name and renamed when
complete, and its report (counts, skipped records) is written after it: a shard counts as done
only when its report exists, so a preparation killed at any moment restarts without redoing
finished shards and never exposes a half-written one. When every shard is done the dataset
directory is assembled (hard links, numbered `<name>-<split>.array_record-0000i-of-0000N`, per
split: "train", and DAVIS's optional held-out split; empty shards left out), its TFDS metadata
written (`tfds.folder_dataset.write_metadata`), and the whole directory renamed into place at
once, with `prepare_report.json` (counts by kind, every skipped record). Run one preparation
per dataset directory at a time: a start removes the temporary files a killed run left behind.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import glob
import hashlib
import json
import multiprocessing
import os
import shutil
import time

from input_pipeline.errors import CorruptRecord
from input_pipeline.tfds_builders import base

KINDS = ("sa1b", "sav", "davis")
_CONFIG_CLASSES = {"sa1b": "Sa1bConfig", "sav": "SavConfig", "davis": "DavisConfig"}


def _builder_module(kind: str):
    if kind == "sa1b":
        from input_pipeline.tfds_builders import sa1b as mod
    elif kind == "sav":
        from input_pipeline.tfds_builders import sav as mod
    elif kind == "davis":
        from input_pipeline.tfds_builders import davis as mod
    else:
        raise ValueError(f"unknown dataset {kind!r}; choose one of {KINDS}")
    return mod


def default_config(kind: str):
    return getattr(_builder_module(kind), _CONFIG_CLASSES[kind])()


def _config_hash(kind: str, config) -> str:
    text = json.dumps({"kind": kind, **dataclasses.asdict(config)}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def find_shards(kind: str, manual_dir: str, config=None) -> list:
    """The original shards in `manual_dir` (SA-V also as extracted `sav_0XX/` folders; DAVIS:
    `VideoShard`s, groups of video folders, which depend on the config)."""
    mod = _builder_module(kind)
    if hasattr(mod, "find_shards"):
        return mod.find_shards(manual_dir, config or default_config(kind))
    return base.find_shards(manual_dir, mod.SHARD_GLOB, mod.FOLDER_GLOB)


def _is_path(shard) -> bool:
    return isinstance(shard, str | os.PathLike)


def _stem(shard) -> str:
    """`.../sa_000001.tar` or `.../sav_001/` (or a shard object's `stem`) -> the name of its
    work files."""
    if not _is_path(shard):
        return shard.stem
    return os.path.basename(os.fspath(shard).rstrip("/")).removesuffix(".tar")


def _split(shard) -> str:
    """The split a shard's examples go to: "train" for original shards (paths)."""
    return "train" if _is_path(shard) else shard.split


def convert_shard(kind: str, shard, work_dir: str, config) -> dict:
    """Convert one original shard into `<work_dir>/<stem>.array_record` + its report.
    -> the report dict. Runs in a worker process."""
    from array_record.python import array_record_module
    from tensorflow_datasets.core import example_serializer

    mod = _builder_module(kind)
    features = mod.features()
    # tf.train.Example's feature map is serialised in hash order unless asked otherwise: with
    # deterministic=True the same input gives the same bytes in any process (resume == rerun)
    serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
    stem = _stem(shard)
    out = os.path.join(work_dir, f"{stem}.array_record")
    tmp = f"{out}.tmp-{os.getpid()}"
    t0 = time.perf_counter()
    count, nbytes, keys = 0, 0, set()
    skipped: list[dict] = []
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
    try:
        convert = getattr(mod, "examples_from_shard", None) or mod.examples_from_tar
        for item in convert(shard, config):
            if isinstance(item, CorruptRecord):
                skipped.append(item.as_dict())
                continue
            key, example = item
            if key in keys:
                skipped.append(CorruptRecord(str(shard), key, "duplicate_key",
                                             "the same id twice in one shard").as_dict())
                continue
            keys.add(key)
            data = serializer.get_tf_example(features.encode_example(example)) \
                .SerializeToString(deterministic=True)
            writer.write(data)
            count += 1
            nbytes += len(data)
    except BaseException:
        writer.close()
        os.remove(tmp)
        raise
    writer.close()
    os.replace(tmp, out)
    report = {"shard": str(shard), "stem": stem, "split": _split(shard),
              "examples": count, "num_bytes": nbytes,
              "skipped": skipped, "seconds": round(time.perf_counter() - t0, 3),
              "config_hash": _config_hash(kind, config)}
    _write_json_atomic(os.path.join(work_dir, f"{stem}.report.json"), report)
    return report


def _write_json_atomic(path: str, data) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _done_report(work_dir: str, shard, chash: str) -> dict | None:
    stem = _stem(shard)
    path = os.path.join(work_dir, f"{stem}.report.json")
    shard_file = os.path.join(work_dir, f"{stem}.array_record")
    if not (os.path.exists(path) and os.path.exists(shard_file)):
        return None
    with open(path) as f:
        report = json.load(f)
    return report if report.get("config_hash") == chash else None


def prepare(kind: str, manual_dir: str, data_dir: str, config=None, num_workers: int = 1,
            progress: bool = True, keep_work: bool = False) -> dict:
    """Prepare `kind` from the shards in `manual_dir` into `<data_dir>/<name>/<version>`.

    Shards already converted (with the same config) are reused. num_workers = 0 converts in
    this process. -> the report (also written to `prepare_report.json` in the dataset dir).
    """
    from tqdm import tqdm

    mod = _builder_module(kind)
    config = config or default_config(kind)
    manual_dir, data_dir = os.fspath(manual_dir), os.fspath(data_dir)
    shards = find_shards(kind, manual_dir, config)
    final_dir = os.path.join(data_dir, mod.NAME, mod.VERSION)
    work_dir = final_dir + ".work"
    os.makedirs(work_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(work_dir, "*.tmp-*")):  # left by a killed run
        os.remove(stale)
    chash = _config_hash(kind, config)
    reports = {s: _done_report(work_dir, s, chash) for s in shards}
    todo = [s for s in shards if reports[s] is None]
    bar = tqdm(total=len(shards), initial=len(shards) - len(todo), unit="shard",
               desc=f"prepare {kind}", disable=not progress)
    if num_workers == 0:
        for s in todo:
            reports[s] = convert_shard(kind, s, work_dir, config)
            bar.update()
    elif todo:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=ctx) as pool:
            futures = {pool.submit(convert_shard, kind, s, work_dir, config): s for s in todo}
            for fut in concurrent.futures.as_completed(futures):
                reports[futures[fut]] = fut.result()
                bar.update()
    bar.close()
    report = _assemble(mod, [reports[s] for s in shards], work_dir, final_dir, kind, config)
    if not keep_work:
        shutil.rmtree(work_dir, ignore_errors=True)
    return report


def _link_split(mod, split: str, full: list[dict], work_dir: str, tmp_dir: str, template):
    """Hard-link one split's non-empty shard files under their TFDS names -> its SplitInfo."""
    import tensorflow_datasets as tfds

    n = len(full)
    for i, r in enumerate(full):
        src = os.path.join(work_dir, f"{r['stem']}.array_record")
        dst = os.path.join(tmp_dir, f"{mod.NAME}-{split}.array_record-{i:05d}-of-{n:05d}")
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    return tfds.core.SplitInfo(name=split, shard_lengths=[r["examples"] for r in full],
                               num_bytes=sum(r["num_bytes"] for r in full),
                               filename_template=template)


def _assemble(mod, reports: list[dict], work_dir: str, final_dir: str, kind: str, config) -> dict:
    import tensorflow_datasets as tfds

    by_split: dict[str, list[dict]] = {}
    for r in reports:
        if r["examples"] > 0:
            by_split.setdefault(r.get("split", "train"), []).append(r)
    if not by_split:
        raise RuntimeError(f"no usable example in any shard; see the reports in {work_dir}")
    tmp_dir = f"{final_dir}.incomplete-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(tmp_dir)
    template = tfds.core.ShardedFileTemplate(
        data_dir=tmp_dir, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
        dataset_name=mod.NAME, filetype_suffix="array_record")
    splits = [_link_split(mod, name, full, work_dir, tmp_dir, template)
              for name, full in by_split.items()]
    tfds.folder_dataset.write_metadata(data_dir=tmp_dir, features=mod.features(),
                                       split_infos=splits, filename_template=template,
                                       check_data=False)  # its check needs TensorFlow
    # our check: TFDS opens it without TensorFlow and sees every example
    builder = tfds.builder_from_directory(tmp_dir)
    for name, full in by_split.items():
        source = builder.as_data_source(split=name)
        expected = sum(r["examples"] for r in full)
        if len(source) != expected:
            raise RuntimeError(f"assembled {tmp_dir} reads {len(source)} {name} examples, "
                               f"not {expected}")
        source[0], source[len(source) - 1]  # decodes
    counts = collections.Counter(s["kind"] for r in reports for s in r["skipped"])
    report = {
        "dataset": mod.NAME, "version": mod.VERSION, "config": dataclasses.asdict(config),
        "shards": len(reports), "shards_with_examples": sum(map(len, by_split.values())),
        "examples": sum(r["examples"] for r in reports),
        "split_examples": {name: sum(r["examples"] for r in full)
                           for name, full in by_split.items()},
        "skipped_by_kind": dict(sorted(counts.items())),
        "skipped": [s for r in reports for s in r["skipped"]],
        "per_shard": [{"split": r.get("split", "train"),
                       **{k: r[k] for k in ("shard", "examples", "num_bytes", "seconds")}}
                      for r in reports],
    }
    _write_json_atomic(os.path.join(tmp_dir, "prepare_report.json"), report)
    if os.path.exists(final_dir):  # a previous preparation: replaced only now, whole
        old = f"{final_dir}.old-{os.getpid()}"
        os.rename(final_dir, old)
        os.rename(tmp_dir, final_dir)
        shutil.rmtree(old)
    else:
        os.rename(tmp_dir, final_dir)
    return report
