"""Paths that may be local or on an object store (gs://, s3://): the one place that decides.

On Cloud TPU the workdir is usually a bucket. Orbax writes checkpoints to `gs://` itself
(through etils.epath and TensorStore); the trainer's own small files (`model.json`,
`metrics.jsonl`, TensorBoard events) go through the helpers here. An object store is not a
file system, and two local habits break on it:

- no append: an object is written whole. `JsonlLog` keeps the lines and rewrites the object
  (throttled, and on close);
- no atomic rename: a rename is a copy and a delete. It is also not needed, because an object
  becomes visible only once its upload completes: `write_text_atomic` writes in place there.

Local paths stay `pathlib.Path` (absolute), with the atomic temp-file-and-rename. URLs become
`etils.epath.Path`: with TensorFlow installed epath uses `tf.io.gfile`, otherwise fsspec
(`gcsfs` for gs://, from the `gcs` extra: `pip install -e '.[gcs]'`).
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any

# The object stores etils.epath reaches (gs: Google Cloud Storage, s3: S3, az: Azure).
URL_SCHEMES = ("gs", "s3", "az")


def is_url(path: Any) -> bool:
    """Whether `path` names an object-store location ("gs://bucket/dir"), not a local path."""
    return path is not None and "://" in str(path)


def as_path(path: str | os.PathLike) -> Any:
    """A local path as an absolute `pathlib.Path`; a gs:// / s3:// / az:// URL as an
    `etils.epath.Path` (same `/`, `exists`, `is_dir`, `mkdir`, `read_text` API). Any other
    scheme is an error: `pathlib` would silently turn "gcs://b/x" into a local "gcs:/b/x"."""
    text = os.fspath(path) if not isinstance(path, str) else path
    if not is_url(text):
        return Path(text).absolute()
    scheme = text.split("://", 1)[0]
    if scheme not in URL_SCHEMES:
        raise ValueError(f"{text!r}: unsupported URL scheme {scheme!r} (supported: "
                         f"{', '.join(s + '://' for s in URL_SCHEMES)} or a local path)")
    _require_backend(scheme, text)
    from etils import epath

    return epath.Path(text)


def _require_backend(scheme: str, text: str) -> None:
    """Fail now, naming the package, if epath could not reach `scheme` (it would fail at the
    first file access, deep inside a run)."""
    if importlib.util.find_spec("tensorflow") is not None:
        return  # epath goes through tf.io.gfile, which reaches all of them
    import fsspec

    try:
        fsspec.get_filesystem_class("gcs" if scheme == "gs" else scheme)
    except (ImportError, ValueError) as e:
        raise ImportError(f"{text}: {scheme}:// paths need their file-system package ({e}); "
                          "for gs:// install the gcs extra: pip install -e '.[gcs]'") from e


def require_local(path: str | os.PathLike | None, what: str) -> None:
    """Refuse a URL where the code reads or writes with local file APIs only (model
    directories written by `save_model`, evaluation outputs). On a TPU VM, mount the bucket
    with gcsfuse and pass the mounted path (docs/tpu.md), or copy the files first."""
    if is_url(path):
        raise ValueError(
            f"{what} {str(path)!r}: object-store URLs are not supported for {what} (it is "
            "written or read with local file APIs); copy it (`gcloud storage cp -r`) or mount "
            "the bucket with gcsfuse (`gcsfuse --implicit-dirs BUCKET /mnt/BUCKET`, or "
            "scripts/tpu/launch.py install --mount) and pass the local path.")


def write_text_atomic(path: Any, text: str) -> None:
    """Write `text` so that readers see the old content or the new, never half of it: local
    files through a temp file and `os.replace`; objects directly (an upload is all or
    nothing)."""
    if isinstance(path, Path):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    else:
        path.write_text(text)


class JsonlLog:
    """An append-only text log (one JSON object per line) at `path`, local or object store.

    Local: the file is opened for appending and flushed after every line. Object store: the
    existing object's lines are read once (a resumed run keeps its history), new lines are
    kept in memory, and the whole object is rewritten at most every `upload_every_s` seconds
    and on `close()`: an object cannot be appended to, and rewriting a growing file on every
    logged step would cost bandwidth quadratic in the run's length. A crash loses at most the
    last `upload_every_s` seconds of lines; the checkpoints are unaffected.
    """

    def __init__(self, path: Any, upload_every_s: float = 60.0):
        self.path = path
        self._local = isinstance(path, Path)
        self._upload_every_s = float(upload_every_s)
        if self._local:
            self._file = open(path, "a")  # noqa: SIM115 (closed in close)
        else:
            old = path.read_text() if path.exists() else ""
            # a list, joined on upload: `str +=` on an attribute copies the whole log each line
            self._lines = old.splitlines()
            self._dirty = False
            self._uploaded_at = time.monotonic()

    def write(self, line: str) -> None:
        """Add one line (without its newline)."""
        if self._local:
            self._file.write(line + "\n")
            self._file.flush()
            return
        self._lines.append(line)
        self._dirty = True
        if time.monotonic() - self._uploaded_at >= self._upload_every_s:
            self.flush()

    def flush(self) -> None:
        """Put every line written so far into the file or object."""
        if self._local:
            self._file.flush()
        elif self._dirty:
            self.path.write_text("".join(x + "\n" for x in self._lines))
            self._dirty = False
            self._uploaded_at = time.monotonic()

    def close(self) -> None:
        self.flush()
        if self._local:
            self._file.close()
