"""Converter: the key table, strict official <-> Flax conversion, the `.pt` export, the CLI."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from tam_jax import checkpointing
from tam_jax.configs import get_config
from tam_jax.convert.checkpoint import (
    ConversionError,
    load_official_checkpoint,
    official_to_params,
    params_to_official,
    save_official_checkpoint,
    unwrap_state_dict,
)
from tam_jax.convert.key_table import key_specs, torch_shape
from tam_jax.convert.official import build_official_model, randomize_
from tam_jax.models.tam import abstract_param_shapes

REPO = pathlib.Path(__file__).resolve().parents[1]
# Copies of the official state-dict listings (shared/docs): the converter's contract.
SPEC_DOCS = REPO / "tests" / "data"


def _spec_keys(width: str) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) rows of the official state-dict listing in shared/docs."""
    rows = []
    for line in (SPEC_DOCS / f"efficienttam_{width}_state_dict.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, _ = line.split("\t")
        rows.append((key, tuple(int(x) for x in shape.strip("()").split(",") if x.strip())))
    return rows


@pytest.fixture(scope="module", params=["ti", "s"])
def official(request):
    cfg = get_config(f"efficienttam_{request.param}")
    model = build_official_model(cfg, seed=1)
    randomize_(model, seed=1)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return cfg, model, sd


@pytest.mark.parametrize("width", ["ti", "s"])
def test_table_and_model_shapes_match_the_official_listing(width):
    if not SPEC_DOCS.is_dir():
        pytest.fail(f"{SPEC_DOCS} is missing: the official key listing is the contract")
    cfg = get_config(f"efficienttam_{width}")
    rows = _spec_keys(width)
    specs = key_specs(cfg)
    assert [s.torch_key for s in specs] == [k for k, _ in rows]
    shapes = abstract_param_shapes(cfg)
    assert set(shapes) == {s.flax_path for s in specs}, "model params != table paths"
    for s, (key, shape) in zip(specs, rows):
        assert torch_shape(shapes[s.flax_path], s.transform) == shape, key


def test_roundtrip_is_bit_exact(official):
    cfg, _, sd = official
    params = official_to_params(sd, cfg)
    back = params_to_official(params, cfg)
    assert list(back) == list(sd)
    assert len(back) == 455
    for k, v in sd.items():
        np.testing.assert_array_equal(back[k], v.numpy(), err_msg=k)


def test_exported_pt_loads_strictly_and_computes_the_same(official, tmp_path):
    cfg, model, sd = official
    params = official_to_params(sd, cfg)
    path = save_official_checkpoint(params, cfg, tmp_path / "export.pt")
    reloaded = build_official_model(cfg, seed=99)
    result = reloaded.load_state_dict(torch.load(path, weights_only=True)["model"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = model.image_encoder.trunk(x)[-1]
        b = reloaded.image_encoder.trunk(x)[-1]
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_accepts_wrapped_bare_and_dataparallel_state_dicts(official):
    cfg, _, sd = official
    for obj in ({"model": sd}, sd, {f"module.{k}": v for k, v in sd.items()}):
        got = unwrap_state_dict(obj)
        assert list(got) == list(sd)


def test_truncated_file_is_a_clear_error(official, tmp_path):
    cfg, _, sd = official
    good = tmp_path / "good.pt"
    torch.save({"model": sd}, good)
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(ConversionError, match="truncated.pt.*(truncated|corrupt)"):
        load_official_checkpoint(bad)


def test_wrong_variant_is_a_clear_error(official, tmp_path):
    cfg, _, sd = official
    path = tmp_path / "w.pt"
    torch.save({"model": sd}, path)
    other = "efficienttam_s_512x512" if cfg.vit.embed_dim == 192 else "efficienttam_ti_1"
    with pytest.raises(ConversionError, match=f"variant '{other}'"):
        load_official_checkpoint(path, other)
    # The right width with another resolution / attention kind is accepted.
    same = cfg.name + "_512x512"
    _, got_cfg = load_official_checkpoint(path, same)
    assert got_cfg.name == same


def test_missing_renamed_and_misshaped_keys_are_all_listed(official):
    cfg, _, sd = official
    broken = dict(sd)
    del broken["memory_attention.layers.2.norm1.bias"]
    broken["sam_mask_decoder.iou_tokens.weight"] = broken.pop("sam_mask_decoder.iou_token.weight")
    broken["no_obj_ptr"] = torch.zeros(1, 255)
    with pytest.raises(ConversionError) as err:
        official_to_params(broken, cfg)
    msg = str(err.value)
    assert "missing keys (2)" in msg
    assert "memory_attention.layers.2.norm1.bias" in msg
    assert "sam_mask_decoder.iou_token.weight" in msg
    assert "unexpected keys (1): sam_mask_decoder.iou_tokens.weight" in msg
    assert "shape mismatch no_obj_ptr: checkpoint (1, 255), model (1, 256)" in msg


def test_cli_to_jax_and_back(official, tmp_path):
    cfg, _, sd = official
    src = tmp_path / "official.pt"
    torch.save({"model": sd}, src)
    model_dir = tmp_path / "model"
    run = lambda *a: subprocess.run([sys.executable, str(REPO / "scripts" / "convert.py"), *a],
                                    capture_output=True, text=True)
    r = run("to-jax", str(src), str(model_dir))
    assert r.returncode == 0, r.stderr
    params, variant = checkpointing.load_model(model_dir)
    assert variant == cfg.name
    assert not list(tmp_path.glob("*.partial-*")), "temporary directory left behind"
    r = run("to-jax", str(src), str(model_dir))
    assert r.returncode == 2 and "already exists" in r.stderr
    out = tmp_path / "back.pt"
    r = run("to-torch", str(model_dir), str(out))
    assert r.returncode == 0, r.stderr
    back = torch.load(out, weights_only=True)["model"]
    assert list(back) == list(sd)
    for k in sd:
        torch.testing.assert_close(back[k], sd[k], rtol=0, atol=0, msg=k)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = run("to-jax", str(bad), str(tmp_path / "m2"))
    assert r.returncode == 2 and "bad.pt" in r.stderr
    assert not (tmp_path / "m2").exists()
