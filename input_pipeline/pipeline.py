"""The training input pipeline: prepared TFDS datasets -> deterministic, resumable, per-host
Grain batches.

    specs = [SourceSpec("sav", data_dir, batch_size=4, weight=0.85),
             SourceSpec("sa1b", data_dir, batch_size=4, weight=0.15)]
    it = iter(build(specs, PipelineConfig(resolution=1024, seed=0, num_workers=8)))
    batch = next(it)                 # numpy dict, fields of input_pipeline.examples, batched
    state = it.get_state()           # JSON-able; it.set_state(state) resumes at the next batch

Per dataset (each a `tfds.data_source`, array_record, no TensorFlow):

    MapDataset.source -> seed -> shuffle (a new permutation every epoch)
      -> [: n - n % hosts] -> [host :: hosts]      (equal, disjoint per-host slices)
      -> repeat(num_epochs) -> random_map(VideoClip | ImageSample)     (per-record rng)
      -> batch(per-host batch size, drop_remainder)

then the datasets are interleaved batch by batch in proportion to their weights (a step's
batch is all video or all image, as in SAM 2; shapes differ, so the train step compiles once
per kind), read by `num_threads` threads and, with num_workers > 0, by Grain's worker
processes (`mp_prefetch`). Batching comes before the workers and every random draw is keyed by
the record's index, so the batches are identical for 0, 1 or N workers and for any thread
count, and an iterator state (indices only) resumes exactly.

Entry points that use workers must run under `if __name__ == "__main__":` (workers are
spawned, not forked).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import grain

from input_pipeline import augment, examples, sampling

# "davis": DAVIS-style folders prepared with the SA-V record schema (tfds_builders/davis.py)
VIDEO_DATASETS = ("sav", "davis")
IMAGE_DATASETS = ("sa1b",)


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One prepared dataset: its TFDS name ("sav", "davis" or "sa1b"), where it was prepared
    (`scripts/prepare_data.py --data_dir`), its per-host batch size and mixing weight."""

    name: str
    data_dir: str
    batch_size: int
    weight: float = 1.0
    split: str = "train"

    def __post_init__(self):
        if self.name not in VIDEO_DATASETS + IMAGE_DATASETS:
            raise ValueError(f"unknown dataset {self.name!r}; the pipeline reads "
                             f"{VIDEO_DATASETS + IMAGE_DATASETS}")
        if self.batch_size < 1 or not self.weight > 0:
            raise ValueError(f"batch_size must be >= 1 and weight > 0: {self}")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything that decides the batches (seed, sampling, augmentation, output format) and
    how they are produced (threads, workers, buffers: never what they contain).

    video_aug / image_aug default to SAM 2's video recipe and the paper's SA-1B recipe (flip +
    resize) at `resolution`. num_epochs None = forever."""

    resolution: int = 1024
    seed: int = 0
    num_epochs: int | None = None
    clip: sampling.ClipConfig = sampling.ClipConfig()
    image: sampling.ImageConfig = sampling.ImageConfig()
    video_aug: augment.AugmentConfig | None = None
    image_aug: augment.AugmentConfig | None = None
    output: examples.OutputConfig = examples.OutputConfig()
    num_workers: int = 0
    worker_buffer_size: int = 2
    num_threads: int = 2
    prefetch_buffer_size: int = 4

    def augment_for(self, name: str) -> augment.AugmentConfig:
        if name in VIDEO_DATASETS:
            aug = self.video_aug or augment.AugmentConfig(resolution=self.resolution)
        else:
            aug = self.image_aug or augment.AugmentConfig.image(self.resolution)
        if aug.resolution != self.resolution:
            raise ValueError(f"the {name} augmentation resolution {aug.resolution} differs "
                             f"from the pipeline's {self.resolution}")
        return aug


def tfds_name(name: str) -> str:
    """The name TFDS finds a prepared dataset by: "davis" with its version, since TFDS's own
    (unrelated) `davis` builder would otherwise claim the name."""
    if name == "davis":
        from input_pipeline.tfds_builders import davis

        return davis.TFDS_NAME
    return name


def open_source(spec: SourceSpec):
    """The prepared dataset as a random-access source; a clear error when it is missing."""
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(tfds_name(spec.name), split=spec.split,
                                data_dir=spec.data_dir, download=False)  # never fetch
    except Exception as e:  # TFDS raises several kinds for "not prepared here"
        raise FileNotFoundError(
            f"no prepared {spec.name!r} dataset ({spec.split}) in {spec.data_dir}: prepare it "
            f"with `python scripts/prepare_data.py {spec.name} --manual_dir <original shards> "
            f"--data_dir {spec.data_dir}` ({type(e).__name__}: {e})") from e


def example_transform(name: str, source, cfg: PipelineConfig) -> grain.transforms.RandomMap:
    """The record -> example transform of dataset `name`."""
    if name in VIDEO_DATASETS:
        return examples.VideoClip(source, cfg.clip, cfg.augment_for(name), cfg.output)
    return examples.ImageSample(source, cfg.image, cfg.augment_for(name), cfg.output)


def _seed(base: int, position: int) -> int:
    """Each dataset its own permutation and random stream, all from the one config seed."""
    return (base * 1_000_003 + position * 7919) % 2**32


def host_dataset(spec: SourceSpec, cfg: PipelineConfig, process_index: int, process_count: int,
                 position: int = 0, source=None) -> grain.MapDataset:
    """One dataset's batches for one host (see the module docstring)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    source = source if source is not None else open_source(spec)
    n = len(source)
    per_host = n // process_count
    if per_host == 0 or (cfg.num_epochs is not None
                         and per_host * cfg.num_epochs < spec.batch_size):
        raise ValueError(f"{spec.name}: {n} records give {per_host} per host for "
                         f"{process_count} hosts, not one batch of {spec.batch_size} in "
                         f"{cfg.num_epochs} epoch(s)")
    ds = grain.MapDataset.source(source).seed(_seed(cfg.seed, position)).shuffle()
    ds = ds[: per_host * process_count][process_index::process_count]
    ds = ds.repeat(cfg.num_epochs)
    ds = ds.random_map(example_transform(spec.name, source, cfg))
    return ds.batch(spec.batch_size, drop_remainder=True)


def _process() -> tuple[int, int]:
    import jax

    return jax.process_index(), jax.process_count()


def build_map_dataset(specs: Sequence[SourceSpec], cfg: PipelineConfig,
                      process_index: int | None = None,
                      process_count: int | None = None) -> grain.MapDataset:
    """All datasets' batches for this host, mixed by weight; random access by step number.
    process_index / process_count default to jax's (pass them to simulate hosts)."""
    if not specs:
        raise ValueError("build needs at least one SourceSpec")
    if process_index is None or process_count is None:
        process_index, process_count = _process()
    parts = [host_dataset(s, cfg, process_index, process_count, i) for i, s in enumerate(specs)]
    if len(parts) == 1:
        return parts[0]
    return grain.MapDataset.mix(parts, [s.weight for s in specs])


def _allow_worker_processes() -> None:
    """grain 0.2.17-0.2.18 reads an absl flag when starting workers and fails in a script that
    never parsed flags (google/grain#1355); mark them parsed (our scripts use argparse)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def build(specs: Sequence[SourceSpec], cfg: PipelineConfig, process_index: int | None = None,
          process_count: int | None = None) -> grain.IterDataset:
    """The host's batch stream: iterate it; its iterator has get_state / set_state."""
    ds = build_map_dataset(specs, cfg, process_index, process_count).to_iter_dataset(
        grain.ReadOptions(num_threads=cfg.num_threads,
                          prefetch_buffer_size=cfg.prefetch_buffer_size))
    if cfg.num_workers > 0:
        _allow_worker_processes()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=cfg.num_workers, per_worker_buffer_size=cfg.worker_buffer_size))
    return ds


# ------------------------------------------------------------------------- iterator state

def save_state(iterator, path: str | os.PathLike) -> None:
    """Write the iterator's position as JSON, atomically (a crash leaves the old file).
    With Orbax, `grain.checkpoint.CheckpointSave(iterator)` in a CheckpointManager does the
    same inside a training checkpoint."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(iterator.get_state(), f)
    os.replace(tmp, path)


def restore_state(iterator, path: str | os.PathLike) -> None:
    """Move a fresh iterator of the same pipeline to the position saved in `path`."""
    with open(path) as f:
        iterator.set_state(json.load(f))
