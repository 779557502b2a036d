"""What the SA-1B and SA-V builders share: finding the original shards and the single-process
`GeneratorBasedBuilder` loop over them (each shard through the dataset's conversion)."""

from __future__ import annotations

import abc
import glob
import os
from collections.abc import Iterator

import tensorflow_datasets as tfds

from input_pipeline.errors import CorruptRecord


def find_shards(manual_dir: str | os.PathLike, shard_glob: str,
                folder_glob: str | None = None) -> list[str]:
    """The original shards in `manual_dir`: tars matching `shard_glob`, then (when given)
    extracted folders matching `folder_glob`, each group sorted. Raises FileNotFoundError."""
    manual_dir = os.fspath(manual_dir)
    found = sorted(glob.glob(os.path.join(manual_dir, shard_glob)))
    if folder_glob:
        found += sorted(p for p in glob.glob(os.path.join(manual_dir, folder_glob))
                        if os.path.isdir(p))
    shards = [p for p in found if os.path.isdir(p) or p.endswith(".tar")]
    if not shards:
        raise FileNotFoundError(f"no {shard_glob} shards in {manual_dir}")
    return shards


class ShardBuilder(tfds.core.GeneratorBasedBuilder):
    """A dataset prepared shard by shard from `manual_dir` (one process; for many shards in
    parallel, resumably, use `input_pipeline.prepare` / `scripts/prepare_data.py`).

    Subclasses set `SHARD_GLOB` (and `FOLDER_GLOB` for extracted shards), `_info`, and
    `convert(path)` -> iterator of (key, example) or CorruptRecord. Skipped records are kept
    in `self.skipped`. Abstract, so TFDS does not register it as a dataset.
    """

    SHARD_GLOB: str
    FOLDER_GLOB: str | None = None

    def __init__(self, *, config, **kwargs):
        self.prep_config = config
        self.skipped: list[CorruptRecord] = []
        super().__init__(**kwargs)

    @abc.abstractmethod
    def convert(self, path: str) -> Iterator[tuple[str, dict] | CorruptRecord]:
        """One original shard -> (key, example) per good record, CorruptRecord per skip."""

    def _split_generators(self, dl_manager):
        shards = find_shards(dl_manager.manual_dir, self.SHARD_GLOB, self.FOLDER_GLOB)
        return {"train": self._generate_examples(shards)}

    def _generate_examples(self, shards):
        for path in shards:
            for item in self.convert(path):
                if isinstance(item, CorruptRecord):
                    self.skipped.append(item)
                else:
                    yield item
