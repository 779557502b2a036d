"""Position encodings against the official `position_encoding.py` functions."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tam_jax.convert.official import _import_sam2
from tam_jax.models.position import (
    PositionEmbeddingRandom,
    apply_rope,
    axial_rope,
    sine_position_encoding,
)

_import_sam2()
from sam2.modeling import position_encoding as official  # noqa: E402


@pytest.mark.parametrize("num_pos_feats,h,w", [(256, 64, 64), (256, 32, 32), (64, 16, 24)])
def test_sine_pe_matches_official(num_pos_feats, h, w):
    want = official.PositionEmbeddingSine(num_pos_feats)(torch.zeros(1, num_pos_feats, h, w))
    got = np.asarray(sine_position_encoding(h, w, num_pos_feats))
    d = np.abs(got - want[0].permute(1, 2, 0).numpy()).max()
    assert got.shape == (h, w, num_pos_feats)
    assert d < 1e-5, d


def test_random_fourier_pe_matches_official():
    torch.manual_seed(0)
    ref = official.PositionEmbeddingRandom(128)
    ours = PositionEmbeddingRandom(128)
    params = {"params": {"positional_encoding_gaussian_matrix":
                         ref.positional_encoding_gaussian_matrix.numpy()}}
    dense = np.asarray(ours.apply(params, 16, 12))
    assert np.abs(dense - ref((16, 12)).permute(1, 2, 0).numpy()).max() < 1e-5
    coords = torch.rand(2, 5, 2) * 512
    want = ref.forward_with_coords(coords, (512, 512)).numpy()
    got = ours.apply(params, jnp.asarray(coords.numpy() / 512), method=ours.encode_coords)
    assert np.abs(np.asarray(got) - want).max() < 1e-5


@pytest.mark.parametrize("side,repeat", [(16, 1), (16, 3), (8, 7)])
def test_rope_matches_official_interleaved_and_tiled(side, repeat):
    dim = 256
    cis = official.compute_axial_cis(dim, side, side)
    q = torch.randn(2, 1, side * side, dim)
    k = torch.randn(2, 1, side * side * repeat, dim)
    want_q, want_k = official.apply_rotary_enc(q, k, cis, repeat_freqs_k=True)
    cos, sin = axial_rope(side, side, dim)
    got_q = apply_rope(jnp.asarray(q.numpy()), cos, sin)
    tile = lambda t: jnp.tile(t, (repeat, 1))
    got_k = apply_rope(jnp.asarray(k.numpy()), tile(cos), tile(sin))
    assert np.abs(np.asarray(got_q) - want_q.numpy()).max() < 1e-5
    assert np.abs(np.asarray(got_k) - want_k.numpy()).max() < 1e-5
