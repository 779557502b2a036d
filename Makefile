# The two commands of the README: `make demo` and `make test`. Each creates or reuses .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Re-install whenever setup.cfg changes (the stamp carries its hash).
STAMP := $(VENV)/.installed-$(shell sha1sum setup.cfg pyproject.toml | sha1sum | cut -c1-12)
PIP := $(PY) -m pip install -q --disable-pip-version-check
# pytest worker processes (pytest-xdist; whole files per worker). 2 fits 2 cores / 24 GiB.
TEST_WORKERS ?= 2

.PHONY: venv libtpu test demo sweep-demo lint benchmark clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[setup] installing tam_jax and its test dependencies into $(VENV) ..."
	@# torch first, and only as 2.13.0 (the CPU build); any other version pulls CUDA wheels.
	$(PIP) "torch==2.13.0"
	$(PIP) -e ".[test,torch,data]"
	@# The official EfficientTAM (import name sam2), the parity oracle. --no-deps: its metadata
	@# asks for torchvision, which cannot be installed beside the CPU torch.
	$(PIP) --no-deps "efficient-track-anything==1.0"
	@rm -f $(VENV)/.installed-*
	@touch $@

# libtpu (the TPU compiler, ~700 MB) in its own folder, not in site-packages: with libtpu
# importable, jax would look for a TPU on every start. tam_jax.aot finds it here and compiles
# for real TPU topologies ahead of time (scripts/tpu_plan.py, the AOT tests). The version is the
# one the installed jax pins for its [tpu] extra.
LIBTPU_DIR := $(VENV)/libtpu_site
LIBTPU_STAMP := $(LIBTPU_DIR)/.installed-$(shell sha1sum setup.cfg pyproject.toml | sha1sum | cut -c1-12)

libtpu: $(LIBTPU_STAMP)

$(LIBTPU_STAMP): $(STAMP)
	@spec=$$($(PY) -c "import importlib.metadata as m; print(next(r.split(';')[0].strip() \
		for r in m.requires('jax') if r.startswith('libtpu')))") && \
	echo "[setup] installing $$spec into $(LIBTPU_DIR) (ahead-of-time TPU compiles) ..." && \
	rm -rf $(LIBTPU_DIR) && $(PIP) --no-deps --target $(LIBTPU_DIR) "$$spec"
	@touch $@

test: venv libtpu
	$(PY) -m ruff check tam_jax input_pipeline scripts tests experiments
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=30 tests

demo: venv
	$(PY) scripts/demo.py

# The memory-pooling ablation in miniature: 6 runs of the tiny model on synthetic videos, then
# the results table and the J&F-vs-FLOPs / latency plots under artifacts/pooling_demo.
sweep-demo: venv
	$(PY) scripts/sweep.py run --config experiments/ablations/memory_pooling.py --local \
		--root artifacts/pooling_demo --parallel 2

# Lint only: the code is laid out by hand (compact literals, aligned tables), which `ruff
# format` would rewrite in most files, so no formatter is enforced.
lint: venv
	$(PY) -m ruff check tam_jax input_pipeline scripts tests experiments

benchmark: venv
	$(PY) scripts/benchmark.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
