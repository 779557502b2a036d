"""Configs: the released variants, overrides, validation."""

import dataclasses

import pytest

from tam_jax.configs import RELEASED_VARIANTS, TEST_VARIANTS, get_config, override


def test_eight_released_variants_with_official_settings():
    assert len(RELEASED_VARIANTS) == 8
    for name in RELEASED_VARIANTS:
        cfg = get_config(name)
        assert cfg.name == name
        assert cfg.vit.embed_dim == (192 if "_ti" in name else 384)
        assert cfg.image_size == (512 if name.endswith("512x512") else 1024)
        ca = cfg.memory_attention.cross_attention
        expected = {"_1": "EfficientRoPEAttention1", "_2": "EfficientRoPEAttention2"}
        assert ca.official_class == expected.get(name[-2:], "RoPEAttention")
        assert cfg.vit.window_block_indexes == (0, 1, 3, 4, 6, 7, 9, 10)
    for name in TEST_VARIANTS:
        get_config(name)


def test_dotted_overrides_and_their_errors():
    cfg = get_config("efficienttam_s", **{"memory_attention.cross_attention.pool_window": 4,
                                          "memory_attention.cross_attention.log_area_constant":
                                              "none", "num_maskmem": 3})
    assert cfg.memory_attention.cross_attention.pool_window == 4
    assert cfg.num_maskmem == 3
    with pytest.raises(KeyError, match="no field 'pool'"):
        override(cfg, {"memory_attention.pool": 2})
    with pytest.raises(TypeError, match="expected int"):
        override(cfg, {"num_maskmem": "7"})
    with pytest.raises(TypeError, match="leaf field"):
        override(cfg, {"vit": 3})
    with pytest.raises(ValueError, match="does not divide"):
        get_config("efficienttam_s_512x512", **{"memory_attention.cross_attention.pool_window": 3})
    with pytest.raises(KeyError, match="unknown EfficientTAM variant"):
        get_config("efficienttam_b")


def test_configs_are_hashable_and_frozen():
    cfg = get_config("efficienttam_ti")
    assert hash(cfg) == hash(get_config("efficienttam_ti"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.image_size = 3
