"""Parallel, resumable preparation of SA-1B / SA-V into TFDS array_record datasets.

    prepare("sa1b", manual_dir, data_dir, num_workers=8)

Each original shard (`sa_XXXXXX.tar`, `sav_XXX.tar`) is converted by one worker process into
one array_record file of TFDS-serialised examples (`examples_from_tar` of the builder: the
same conversion as the single-process `GeneratorBasedBuilder`), in `<data_dir>/<name>/
<version>.work/`. A shard is written to a temporary name and renamed when complete, and its
report (counts, skipped records) is written after it: a shard counts as done only when its
report exists, so a preparation killed at any moment restarts without redoing finished shards
and never exposes a half-written one. When every shard is done the dataset directory is
assembled (hard links, numbered `<name>-train.array_record-0000i-of-0000N`; empty shards left
out), its TFDS metadata written (`tfds.folder_dataset.write_metadata`), and the whole directory
renamed into place at once, with `prepare_report.json` (counts by kind, every skipped record).
Run one preparation per dataset directory at a time: a start removes the temporary files a
killed run left behind.
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

KINDS = ("sa1b", "sav")


def _builder_module(kind: str):
    if kind == "sa1b":
        from input_pipeline.tfds_builders import sa1b as mod
    elif kind == "sav":
        from input_pipeline.tfds_builders import sav as mod
    else:
        raise ValueError(f"unknown dataset {kind!r}; choose one of {KINDS}")
    return mod


def default_config(kind: str):
    mod = _builder_module(kind)
    return mod.Sa1bConfig() if kind == "sa1b" else mod.SavConfig()


def _config_hash(kind: str, config) -> str:
    text = json.dumps({"kind": kind, **dataclasses.asdict(config)}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def find_shards(kind: str, manual_dir: str) -> list[str]:
    """The original shards in `manual_dir` (SA-V also as extracted `sav_0XX/` folders)."""
    mod = _builder_module(kind)
    return base.find_shards(manual_dir, mod.SHARD_GLOB, mod.FOLDER_GLOB)


def _stem(shard: str) -> str:
    """`.../sa_000001.tar` or `.../sav_001/` -> the name of its work files."""
    return os.path.basename(shard.rstrip("/")).removesuffix(".tar")


def convert_shard(kind: str, shard: str, work_dir: str, config) -> dict:
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
        for item in mod.examples_from_tar(shard, config):
            if isinstance(item, CorruptRecord):
                skipped.append(item.as_dict())
                continue
            key, example = item
            if key in keys:
                skipped.append(CorruptRecord(shard, key, "duplicate_key",
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
    report = {"shard": shard, "stem": stem, "examples": count, "num_bytes": nbytes,
              "skipped": skipped, "seconds": round(time.perf_counter() - t0, 3),
              "config_hash": _config_hash(kind, config)}
    _write_json_atomic(os.path.join(work_dir, f"{stem}.report.json"), report)
    return report


def _write_json_atomic(path: str, data) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _done_report(work_dir: str, shard: str, chash: str) -> dict | None:
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
    shards = find_shards(kind, manual_dir)
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


def _assemble(mod, reports: list[dict], work_dir: str, final_dir: str, kind: str, config) -> dict:
    import tensorflow_datasets as tfds

    full = [r for r in reports if r["examples"] > 0]
    if not full:
        raise RuntimeError(f"no usable example in any shard; see the reports in {work_dir}")
    tmp_dir = f"{final_dir}.incomplete-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(tmp_dir)
    n = len(full)
    for i, r in enumerate(full):
        src = os.path.join(work_dir, f"{r['stem']}.array_record")
        dst = os.path.join(tmp_dir, f"{mod.NAME}-train.array_record-{i:05d}-of-{n:05d}")
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    template = tfds.core.ShardedFileTemplate(
        data_dir=tmp_dir, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
        dataset_name=mod.NAME, filetype_suffix="array_record")
    split = tfds.core.SplitInfo(name="train", shard_lengths=[r["examples"] for r in full],
                                num_bytes=sum(r["num_bytes"] for r in full),
                                filename_template=template)
    tfds.folder_dataset.write_metadata(data_dir=tmp_dir, features=mod.features(),
                                       split_infos=[split], filename_template=template,
                                       check_data=False)  # its check needs TensorFlow
    # our check: TFDS opens it without TensorFlow and sees every example
    source = tfds.builder_from_directory(tmp_dir).as_data_source(split="train")
    expected = sum(r["examples"] for r in full)
    if len(source) != expected:
        raise RuntimeError(f"assembled {tmp_dir} reads {len(source)} examples, not {expected}")
    source[0], source[len(source) - 1]  # decodes
    counts = collections.Counter(s["kind"] for r in reports for s in r["skipped"])
    report = {
        "dataset": mod.NAME, "version": mod.VERSION, "config": dataclasses.asdict(config),
        "shards": len(reports), "shards_with_examples": n,
        "examples": sum(r["examples"] for r in reports),
        "skipped_by_kind": dict(sorted(counts.items())),
        "skipped": [s for r in reports for s in r["skipped"]],
        "per_shard": [{k: r[k] for k in ("shard", "examples", "num_bytes", "seconds")}
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
