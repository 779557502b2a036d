#!/usr/bin/env python
"""Train EfficientTAM: a config from experiments/ and a workdir (checkpoints, TensorBoard).

    python scripts/train.py --config experiments/stage2_video.py:s_1 --workdir /runs/s1 \
        [--set train.num_steps=1000 --set data.sources.0.data_dir=/data/tfds] \
        [--fake_devices 8]

--config FILE[:ARG] calls FILE's get_config(ARG). --set KEY=VALUE overrides a dotted key of the
config (VALUE is parsed as a Python literal when it is one, else taken as a string); repeat it.
A model field goes through model.<field path>, e.g. --set model.num_maskmem=3 or
--set model.memory_attention.cross_attention.pool_window=4 (added to model.overrides).
Rerunning the same command resumes from the workdir's latest checkpoint (also after a SIGTERM,
which saves and exits). Resume order: the workdir's checkpoint > config.resume (another run) >
config.init_from (params only: an official .pt, a tam_jax model dir, or another run: a workdir
or its checkpoints dir, e.g. stage 2 from stage 1) > from scratch.
--fake_devices N splits this CPU into N devices (to try sharding presets without a TPU).
--compile_cache keeps the compiled train steps (XLA's persistent compilation cache) in
<workdir>/compile_cache by default, or in $JAX_COMPILATION_CACHE_DIR when that is set, so a
restarted run loads them instead of compiling again (minutes per step program on a TPU pod);
on a pod give every host the same gs:// folder; `--compile_cache none` turns it off.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load_config(spec: str):
    """FILE[:ARG] -> FILE.get_config(ARG) (a ConfigDict)."""
    path, _, arg = spec.partition(":")
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"--config: no such file {file}")
    mod_spec = importlib.util.spec_from_file_location(f"_config_{file.stem}", file)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise SystemExit(f"--config: {file} defines no get_config(arg)")
    return module.get_config(arg) if arg else module.get_config()


def apply_overrides(config, pairs: list[str]):
    """Apply KEY=VALUE dotted overrides (`experiments.common.set_value`: list indices as in
    data.sources.0.data_dir; model.<model field path> goes to model.overrides)."""
    from experiments.common import set_value

    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        try:
            set_value(config, key, value)
        except KeyError as e:
            raise SystemExit(f"--set {pair!r}: {e.args[0]}") from None
    return config


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--config", required=True, help="experiments/FILE.py[:ARG]")
    p.add_argument("--workdir", required=True, help="checkpoints, TensorBoard events, logs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (dotted key); repeatable")
    p.add_argument("--fake_devices", type=int, default=0,
                   help="split the CPU into N devices (sharding tests without a TPU)")
    p.add_argument("--coordinator_address", default=None,
                   help="multi-process run outside a TPU pod (e.g. 127.0.0.1:12345): with "
                        "--num_processes and --process_id, calls jax.distributed.initialize "
                        "with them (on a TPU pod use --set multihost=True: the runtime knows)")
    p.add_argument("--num_processes", type=int, default=None)
    p.add_argument("--process_id", type=int, default=None)
    p.add_argument("--compile_cache", default="auto", metavar="DIR|auto|none",
                   help="persistent compilation cache (default auto: $JAX_COMPILATION_CACHE_DIR "
                        "if set, else WORKDIR/compile_cache)")
    args = p.parse_args(argv)
    if (args.coordinator_address is None) != (args.num_processes is None) or (
            (args.num_processes is None) != (args.process_id is None)):
        p.error("--coordinator_address, --num_processes and --process_id go together")
    if args.fake_devices:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.fake_devices}")
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from tam_jax.training import compile_cache

    cache = compile_cache.resolve(args.compile_cache, args.workdir)
    compile_cache.enable(cache)  # before anything compiles: jax opens the cache once
    config = apply_overrides(load_config(args.config), args.set)
    if args.coordinator_address is not None:
        config.multihost = True
        config.distributed = {"coordinator_address": args.coordinator_address,
                              "num_processes": args.num_processes,
                              "process_id": args.process_id}

    from tam_jax.training.trainer import train

    print(config)
    print(f"compilation cache: {cache or 'off'}")
    metrics = train(config, args.workdir)
    if metrics:
        print("last logged: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
