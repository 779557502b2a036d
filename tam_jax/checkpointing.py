"""Checkpoints: model directories (params only) and training checkpoints (full state).

The only module that imports orbax.

Model directory (`save_model` / `load_model`), what `scripts/convert.py` and the predictors use:
    params/          Orbax PyTree checkpoint of the Flax params (float32)
    tam_jax.json     {"variant": <config name>, "format": 1}
Writes are atomic: everything goes into `<dir>.partial-XXXX` first and is renamed into place at
the end, so a crash never leaves a half-written model directory under the final name.

Training checkpoints (`TrainCheckpointer`), one Orbax `CheckpointManager` at
`<workdir>/checkpoints`:
    <step>/state/    the train state pytree (params, optimiser state, step, PRNG key), sharded
    <step>/data/     the Grain iterator position, one JSON file per host (optional)
Orbax writes each step into `<step>.orbax-checkpoint-tmp` and renames it when every item is
complete, so an interrupted save is never listed as a step (and never restored). Restoring
takes an abstract train state with shardings, so a checkpoint written on one mesh restores onto
any other mesh or device count (Orbax reshards while reading).

Where a run starts (`resolve_start`): this workdir's latest checkpoint > `resume` (another run's
full state) > `init_from` (params only: an official `.pt`, a model directory, or another run's
latest checkpoint, as stage 2 starts from stage 1) > scratch.
Preemption (`PreemptionGuard`): SIGTERM only sets a flag; the trainer checks it after each step,
saves with `force=True`, waits and exits.

Storage: the workdir, `resume` and `init_from` may be gs:// (or s3://, az://) URLs; Orbax writes
and reads them itself, and the paths go through `tam_jax.storage`. Model directories written by
`save_model` (the converter's output) must be local: they are made atomic by a rename.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np

from tam_jax import storage

log = logging.getLogger(__name__)

META_FILE = "tam_jax.json"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A model directory that is missing, incomplete or of another format."""


def is_model_dir(path: str | os.PathLike) -> bool:
    return (storage.as_path(path) / META_FILE).is_file()


def save_model(path: str | os.PathLike, params: Mapping[str, Any], variant: str,
               overwrite: bool = False) -> Path:
    """Save `params` and the variant name to the directory `path` atomically."""
    import orbax.checkpoint as ocp

    storage.require_local(path, "a model directory")  # written through a temp dir + rename
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path} already exists (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".partial-", dir=path.parent))
    try:
        params = jax.tree.map(np.asarray, dict(params))
        with ocp.PyTreeCheckpointer() as ckptr:
            ckptr.save(tmp / "params", params)
        (tmp / META_FILE).write_text(json.dumps({"variant": variant, "format": FORMAT_VERSION}))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_model(path: str | os.PathLike) -> tuple[dict, str]:
    """(params as numpy, variant name) from a directory written by `save_model`."""
    import orbax.checkpoint as ocp

    path = storage.as_path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise CheckpointError(f"{path}: not a tam_jax model directory (no {META_FILE})")
    try:
        meta = json.loads(meta_file.read_text())
        variant = meta["variant"]
    except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"{meta_file}: unreadable metadata ({e})") from e
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_file}: format {meta.get('format')} is not supported")
    with ocp.PyTreeCheckpointer() as ckptr:
        params = ckptr.restore(path / "params")
    return jax.tree.map(np.asarray, params), variant


# --------------------------------------------------------------------- training checkpoints

CHECKPOINTS_DIR = "checkpoints"  # under a workdir
MODEL_FILE = "model.json"  # a training workdir's model description (variant + overrides)
_STATE = "state"  # item names inside one step directory
_DATA = "data"


def _manager_options(*, keep_last: int | None = None, keep_every: int | None = None,
                     save_every: int = 1, async_save: bool = False, read_only: bool = False):
    """CheckpointManagerOptions with explicit policies (max_to_keep / keep_period are
    deprecated in Orbax 0.12 and map onto the same LatestN / EveryNSteps policies)."""
    import orbax.checkpoint as ocp
    from orbax.checkpoint import checkpoint_managers as cm

    if read_only:
        # (the fields read_only would reset anyway, set here so Orbax logs no warnings)
        return ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False,
                                            enable_async_checkpointing=False)
    keep: list = [cm.LatestN(n=keep_last)]
    if keep_every:
        keep.append(cm.EveryNSteps(interval_steps=keep_every))  # steps with step % n == 0
    return ocp.CheckpointManagerOptions(
        # No InitialSavePolicy (Orbax's default also saves the first step it is offered); the
        # preemption policy saves at a multi-host preemption sync point, as the guard stops there.
        save_decision_policy=cm.AnySavePolicy(
            [cm.FixedIntervalPolicy(save_every), cm.PreemptionCheckpointingPolicy()]),
        preservation_policy=cm.AnyPreservationPolicy(keep),
        enable_async_checkpointing=async_save,
        # Leftover `<step>.orbax-checkpoint-tmp` directories of a killed save are deleted (in the
        # background, awaited before the next save); they are never listed as steps anyway.
        cleanup_tmp_directories=True,
    )


def _open_manager(directory: Path, options):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(directory, item_names=(_STATE, _DATA), options=options)


def _check_abstract(abstract_train_state: Any) -> None:
    """Every abstract leaf must say where it goes: without a sharding Orbax falls back to the
    sharding saved in the checkpoint, which names devices of the mesh it was written on."""
    flat = jax.tree_util.tree_flatten_with_path(abstract_train_state)[0]
    missing = [jax.tree_util.keystr(path) for path, leaf in flat
               if isinstance(leaf, jax.ShapeDtypeStruct) and leaf.sharding is None]
    if missing:
        raise ValueError(f"abstract train state leaves without a sharding: {', '.join(missing)}"
                         " (give every jax.ShapeDtypeStruct a sharding=)")


def _restore(mngr, step: int | None, abstract_train_state: Any, data_iterator: Any = None):
    """Restore `state` (and the iterator, in place) of `step` (default: latest) from `mngr`."""
    import orbax.checkpoint as ocp

    _check_abstract(abstract_train_state)
    directory = storage.as_path(mngr.directory)
    if step is None:
        step = mngr.latest_step()
        if step is None:
            raise CheckpointError(f"{directory}: no finished checkpoint to restore")
    elif step not in mngr.all_steps():
        raise CheckpointError(f"{directory}: no checkpoint for step {step} "
                              f"(have {sorted(mngr.all_steps())})")
    items = {_STATE: ocp.args.StandardRestore(abstract_train_state)}
    if data_iterator is not None:
        import grain

        if not (directory / str(step) / _DATA).is_dir():
            raise CheckpointError(f"{directory / str(step)}: saved without a data iterator state")
        items[_DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
        restored = mngr.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        raise CheckpointError(f"{directory / str(step)}: cannot restore the train state "
                              f"({type(e).__name__}: {e})") from e
    return restored[_STATE]


class TrainCheckpointer:
    """Periodic, atomic, optionally asynchronous training checkpoints under
    `<workdir>/checkpoints`, one step per directory.

    `save(step, train_state, data_iterator)` writes the train state pytree (any pytree of
    jax.Arrays, sharded or not; typed PRNG keys are handled by Orbax) and the Grain iterator
    position as ONE step. With `async_save` the call returns once the arrays are copied to host
    memory (the iterator position is captured before it returns too), so the caller may update
    or donate the state right away; the files are written in a background thread. Call `wait()`
    before reading the files, and `close()` (or use `with`) before the process exits.

    Retention: the `keep_last` newest steps are kept plus every step that is a multiple of
    `keep_every` (steps 1..10 with keep_last=2, keep_every=4 leave {4, 8, 9, 10}). "Newest" is
    Orbax's save order, not the step number, which is why `save` refuses to go back in steps.

    Multi-host: every process calls `save` / `restore` with the same step; Orbax writes each
    array shard once and synchronises the hosts. The iterator state is per host
    (`data/process_<i>-of-<n>.json`), so it restores only onto the same number of hosts.
    """

    def __init__(self, workdir: str | os.PathLike, *, keep_last: int | None = 3,
                 keep_every: int | None = None, save_every: int = 1, async_save: bool = True):
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 or None (keep all), got {keep_last}")
        if keep_every is not None and keep_every < 1:
            raise ValueError(f"keep_every must be >= 1 or None, got {keep_every}")
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        self.directory = storage.as_path(workdir) / CHECKPOINTS_DIR
        self._mngr = _open_manager(self.directory, _manager_options(
            keep_last=keep_last, keep_every=keep_every, save_every=save_every,
            async_save=async_save))

    def save(self, step: int, train_state: Any, data_iterator: Any = None, *,
             force: bool = False) -> bool:
        """Save `train_state` (and the iterator position) as `step` if `step` is a multiple of
        `save_every` or `force`; True when a save started. A step that is already saved is
        skipped (False), so a forced save right after a periodic one at the same step is fine.
        """
        import orbax.checkpoint as ocp

        step = int(step)
        if step in self._mngr.all_steps():
            return False
        latest = self._mngr.latest_step()
        if latest is not None and step < latest:
            # Orbax would silently skip every unforced save until `latest` is passed, and a forced
            # one would count as the newest step for retention (deleting a later one).
            raise CheckpointError(f"{self.directory}: cannot save step {step} before the latest "
                                  f"checkpoint {latest}; use a fresh workdir to go back in steps")
        items = {_STATE: ocp.args.StandardSave(train_state)}
        if data_iterator is not None:
            import grain

            items[_DATA] = grain.checkpoint.CheckpointSave(data_iterator)
        return bool(self._mngr.save(step, args=ocp.args.Composite(**items), force=force))

    def restore(self, abstract_train_state: Any, step: int | None = None,
                data_iterator: Any = None) -> Any:
        """The train state of `step` (default: the latest), placed as `abstract_train_state`
        says: a pytree of `jax.ShapeDtypeStruct` with shardings (any mesh: Orbax reshards).
        `data_iterator`, a fresh iterator of the same pipeline, is moved to the saved position
        in place. Raises CheckpointError when there is nothing to restore or it does not fit."""
        return _restore(self._mngr, step, abstract_train_state, data_iterator)

    def latest_step(self) -> int | None:
        """The newest saved step, counting a save still in flight (`wait()` puts it on disk;
        a crash before that leaves the previous step as the newest on disk)."""
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def wait(self) -> None:
        """Block until the asynchronous save in flight (if any) is on disk and committed."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves and deletions, then release Orbax's threads."""
        self._mngr.close()

    def __enter__(self) -> TrainCheckpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def latest_checkpoint_step(directory: str | os.PathLike) -> int | None:
    """The newest finished step in a checkpoints directory; None if it has none (or is absent).
    Half-written `<step>.orbax-checkpoint-tmp` directories do not count."""
    directory = storage.as_path(directory)
    if not directory.is_dir():
        return None
    with _open_manager(directory, _manager_options(read_only=True)) as mngr:
        return mngr.latest_step()


def find_latest_checkpoint(path: str | os.PathLike) -> tuple[Any, int]:
    """(checkpoints directory, its newest finished step) of `path`: a workdir
    (`<path>/checkpoints`) or a checkpoints directory itself. Raises CheckpointError if neither
    holds a finished checkpoint. (One listing per candidate: on GCS each is a round trip.)"""
    path = storage.as_path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such directory")
    for candidate in (path / CHECKPOINTS_DIR, path):
        step = latest_checkpoint_step(candidate)
        if step is not None:
            return candidate, step
    raise CheckpointError(f"{path}: holds no finished training checkpoint (looked in "
                          f"{path / CHECKPOINTS_DIR} and {path})")


def find_checkpoints_dir(path: str | os.PathLike) -> Path:
    """The checkpoints directory of `path` (see `find_latest_checkpoint`)."""
    return find_latest_checkpoint(path)[0]


def restore_train_state(checkpoints_dir: str | os.PathLike, abstract_train_state: Any,
                        step: int | None = None, data_iterator: Any = None) -> Any:
    """`TrainCheckpointer.restore` from any checkpoints directory, read-only (for `resume`, a
    StartPoint of kind "workdir" or "resume": `restore_train_state(start.path, abstract,
    start.step, iterator)`)."""
    with _open_manager(storage.as_path(checkpoints_dir),
                       _manager_options(read_only=True)) as mngr:
        return _restore(mngr, step, abstract_train_state, data_iterator)


def read_train_params(path: str | os.PathLike, step: int | None = None) -> tuple[dict, int]:
    """(params as numpy, step) of a training checkpoint under `path` (a workdir or its
    checkpoints directory); `step` None = the latest finished one.

    Only the `params` subtree of the saved train state is read (Orbax partial restore, as numpy
    arrays: no abstract train state, optimiser or mesh needed; any device count works). This
    is what evaluation and `init_from` (stage 2 from a stage-1 run) take from a training run.
    """
    import orbax.checkpoint as ocp

    directory, latest = find_latest_checkpoint(path)
    step = latest if step is None else int(step)
    state_dir = directory / str(step) / _STATE
    if not state_dir.is_dir():
        raise CheckpointError(f"{state_dir}: no train state saved for step {step}")
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    absl_log.setLevel(logging.ERROR)  # Orbax warns about metadata files it does not need here
    try:
        with ocp.PyTreeCheckpointer() as ckptr:
            tree = ckptr.metadata(state_dir).item_metadata.tree
            if not isinstance(tree, Mapping) or "params" not in tree:
                raise CheckpointError(f"{state_dir}: not a train state (no 'params' entry)")
            restored = ckptr.restore(state_dir, args=ocp.args.PyTreeRestore(
                item={"params": tree["params"]},
                restore_args={"params": _as_numpy(tree["params"], ocp)}, partial_restore=True))
    finally:
        absl_log.setLevel(level)
    return restored["params"], step


def _as_numpy(meta_tree: Any, ocp) -> Any:
    """Restore args that read every leaf of `meta_tree` as a host numpy array."""
    return jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta_tree)


def read_train_state(checkpoints_dir: str | os.PathLike, step: int | None = None) -> dict:
    """The saved train state of `step` (default: the latest) as a nested dict of numpy arrays
    ({"step", "rng", "params", "opt_state"}), read on this host without a mesh or an abstract
    state (any device count, any number of writing processes): to inspect or compare runs."""
    import orbax.checkpoint as ocp

    directory = storage.as_path(checkpoints_dir)
    with _open_manager(directory, _manager_options(read_only=True)) as mngr:
        if step is None:
            step = mngr.latest_step()
        if step is None or step not in mngr.all_steps():
            raise CheckpointError(f"{directory}: no checkpoint for step {step} "
                                  f"(have {sorted(mngr.all_steps())})")
    path = directory / str(step) / _STATE
    with ocp.PyTreeCheckpointer() as ckptr:
        tree = ckptr.metadata(path).item_metadata.tree
        return ckptr.restore(path, args=ocp.args.PyTreeRestore(
            restore_args=_as_numpy(tree, ocp)))


# ------------------------------------------------------------------------------- preemption

def _multiprocess() -> bool:
    return jax.process_count() > 1 and jax.distributed.is_initialized()


def sync_processes(name: str, timeout_s: int = 3600) -> None:
    """Wait until every process reaches the barrier `name` (unique per call site and use);
    a no-op in a single process.

    It goes through the JAX coordination service, not a device collective, so hosts may arrive
    far apart (one compiling, another loading the same program from the persistent cache). A
    collective over a device group for the first time cannot wait that long on CPU: gloo gives
    up when its peers are more than 30 s apart (and Orbax's own barriers are collectives)."""
    if not _multiprocess():
        return
    import orbax.checkpoint as ocp

    ocp.multihost.sync_global_processes(name, timeout=timeout_s,
                                        processes=set(range(jax.process_count())))


class PreemptionGuard:
    """Context manager turning SIGTERM (the usual preemption notice) into a flag.

    The handler only sets `requested`; the trainer polls after each step, so a step is never
    cut in half and the save happens in the main thread:

        with PreemptionGuard() as guard, TrainCheckpointer(workdir) as ckpt:
            for step in range(start, num_steps):
                state = train_step(state, next(it))
                stop = guard.should_stop(step + 1)
                ckpt.save(step + 1, state, it, force=stop)
                if stop:
                    ckpt.wait()
                    break

    Single process: `should_stop(step)` is the local flag. Multi-host (jax.distributed
    initialised): hosts get the notice at different steps and a save is collective, so
    `should_stop(step)` is `jax.experimental.multihost_utils.reached_preemption_sync_point(step)`,
    true on every host at the same step; there the guard installs no handler, because JAX's
    coordination service listens for SIGTERM itself and a Python handler would replace it. The
    previous handlers are restored on exit. Signal handlers can only be set in the main thread.
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGTERM,)):
        self._signals = tuple(signals)
        self._previous: dict[int, Any] = {}
        self._multiprocess = False
        self.requested = False

    def _handle(self, signum, frame) -> None:
        del frame
        log.warning("received signal %d: will checkpoint and stop after this step", signum)
        self.requested = True

    def __enter__(self) -> PreemptionGuard:
        self._multiprocess = _multiprocess()
        if not self._multiprocess:
            for sig in self._signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def should_stop(self, step: int) -> bool:
        """Whether to checkpoint and exit after `step`; call it once per step on every host."""
        if self._multiprocess:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(int(step)):
                self.requested = True
        return self.requested


# ------------------------------------------------------------------------------ start point

@dataclasses.dataclass(frozen=True)
class StartPoint:
    """Where training starts: `kind` "workdir" / "resume" (full state: `path` is a checkpoints
    directory, `step` its latest step), "init_from" (params only: `path` is an official `.pt`,
    a model directory or another run's checkpoints directory, `step` 0) or "scratch" (`path`
    None, `step` 0)."""

    kind: Literal["workdir", "resume", "init_from", "scratch"]
    path: Any  # pathlib.Path, an etils.epath.Path for a gs:// URL, or None
    step: int


def resolve_start(workdir: str | os.PathLike, resume: str | os.PathLike | None = None,
                  init_from: str | os.PathLike | None = None) -> StartPoint:
    """This workdir's latest checkpoint > `resume` > `init_from` > scratch.

    The workdir wins so that a preempted run that was started with `resume` / `init_from`
    continues from its own progress when it is restarted with the same command. A `resume` or
    `init_from` that names nothing usable is an error, not a silent fall-through to scratch.
    """
    own = storage.as_path(workdir) / CHECKPOINTS_DIR
    step = latest_checkpoint_step(own)
    if step is not None:
        if resume is not None or init_from is not None:
            log.info("%s has checkpoints (step %d): ignoring resume / init_from", own, step)
        return StartPoint("workdir", own, step)
    if resume is not None:
        return StartPoint("resume", *find_latest_checkpoint(resume))
    if init_from is not None:
        path = storage.as_path(init_from)
        if not path.exists():
            raise CheckpointError(f"{path}: init_from names no such file or directory")
        if path.is_dir() and not is_model_dir(path):
            try:  # another training run (stage 2 from stage 1): its latest params
                path = find_checkpoints_dir(path)
            except CheckpointError:
                raise CheckpointError(
                    f"{path}: init_from must be an official .pt file, a tam_jax model directory "
                    f"(with {META_FILE}) or a training run (a workdir or its checkpoints "
                    "directory, with a finished checkpoint); it is none of these") from None
        return StartPoint("init_from", path, 0)
    return StartPoint("scratch", None, 0)


def load_init_params(init_from: str | os.PathLike, model_cfg) -> dict:
    """Params (numpy pytree) for `model_cfg` from an official `.pt` (strictly converted), a
    model directory, or a training run (its latest checkpoint's params only: a new run with its
    own optimiser and schedule, e.g. stage 2 from stage 1), checked leaf by leaf against the
    model's shapes."""
    path = storage.as_path(init_from)
    if not path.exists():
        raise CheckpointError(f"{path}: init_from names no such file or directory")
    if path.is_dir() and is_model_dir(path):
        params, variant = load_model(path)
        source = f"{path} (variant {variant})"
    elif path.is_dir():
        params, step = read_train_params(path)
        source = f"{path} (training checkpoint, step {step})"
    elif storage.is_url(path):
        # torch.load reads a local file: copy the .pt out of the bucket first
        with tempfile.TemporaryDirectory(prefix="tam_jax_init_from_") as tmp:
            local = Path(tmp) / path.name
            local.write_bytes(path.read_bytes())
            return load_init_params(local, model_cfg)
    else:
        from tam_jax.convert.checkpoint import (
            ConversionError,
            load_torch_state_dict,
            official_to_params,
        )

        try:
            params = official_to_params(load_torch_state_dict(path), model_cfg, source=str(path))
        except ConversionError as e:
            raise CheckpointError(str(e)) from e
        source = str(path)
    check_param_shapes(params, model_cfg, source)
    return params


def check_param_shapes(params: Mapping[str, Any], model_cfg, source: str = "<params>") -> None:
    """Raise CheckpointError listing every missing, unexpected and misshaped parameter of
    `params` against `abstract_param_shapes(model_cfg)`."""
    from tam_jax.models.tam import abstract_param_shapes

    want = abstract_param_shapes(model_cfg)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    got = {tuple(str(getattr(k, "key", k)) for k in path): tuple(np.shape(v)) for path, v in flat}
    name = "/".join
    problems = []
    missing = [name(p) for p in want if p not in got]
    unexpected = [name(p) for p in got if p not in want]
    shapes = [f"{name(p)}: checkpoint {got[p]}, model {s}"
              for p, s in want.items() if p in got and got[p] != s]
    for title, items in (("missing", missing), ("unexpected", unexpected),
                         ("shape mismatch", shapes)):
        if items:
            shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
            problems.append(f"{title} ({len(items)}): " + "; ".join(shown))
    if problems:
        raise CheckpointError(f"{source}: params do not fit model {model_cfg.name!r} (another "
                              "variant?):\n  " + "\n  ".join(problems))
