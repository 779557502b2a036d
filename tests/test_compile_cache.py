"""The training run's persistent compilation cache (`tam_jax.training.compile_cache`, the
trainer script's --compile_cache): which folder a run uses, that a fresh process really writes
its compiled programs there and loads them in the next process, and that "none" turns it off
even where $JAX_COMPILATION_CACHE_DIR is set. (The trainer's own use of it is exercised by
tests/test_train_processes.py, whose runs share a cache through that variable.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tam_jax.training import compile_cache

ROOT = Path(__file__).resolve().parents[1]


def test_resolve_auto_none_and_explicit(tmp_path, monkeypatch):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    assert compile_cache.resolve("auto", tmp_path / "run") == str(tmp_path / "run" /
                                                                  "compile_cache")
    assert compile_cache.resolve(None, "w") == str(Path("w") / "compile_cache")
    assert compile_cache.resolve("none", "w") is None
    assert compile_cache.resolve("None", "w") is None
    assert compile_cache.resolve("gs://bucket/cache", "w") == "gs://bucket/cache"
    got = compile_cache.resolve("auto", "gs://bucket/runs/s1/")
    assert got == "gs://bucket/runs/s1/compile_cache"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/shared/cache")
    assert compile_cache.resolve("auto", "w") == "/shared/cache"  # the variable wins over auto
    assert compile_cache.resolve("/mine", "w") == "/mine"  # an explicit folder wins over both
    assert compile_cache.resolve("none", "w") is None


# A fresh process: enable the cache (or not), compile one program, report whether jax loaded
# it from the cache (its monitoring event) and what the folder holds.
_PROGRAM = """
import sys
import jax, jax.monitoring, jax.numpy as jnp
from tam_jax.training import compile_cache

hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None)
compile_cache.enable(compile_cache.resolve(sys.argv[1], sys.argv[2]))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
print(float(f(jnp.ones((8, 8)))), "hits", len(hits))
"""


def _run(flag, workdir, env_cache=None):
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    if env_cache:
        env["JAX_COMPILATION_CACHE_DIR"] = str(env_cache)
    out = subprocess.run([sys.executable, "-c", _PROGRAM, flag, str(workdir)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    value, _, hits = out.stdout.split()[-3:]
    return float(value), int(hits)


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    work = tmp_path / "run"
    first = _run("auto", work)
    folder = work / "compile_cache"
    entries = sorted(p.name for p in folder.iterdir())
    assert any(e.startswith("jit_") for e in entries), entries
    second = _run("auto", work)
    assert first[1] == 0 and second[1] >= 1, (first, second)  # compiled, then loaded
    assert second[0] == first[0]
    assert sorted(p.name for p in folder.iterdir()) == entries  # nothing new written


def test_none_turns_the_cache_off_even_with_the_variable_set(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    _run("none", tmp_path / "run", env_cache=shared)
    assert list(shared.iterdir()) == []
    assert not (tmp_path / "run" / "compile_cache").exists()
    _run("auto", tmp_path / "run", env_cache=shared)  # auto: the variable's folder
    assert list(shared.iterdir()) and not (tmp_path / "run" / "compile_cache").exists()


def test_train_script_documents_the_flag(capsys):
    sys.path.insert(0, str(ROOT))
    from scripts import train

    with pytest.raises(SystemExit):
        train.main(["--help"])
    out = capsys.readouterr().out
    assert "--compile_cache" in out and "WORKDIR/compile_cache" in out
