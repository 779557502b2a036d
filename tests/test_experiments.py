"""Every config under experiments/ builds, cuts to a local CPU run, and takes every override
of its sweeps: each dotted key exists (or is a model-config field) and type-checks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import ml_collections
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import common  # noqa: E402
from input_pipeline import sampling  # noqa: E402
from scripts.train import apply_overrides, load_config  # noqa: E402
from tam_jax.training import losses, optimizer, prompts  # noqa: E402
from tam_jax.training.trainer import _dataclass_from, model_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1] / "experiments"
CONFIG_FILES = sorted(p for p in ROOT.rglob("*.py")
                      if p.name not in ("__init__.py", "common.py"))
# sections whose keys the trainer turns into dataclasses (unknown names fail there)
DATACLASS_SECTIONS = {"optimizer": optimizer.OptimizerConfig, "prompts": prompts.PromptConfig,
                      "losses": losses.LossConfig}


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(f"_exp_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _check(config) -> None:
    """What the trainer builds from a config: model, optimiser, prompts, losses, data."""
    model_config(config)
    for section, cls in DATACLASS_SECTIONS.items():
        _dataclass_from(cls, config.get(section))  # unknown fields / invalid values raise
    _dataclass_from(sampling.ClipConfig, config.data.get("clip"))
    assert config.eval.format in ("sav", "davis", "sa1b-images")


def _check_key_exists(config, key: str, value) -> None:
    """A non-model dotted key must name an existing value of a compatible type (a typo must
    not silently add a new key), except in the dataclass sections, checked by _check."""
    head, _, rest = key.partition(".")
    if head == "model" and rest.split(".")[0] not in common.MODEL_SECTION_KEYS:
        return  # a model-config field: configs.override checks name and type
    if head in DATACLASS_SECTIONS:
        return
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list | tuple) else node[part]
    last = parts[-1]
    assert last in node, f"sweep key {key!r} names no existing config value"
    current = node[last]
    if current is not None and value is not None:
        ok = isinstance(value, type(current)) or (isinstance(current, float)
                                                  and isinstance(value, int))
        assert ok, f"sweep key {key!r}: {type(value).__name__} for a {type(current).__name__}"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_its_local_cut_and_every_sweep_override(path):
    mod = _module(path)
    base = load_config(str(path))
    _check(base)
    local = common.local(base)
    _check(local)
    assert local.model.variant == "tiny" and local.sharding_preset == "dp"
    # the source variant's memory attention survives the cut
    from tam_jax import configs

    src = configs.get_config(base.model.variant).memory_attention.cross_attention
    assert model_config(local).memory_attention.cross_attention == src
    sweeps = [("sweep", mod.sweep())]
    if hasattr(mod, "local_sweep"):
        sweeps.append(("local_sweep", mod.local_sweep()))
    for kind, entries in sweeps:
        assert entries, f"{path.name}: {kind}() is empty"
        for overrides in entries:
            target = load_config(str(path))
            if kind == "local_sweep":
                target = common.local(target)
            for key, value in overrides.items():
                _check_key_exists(target, key, value)
            _check(common.apply(target, overrides))


def test_memory_pooling_grid_has_every_axis_without_duplicates():
    mod = _module(ROOT / "ablations" / "memory_pooling.py")
    entries = mod.sweep()
    ca = "model.memory_attention.cross_attention."
    keyset = {tuple(sorted(e.items())) for e in entries}
    assert len(keyset) == len(entries) == 13 * 2 * 2 * 2
    assert {e[ca + "pool_window"] for e in entries} == {1, 2, 4}
    assert {e[ca + "log_area_constant"] for e in entries} == {"logits", "keys", "none"}
    assert {e[ca + "pool_pointer_tokens"] for e in entries} == {False, True}
    assert {e["model.num_maskmem"] for e in entries} == {3, 7}
    assert {e["model.image_size"] for e in entries} == {512, 1024}
    assert {e["train.seed"] for e in entries} == {0, 1}
    # window 1 pools nothing: exactly one (constant, pointer) setting of it
    assert {(e[ca + "log_area_constant"], e[ca + "pool_pointer_tokens"])
            for e in entries if e[ca + "pool_window"] == 1} == {("logits", False)}
    resolved = model_config(common.apply(mod.get_config("ti"), entries[-1]))
    assert resolved.image_size == entries[-1]["model.image_size"]
    with pytest.raises(ValueError, match="'s' or 'ti'"):
        mod.get_config("b")


def test_set_value_routes_model_fields_to_overrides_and_rejects_missing_sections():
    c = common.base("efficienttam_s")
    c.optimizer = {"lr": 1e-3}
    common.set_value(c, "model.num_maskmem", 3)
    common.set_value(c, "model.memory_attention.cross_attention.pool_window", 2)
    common.set_value(c, "model.num_maskmem", 5)  # replaces, keeps the order of the others
    common.set_value(c, "model.remat", "full")  # a key of the model section itself
    common.set_value(c, "optimizer.lr", 2e-3)
    assert list(c.model.overrides) == [("memory_attention.cross_attention.pool_window", 2),
                                       ("num_maskmem", 5)]
    assert c.model.remat == "full" and c.optimizer.lr == 2e-3
    cfg = model_config(c)
    assert cfg.num_maskmem == 5 and cfg.vit.remat == "full"
    c.data = common.data([{"name": "sav", "data_dir": "/a", "batch_size": 1, "weight": 1.0}])
    common.set_value(c, "data.sources.0.data_dir", "/b")
    assert c.data.sources[0]["data_dir"] == "/b"
    with pytest.raises(KeyError, match="no section 'nope'"):
        common.set_value(c, "nope.x", 1)
    with pytest.raises(KeyError, match="no field"):
        model_config(common.apply(c, {"model.num_maskmemory": 3}))
    # train.py --set goes through the same route
    c2 = apply_overrides(ml_collections.ConfigDict(c.to_dict()),
                         ["model.image_size=512", "train.num_steps=7"])
    assert ("image_size", 512) in [tuple(p) for p in c2.model.overrides]
    assert c2.train.num_steps == 7
    with pytest.raises(SystemExit, match="no section"):
        apply_overrides(c2, ["nope.x=1"])


@pytest.mark.parametrize("stage", ["stage1_sa1b", "stage2_video", "finetune_davis"])
def test_every_released_variant_has_each_stage(stage):
    """The recipe configs take any of the 8 released variants (full name or short form)."""
    from tam_jax.configs import RELEASED_VARIANTS

    mod = _module(ROOT / f"{stage}.py")
    for name in RELEASED_VARIANTS:
        c = mod.get_config(name)
        assert model_config(c).name == name
        _check(c)
    for short, name in common.VARIANTS.items():
        assert mod.get_config(short).model.variant == name
    assert set(common.VARIANTS.values()) == set(RELEASED_VARIANTS)
