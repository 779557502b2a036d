#!/usr/bin/env python
"""Run tam_jax training on a Cloud TPU VM or pod slice: the `gcloud` commands, built for you.

    python scripts/tpu/launch.py create  --name tam --zone us-west4-a --topology v5e:16x16 \\
        [--queued] [--spot] [--slices 2] [--project P] [--dry_run]
    python scripts/tpu/launch.py install --name tam --zone us-west4-a [--source .]
    python scripts/tpu/launch.py train   --name tam --zone us-west4-a \\
        --config experiments/stage2_video.py:s --workdir /mnt/ckpt/stage2_s \\
        [--set data.sources.0.data_dir=/mnt/data/tfds ...]
    python scripts/tpu/launch.py watch   --name tam --zone us-west4-a
    python scripts/tpu/launch.py stop    --name tam --zone us-west4-a   # SIGTERM: final checkpoint
    python scripts/tpu/launch.py delete  --name tam --zone us-west4-a

Subcommands (each prints the commands it runs; --dry_run prints them and runs nothing):
  create   a TPU VM / pod slice (`gcloud compute tpus tpu-vm create`) or, with --queued (the
           way to get large or spot capacity), a queued resource (`queued-resources create`;
           --slices N asks for N slices joined over DCN: multi-slice).
  install  copies the source tree to every worker (`tpu-vm scp --worker=all`) and installs it
           with the TPU runtime and GCS access (`pip install -e '.[data,libtpu,gcs]'`: jax[tpu]
           pins the libtpu that matches the installed jax; gcs lets workdirs be gs:// URLs).
  train    starts the same training command on every worker (`tpu-vm ssh --worker=all`), with
           `--set multihost=True`: `jax.distributed.initialize()` finds its peers from the TPU
           runtime. Output goes to ~/tam_jax_train.log on each worker, in the background, so the
           ssh returns. A rerun resumes: the trainer restores the workdir's latest checkpoint
           (after a preemption: create + install + train again, same workdir).
  watch    follows worker 0's log (`tail -f`).
  stop     sends SIGTERM to the trainers: each writes a final checkpoint and exits.
  delete   deletes the VM / queued resource.

Storage: the workdir and data_dir must be paths every worker sees: gs:// URLs (the workdir,
resume, init_from and TFDS data_dir accept them, docs/tpu.md) or a gcsfuse mount of the bucket
on every worker (`--mount BUCKET:/mnt/DIR` on install mounts it).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys

# topology generation -> (accelerator-type prefix, how its size counts, default runtime)
# v5e / v6e accelerator types count chips (v5litepod-256, v6e-64); v4 / v5p count TensorCores,
# two per chip (v5p-128 = 64 chips = 4x4x4).
GENERATIONS = {
    "v5e": ("v5litepod", 1, "v2-alpha-tpuv5-lite"),
    "v6e": ("v6e", 1, "v2-alpha-tpuv6e"),
    "v5p": ("v5p", 2, "v2-alpha-tpuv5"),
    "v4": ("v4", 2, "tpu-ubuntu2204-base"),
}
LOG = "~/tam_jax_train.log"
REMOTE_DIR = "~/tam_jax"


def accelerator_type(topology: str) -> tuple[str, str]:
    """("v5litepod-256", "v2-alpha-tpuv5-lite") for "v5e:16x16"."""
    gen, sep, dims = topology.partition(":")
    if gen not in GENERATIONS or not sep:
        raise SystemExit(f"--topology {topology!r}: expected GEN:AxB[xC] with GEN in "
                         f"{', '.join(GENERATIONS)}")
    try:
        chips = 1
        for d in dims.split("x"):
            chips *= int(d)
    except ValueError:
        raise SystemExit(f"--topology {topology!r}: bad dimensions {dims!r}") from None
    prefix, per_chip, runtime = GENERATIONS[gen]
    return f"{prefix}-{chips * per_chip}", runtime


def _common(args) -> list[str]:
    out = [f"--zone={args.zone}"]
    if args.project:
        out.append(f"--project={args.project}")
    return out


def _ssh(args, command: str, worker: str = "all") -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, *_common(args),
            f"--worker={worker}", f"--command={command}"]


def create_commands(args) -> list[list[str]]:
    accel, runtime = accelerator_type(args.topology)
    runtime = args.runtime or runtime
    if args.queued:
        cmd = ["gcloud", "compute", "tpus", "queued-resources", "create", args.name,
               *_common(args), f"--accelerator-type={accel}", f"--runtime-version={runtime}"]
        if args.slices > 1:
            cmd += [f"--node-count={args.slices}", f"--node-prefix={args.name}"]
        else:
            cmd += [f"--node-id={args.name}"]
        if args.spot:
            cmd.append("--spot")
        return [cmd]
    if args.slices > 1:
        raise SystemExit("create: --slices > 1 needs --queued (multi-slice comes from queued "
                         "resources)")
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", "create", args.name, *_common(args),
           f"--accelerator-type={accel}", f"--version={runtime}"]
    if args.spot:
        cmd.append("--spot")
    return [cmd]


def install_commands(args) -> list[list[str]]:
    cmds = [["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", args.source,
             f"{args.name}:{REMOTE_DIR}", *_common(args), "--worker=all"]]
    steps = [f"cd {REMOTE_DIR}", "python3 -m pip install -U pip",
             "python3 -m pip install -e '.[data,libtpu,gcs]'"]
    for mount in args.mount:
        bucket, _, where = mount.partition(":")
        if not bucket or not where:
            raise SystemExit(f"--mount {mount!r}: expected BUCKET:/mnt/DIR")
        steps.append(f"sudo mkdir -p {shlex.quote(where)} && sudo chown $USER "
                     f"{shlex.quote(where)} && gcsfuse --implicit-dirs {shlex.quote(bucket)} "
                     f"{shlex.quote(where)}")
    cmds.append(_ssh(args, " && ".join(steps)))
    return cmds


def train_commands(args) -> list[list[str]]:
    parts = ["python3", "scripts/train.py", "--config", args.config, "--workdir", args.workdir,
             "--set", "multihost=True"]
    for pair in args.set:
        parts += ["--set", pair]
    line = " ".join(shlex.quote(p) for p in parts)
    remote = f"cd {REMOTE_DIR} && nohup {line} > {LOG} 2>&1 < /dev/null &"
    return [_ssh(args, remote)]


def watch_commands(args) -> list[list[str]]:
    return [_ssh(args, f"tail -n 200 -f {LOG}", worker="0")]


def stop_commands(args) -> list[list[str]]:
    # SIGTERM: checkpointing.PreemptionGuard saves a final checkpoint, then the trainer exits
    return [_ssh(args, "pkill -TERM -f scripts/train.py || true")]


def delete_commands(args) -> list[list[str]]:
    if args.queued:
        return [["gcloud", "compute", "tpus", "queued-resources", "delete", args.name,
                 *_common(args), "--force", "--quiet"]]
    return [["gcloud", "compute", "tpus", "tpu-vm", "delete", args.name, *_common(args),
             "--quiet"]]


BUILDERS = {"create": create_commands, "install": install_commands, "train": train_commands,
            "watch": watch_commands, "stop": stop_commands, "delete": delete_commands}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in BUILDERS:
        s = sub.add_parser(name, help=f"{name} (see the top of this help)")
        s.add_argument("--name", required=True, help="TPU VM / queued resource name")
        s.add_argument("--zone", required=True, help="e.g. us-west4-a (where the TPU type is)")
        s.add_argument("--project", default=None, help="GCP project (default: gcloud's)")
        s.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
        if name in ("create", "delete"):
            s.add_argument("--queued", action="store_true", help="a queued resource")
        if name == "create":
            s.add_argument("--topology", required=True,
                           help="v5e:16x16, v6e:8x8, v5p:4x4x4 ... (as scripts/tpu_plan.py)")
            s.add_argument("--slices", type=int, default=1, help="multi-slice (with --queued)")
            s.add_argument("--spot", action="store_true", help="spot / preemptible capacity")
            s.add_argument("--runtime", default=None, help="TPU software version override")
        if name == "install":
            s.add_argument("--source", default=".", help="the tam_jax tree to copy")
            s.add_argument("--mount", action="append", default=[], metavar="BUCKET:/mnt/DIR",
                           help="gcsfuse-mount a bucket on every worker; repeatable")
        if name == "train":
            s.add_argument("--config", required=True, help="experiments/FILE.py[:ARG]")
            s.add_argument("--workdir", required=True,
                           help="a path every worker sees (gcsfuse mount or gs://, docs/tpu.md)")
            s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                           help="config overrides, as scripts/train.py --set; repeatable")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    commands = BUILDERS[args.command](args)
    for cmd in commands:
        print("$ " + shlex.join(cmd), flush=True)
    if args.dry_run:
        return 0
    if shutil.which("gcloud") is None:
        print("launch: gcloud is not on PATH (install the Google Cloud CLI, or use --dry_run "
              "to print the commands)", file=sys.stderr)
        return 2
    for cmd in commands:
        rc = subprocess.call(cmd)
        if rc:
            print(f"launch: command failed with exit code {rc}: {shlex.join(cmd)}",
                  file=sys.stderr)
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
