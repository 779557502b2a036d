"""scripts/tpu/launch.py: the gcloud commands it builds (printed under --dry_run, never run)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.tpu import launch  # noqa: E402


def _printed(capsys, argv) -> list[list[str]]:
    assert launch.main([*argv, "--dry_run"]) == 0
    out = capsys.readouterr().out
    return [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("$ ")]


def test_accelerator_types_count_chips_or_cores():
    assert launch.accelerator_type("v5e:16x16") == ("v5litepod-256", "v2-alpha-tpuv5-lite")
    assert launch.accelerator_type("v6e:8x8")[0] == "v6e-64"
    assert launch.accelerator_type("v5p:4x4x4")[0] == "v5p-128"  # 64 chips, 2 cores each
    with pytest.raises(SystemExit, match="expected GEN"):
        launch.accelerator_type("v7x:2x2")


def test_create_vm_and_queued_multislice(capsys):
    (cmd,) = _printed(capsys, ["create", "--name", "tam", "--zone", "us-west4-a",
                               "--topology", "v5e:16x16", "--spot", "--project", "p1"])
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "tam"]
    assert {"--zone=us-west4-a", "--project=p1", "--accelerator-type=v5litepod-256",
            "--version=v2-alpha-tpuv5-lite", "--spot"} <= set(cmd)
    (cmd,) = _printed(capsys, ["create", "--name", "tam", "--zone", "z", "--topology",
                               "v6e:8x8", "--queued", "--slices", "2"])
    assert cmd[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "tam"]
    assert {"--accelerator-type=v6e-64", "--runtime-version=v2-alpha-tpuv6e",
            "--node-count=2", "--node-prefix=tam"} <= set(cmd)
    with pytest.raises(SystemExit, match="needs --queued"):
        launch.main(["create", "--name", "t", "--zone", "z", "--topology", "v5e:2x2",
                     "--slices", "2", "--dry_run"])


def test_install_copies_to_every_worker_and_mounts(capsys):
    scp, ssh = _printed(capsys, ["install", "--name", "tam", "--zone", "z",
                                 "--mount", "my-bucket:/mnt/data"])
    assert scp[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse"]
    assert "--worker=all" in scp and "tam:~/tam_jax" in scp
    assert "--worker=all" in ssh
    remote = next(a for a in ssh if a.startswith("--command="))
    assert "pip install -e '.[data,libtpu,gcs]'" in remote
    assert "gcsfuse --implicit-dirs my-bucket /mnt/data" in remote
    with pytest.raises(SystemExit, match="BUCKET:/mnt/DIR"):
        launch.main(["install", "--name", "t", "--zone", "z", "--mount", "nobucket",
                     "--dry_run"])


def test_train_runs_the_same_command_on_every_worker(capsys):
    (ssh,) = _printed(capsys, ["train", "--name", "tam", "--zone", "z", "--config",
                               "experiments/stage2_video.py:s", "--workdir", "/mnt/ckpt/run 1",
                               "--set", "data.sources.0.data_dir=/mnt/data/tfds"])
    assert "--worker=all" in ssh
    remote = next(a for a in ssh if a.startswith("--command="))[len("--command="):]
    # the remote shell line parses back to the trainer's command, multihost on, in background
    assert remote.startswith("cd ~/tam_jax && nohup ") and remote.endswith(" 2>&1 < /dev/null &")
    line = remote[len("cd ~/tam_jax && nohup "):remote.index(" > ")]
    assert shlex.split(line) == [
        "python3", "scripts/train.py", "--config", "experiments/stage2_video.py:s",
        "--workdir", "/mnt/ckpt/run 1", "--set", "multihost=True",
        "--set", "data.sources.0.data_dir=/mnt/data/tfds"]


def test_watch_stop_delete(capsys):
    (watch,) = _printed(capsys, ["watch", "--name", "tam", "--zone", "z"])
    assert "--worker=0" in watch and any("tail -n 200 -f" in a for a in watch)
    (stop,) = _printed(capsys, ["stop", "--name", "tam", "--zone", "z"])
    assert any("pkill -TERM -f scripts/train.py" in a for a in stop)
    (delete,) = _printed(capsys, ["delete", "--name", "tam", "--zone", "z", "--queued"])
    assert delete[3:6] == ["queued-resources", "delete", "tam"]


def test_without_gcloud_it_says_so(capsys, monkeypatch):
    monkeypatch.setattr(launch.shutil, "which", lambda _: None)
    assert launch.main(["watch", "--name", "tam", "--zone", "z"]) == 2
    assert "gcloud is not on PATH" in capsys.readouterr().err
