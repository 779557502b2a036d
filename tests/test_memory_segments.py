"""Leaving empty bank slots out of the memory attention (`memory.assemble(max_frames=...)`,
`clip_forward.frame_segments`): the selected frames, in bank order, and nothing else changes.

The loss and gradients with segments against one scan are in test_train_step.py, the training
forward with segments against the official model in test_clip_forward_parity.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tam_jax.configs import get_config
from tam_jax.memory import assemble, empty_bank, write_frame
from tam_jax.training.clip_forward import frame_segments

CFG = get_config("tiny")


def _bank():
    """3 objects; object 0 holds cond frame 0 and recent frames 1, 2; object 1 cond frame 0
    and recent frame 2; object 2 only cond frames 0 and 3 (a corrected frame)."""
    rng = np.random.default_rng(0)
    h, c, d = CFG.feat_size, CFG.mem_dim, CFG.hidden_dim
    bank = empty_bank(CFG, 3, cond_capacity=2)
    feats = lambda: jnp.asarray(rng.normal(size=(3, h, h, c)), jnp.float32)
    ptr = lambda: jnp.asarray(rng.normal(size=(3, d)), jnp.float32)
    bank = write_frame(bank, 0, feats(), ptr(), is_cond=True)
    bank = write_frame(bank, 1, feats(), ptr(), is_cond=False,
                       write_mask_b=jnp.asarray([True, False, False]))
    bank = write_frame(bank, 2, feats(), ptr(), is_cond=False,
                       write_mask_b=jnp.asarray([True, True, False]))
    bank = write_frame(bank, 3, feats(), ptr(), is_cond=True,
                       write_mask_b=jnp.asarray([False, False, True]))
    return bank


def test_max_frames_keeps_the_selected_frames_in_bank_order():
    bank = _bank()
    tpos = jnp.asarray(np.random.default_rng(1).normal(size=(CFG.num_maskmem, 1, 1, CFG.mem_dim)),
                       jnp.float32)
    hw = CFG.feat_size ** 2
    full = assemble(CFG, bank, tpos, 4, 8, reverse=False)
    part = assemble(CFG, bank, tpos, 4, 8, reverse=False, max_frames=3)
    (mem, pos, valid, n_ptr), (mem3, pos3, valid3, n_ptr3) = full, part
    f = 2 + CFG.num_maskmem - 1
    assert n_ptr3 == n_ptr and mem3.shape[1] == 3 * hw + n_ptr
    for b in range(3):
        frames_valid = np.asarray(valid[b, : f * hw]).reshape(f, hw)[:, 0]
        chosen = np.nonzero(frames_valid)[0]  # 3, 2 and 2 frames
        n = len(chosen) * hw
        np.testing.assert_array_equal(np.asarray(valid3[b, : 3 * hw]), np.arange(3 * hw) < n)
        want = np.asarray(mem[b, : f * hw]).reshape(f, hw, -1)[chosen].reshape(n, -1)
        np.testing.assert_array_equal(np.asarray(mem3[b, :n]), want)
        want_pos = np.asarray(pos[b, : f * hw]).reshape(f, hw, -1)[chosen].reshape(n, -1)
        np.testing.assert_array_equal(np.asarray(pos3[b, :n]), want_pos)
    # pointer tokens are untouched
    np.testing.assert_array_equal(np.asarray(mem3[:, 3 * hw:]), np.asarray(mem[:, f * hw:]))
    np.testing.assert_array_equal(np.asarray(valid3[:, 3 * hw:]), np.asarray(valid[:, f * hw:]))


def test_max_frames_pads_with_masked_frames_when_fewer_are_selected():
    bank = _bank()
    tpos = jnp.zeros((CFG.num_maskmem, 1, 1, CFG.mem_dim), jnp.float32)
    hw = CFG.feat_size ** 2
    _, _, valid, _ = assemble(CFG, bank, tpos, 4, 8, reverse=False, max_frames=4)
    per_frame = np.asarray(valid[:, : 4 * hw]).reshape(3, 4, hw)[..., 0]
    np.testing.assert_array_equal(per_frame, [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0]])
    with pytest.raises(ValueError, match="max_frames"):
        assemble(CFG, bank, tpos, 4, 8, reverse=False, max_frames=0)


def test_memory_attention_output_is_unchanged_by_leaving_empty_slots_out():
    """The attention itself (pooled: tiny has pool_window 2) over the selected frames equals the
    one over the whole bank with empty slots masked, to float rounding."""
    from tam_jax.models.tam import EfficientTAM, init_params

    bank = _bank()
    params = init_params(CFG, 0)
    model = EfficientTAM(CFG).bind({"params": params})
    h, d = CFG.feat_size, CFG.hidden_dim
    rng = np.random.default_rng(2)
    feats = jnp.asarray(rng.normal(size=(3, h, h, d)), jnp.float32)
    pos = jnp.asarray(rng.normal(size=(3, h, h, d)), jnp.float32)
    from tam_jax.track import conditioned_features

    run = lambda k: jax.jit(lambda bk: conditioned_features(
        model, bk, feats, pos, 4, 8, is_init_cond_frame=False, reverse=False, max_frames=k))(bank)
    want = np.asarray(run(None))
    for k in (3, 5):
        np.testing.assert_allclose(np.asarray(run(k)), want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("first,end,segments,slots,want", [
    (1, 8, 0, 8, [(1, 8, None)]),
    (1, 8, 1, 8, [(1, 8, 7)]),
    (1, 8, 2, 8, [(1, 4, 3), (4, 8, 7)]),
    (2, 8, 2, 8, [(2, 5, 4), (5, 8, 7)]),
    (1, 2, 3, 8, [(1, 2, 1)]),  # more segments than frames
    (1, 16, 2, 8, [(1, 5, 4), (5, 16, None)]),  # the late frames need every slot
    (3, 3, 2, 8, []),  # nothing left to track
])
def test_frame_segments(first, end, segments, slots, want):
    assert frame_segments(first, end, segments, slots) == want


def test_frame_segments_cover_every_frame_with_enough_slots():
    for first in (1, 2):
        for end in range(first + 1, 20):
            for segments in (1, 2, 3):
                pieces = frame_segments(first, end, segments, 8)
                assert [p[0] for p in pieces[1:]] == [p[1] for p in pieces[:-1]]
                assert pieces[0][0] == first and pieces[-1][1] == end
                for _a, b, k in pieces:
                    # processing index i has at most i memory frames; None = all 8 slots
                    assert (b - 1 >= 8) if k is None else k >= b - 1
    # a long clip in many scans is a quick dynamic programme, with the fewest keys
    pieces = frame_segments(1, 64, 8, 8)
    assert len(pieces) == 8 and pieces[-1] == (8, 64, None)
    with pytest.raises(ValueError, match="memory_segments"):
        frame_segments(1, 8, -1, 8)


def test_jit_traces_max_frames_statically():
    bank = _bank()
    tpos = jnp.zeros((CFG.num_maskmem, 1, 1, CFG.mem_dim), jnp.float32)
    f = jax.jit(lambda bk, i: assemble(CFG, bk, tpos, i, 8, False, max_frames=3)[0])
    assert f(bank, 4).shape == (3, 3 * CFG.feat_size ** 2 + (2 + CFG.max_obj_ptrs_in_encoder)
                                * CFG.hidden_dim // CFG.mem_dim, CFG.mem_dim)
