"""Parity of the SAM heads (prompt encoder, two-way transformer, mask decoder) with the official.

The official `PromptEncoder` / `MaskDecoder` (random weights via `randomize_`) are the oracle;
official weights are loaded into the Flax modules through the converter's key table. Small inputs:
image_size 256 (16 x 16 embedding, 64 x 64 low-res masks), plus one run at 512.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tam_jax.configs import get_config
from tam_jax.convert.key_table import torch_to_flax
from tam_jax.convert.official import _import_sam2, build_official_model, randomize_
from tam_jax.models.mask_decoder import MaskDecoder
from tam_jax.models.prompt_encoder import PromptEncoder

TOL = 1e-3


def _np(t) -> np.ndarray:
    return t.detach().cpu().float().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def _nchw_to_nhwc(t: torch.Tensor) -> np.ndarray:
    return _np(t.permute(0, 2, 3, 1))


def _check(capsys, label: str, pairs: dict[str, tuple]) -> None:
    """Assert max-abs differences (ours, official) <= TOL and print them."""
    diffs = {}
    for name, (ours, want) in pairs.items():
        ours, want = np.asarray(ours), _np(want)
        assert ours.shape == want.shape, f"{label}/{name}: {ours.shape} vs {want.shape}"
        diffs[name] = float(np.abs(ours.astype(np.float32) - want).max()) if ours.size else 0.0
    with capsys.disabled():
        print(f"\n[sam heads parity] {label}: " +
              ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    bad = {k: v for k, v in diffs.items() if not v <= TOL}
    assert not bad, f"{label}: max abs diff above {TOL}: {bad}"


class _Heads:
    """An official model's SAM heads with the matching Flax modules and converted params."""

    def __init__(self, cfg, official_pe, official_dec):
        self.cfg, self.pe, self.dec = cfg, official_pe, official_dec
        self.flax_pe, self.flax_dec = PromptEncoder(cfg), MaskDecoder(cfg)
        self.pe_params = {"params": _convert(official_pe, "sam_prompt_encoder")}
        self.dec_params = {"params": _convert(official_dec, "sam_mask_decoder")}

    def prompt(self, points=None, labels=None, masks=None, pad=True, batch_size=None):
        return _prompt_fn(self.flax_pe, pad, batch_size)(self.pe_params, points, labels, masks)

    def dense_pe(self):
        return self.flax_pe.apply(self.pe_params, method=PromptEncoder.get_dense_pe)

    def decode(self, feats, pe, sparse, dense, multimask, repeat_image=False, training=False,
               params=None):
        fn = _decode_fn(self.flax_dec, multimask, repeat_image, training)
        return fn(params or self.dec_params, feats, pe, sparse, dense)


def _convert(module: torch.nn.Module, prefix: str) -> dict:
    sd = {f"{prefix}.{k}": v for k, v in module.state_dict().items()}
    params = torch_to_flax(sd, f"{prefix}.")
    head = module.state_dict().get("pred_obj_score_head.weight")
    if head is not None:  # the single-Linear object-score head (pred_obj_scores_mlp=False)
        params["pred_obj_score_head"] = {"kernel": _np(head).T,
                                         "bias": _np(module.pred_obj_score_head.bias)}
    return params


@functools.cache
def _prompt_fn(module, pad, batch_size):
    def fn(params, points, labels, masks):
        return module.apply(params, points, labels, masks, pad=pad, batch_size=batch_size)
    return jax.jit(fn)


@functools.cache
def _decode_fn(module, multimask, repeat_image, training):
    def fn(params, feats, pe, sparse, dense):
        return module.apply(params, feats, pe, sparse, dense, multimask_output=multimask,
                            repeat_image=repeat_image, training=training)
    return jax.jit(fn)


def _official_heads(image_size: int, seed: int = 1) -> _Heads:
    cfg = dataclasses.replace(get_config("efficienttam_s"), image_size=image_size).validate()
    model = build_official_model(cfg, seed=seed)
    randomize_(model, seed=seed)
    return _Heads(cfg, model.sam_prompt_encoder, model.sam_mask_decoder)


@pytest.fixture(scope="module")
def heads256() -> _Heads:
    return _official_heads(256)


def _clicks(b: int, n: int, size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    coords = torch.rand(b, n, 2, generator=g) * size
    labels = torch.randint(0, 2, (b, n), generator=g)
    return coords, labels


# ---------------------------------------------------------------- prompt encoder


def test_prompt_encoder_clicks_box_mask_and_no_prompt(heads256, capsys):
    hd = heads256
    s, h = hd.cfg.image_size, hd.cfg.feat_size
    with torch.no_grad():
        # Clicks, with a padding label in the middle of one example; the encoder appends a pad.
        coords, labels = _clicks(2, 3, s, seed=0)
        labels[1, 1] = -1
        want = hd.pe(points=(coords, labels), boxes=None, masks=None)
        got = hd.prompt(coords.numpy(), labels.numpy())
        _check(capsys, "prompt clicks pad=True", {
            "sparse": (got[0], want[0]), "dense": (got[1], want[1].permute(0, 2, 3, 1))})

        # A box as the model passes it: corners labelled 2 / 3 before a click, plus the pad.
        box = torch.tensor([[[10.0, 20.0], [200.0, 150.0]], [[0.0, 0.0], [255.0, 255.0]]])
        pts = torch.cat([box, coords[:, :1]], dim=1)
        lab = torch.cat([torch.tensor([[2, 3], [2, 3]]), labels[:, :1]], dim=1)
        want = hd.pe(points=(pts, lab), boxes=None, masks=None)
        got = hd.prompt(pts.numpy(), lab.numpy())
        _check(capsys, "prompt box-as-points + click", {"sparse": (got[0], want[0])})

        # The official `boxes=` path is the two corners with labels 2, 3 and no pad.
        want = hd.pe(points=None, boxes=box.reshape(2, 4), masks=None)
        got = hd.prompt(box.numpy(), np.array([[2, 3], [2, 3]]), pad=False)
        _check(capsys, "prompt boxes= (pad=False)", {"sparse": (got[0], want[0])})

        # A mask prompt (logits at 4h x 4w), with clicks.
        masks = torch.randn(2, 1, 4 * h, 4 * h, generator=torch.Generator().manual_seed(3)) * 4
        want = hd.pe(points=(coords, labels), boxes=None, masks=masks)
        got = hd.prompt(coords.numpy(), labels.numpy(), _nchw_to_nhwc(masks))
        _check(capsys, "prompt clicks + mask", {
            "sparse": (got[0], want[0]), "dense": (got[1], want[1].permute(0, 2, 3, 1))})

        # Mask only: no sparse tokens at all.
        want = hd.pe(points=None, boxes=None, masks=masks)
        got = hd.prompt(None, None, _nchw_to_nhwc(masks))
        _check(capsys, "prompt mask only", {
            "sparse": (got[0], want[0]), "dense": (got[1], want[1].permute(0, 2, 3, 1))})

        # No prompt at all, and the base model's "no prompt" (one pad point -> two pad tokens).
        want = hd.pe(points=None, boxes=None, masks=None)
        got = hd.prompt(None, None, None, batch_size=1)
        _check(capsys, "prompt none", {
            "sparse": (got[0], want[0]), "dense": (got[1], want[1].permute(0, 2, 3, 1))})
        pad_pt, pad_lab = torch.zeros(2, 1, 2), -torch.ones(2, 1, dtype=torch.int32)
        want = hd.pe(points=(pad_pt, pad_lab), boxes=None, masks=None)
        got = hd.prompt(pad_pt.numpy(), pad_lab.numpy())
        _check(capsys, "prompt pad point only", {
            "sparse": (got[0], want[0]), "dense": (got[1], want[1].permute(0, 2, 3, 1))})

        want_pe = hd.pe.get_dense_pe().permute(0, 2, 3, 1)
        _check(capsys, "dense PE", {"pe": (hd.dense_pe(), want_pe)})


# ---------------------------------------------------------------- mask decoder


def _decoder_inputs(hd: _Heads, b: int, seed: int, with_mask: bool = False):
    """Official-prompt-encoded clicks on random features: torch NCHW and jax NHWC versions."""
    g = torch.Generator().manual_seed(seed)
    d, h = hd.cfg.hidden_dim, hd.cfg.feat_size
    feats = torch.randn(b, d, h, h, generator=g)
    coords, labels = _clicks(b, 2, hd.cfg.image_size, seed + 1)
    masks = torch.randn(b, 1, 4 * h, 4 * h, generator=g) * 4 if with_mask else None
    with torch.no_grad():
        sparse, dense = hd.pe(points=(coords, labels), boxes=None, masks=masks)
        pe = hd.pe.get_dense_pe()
    torch_in = (feats, pe, sparse, dense)
    jax_in = (_nchw_to_nhwc(feats), _nchw_to_nhwc(pe), _np(sparse), _nchw_to_nhwc(dense))
    return torch_in, jax_in


def _compare_decoder(capsys, label, hd, dec, torch_in, jax_in, multimask, params=None,
                     repeat_image=False, training=False):
    with torch.no_grad():
        want = dec(*torch_in, multimask_output=multimask, repeat_image=repeat_image)
        all_masks, all_iou, _, _ = dec.predict_masks(*torch_in, repeat_image=repeat_image)
    got = hd.decode(*jax_in, multimask, repeat_image=repeat_image, training=training,
                    params=params)
    _check(capsys, label, {
        "masks": (got["masks"], want[0]), "iou": (got["iou_pred"], want[1]),
        "tokens": (got["sam_tokens_out"], want[2]),
        "obj_score": (got["object_score_logits"], want[3]),
        "all_masks": (got["all_masks"], all_masks), "all_iou": (got["all_iou"], all_iou),
    })
    return got, want, all_masks, all_iou


@pytest.mark.parametrize("multimask", [True, False])
def test_mask_decoder_matches_official(heads256, capsys, multimask):
    hd = heads256
    torch_in, jax_in = _decoder_inputs(hd, b=2, seed=10, with_mask=multimask)
    got, _, _, all_iou = _compare_decoder(capsys, f"decoder multimask={multimask}", hd, hd.dec,
                                          torch_in, jax_in, multimask)
    m = 3 if multimask else 1
    assert got["masks"].shape == (2, m, 64, 64) and got["iou_pred"].shape == (2, m)
    assert got["sam_tokens_out"].shape == (2, m, 256)
    # The IoU head ends in a sigmoid (iou_prediction_use_sigmoid).
    assert hd.cfg.iou_prediction_use_sigmoid and 0 < all_iou.min() and all_iou.max() < 1


def _official_stability(dec, masks_b1hw: torch.Tensor) -> np.ndarray:
    return _np(dec._get_stability_scores(masks_b1hw))[:, 0]


def test_dynamic_multimask_stability_both_branches(heads256, capsys):
    """Single-mask output: per example, mask 0 if stable else the best multimask output.

    Mask 0's logits are scaled by k (hypernetwork 0's last layer times k) so that, in one batch,
    some examples are stable and some fall back; k is searched on the official mask-0 logits.
    """
    hd = heads256
    b = 6
    torch_in, jax_in = _decoder_inputs(hd, b=b, seed=20)
    with torch.no_grad():
        mask0 = hd.dec.predict_masks(*torch_in, repeat_image=False)[0][:, :1]
    delta, thresh = (hd.dec.dynamic_multimask_stability_delta,
                     hd.dec.dynamic_multimask_stability_thresh)
    # Among the scales giving a mixed batch, take the one whose scores are farthest from the
    # threshold, so that 1e-5 differences cannot flip an example.
    chosen, margin = None, 0.0
    for k in 2.0 ** (np.arange(-16, 48) / 4):
        scores = _official_stability(hd.dec, mask0 * float(k))
        stable = scores >= thresh
        if 0 < stable.sum() < b and np.abs(scores - thresh).min() > margin:
            chosen, margin = float(k), float(np.abs(scores - thresh).min())
    assert chosen is not None, "no scale gives a batch with both stable and unstable masks"

    dec = copy.deepcopy(hd.dec)
    last = dec.output_hypernetworks_mlps[0].layers[-1]
    with torch.no_grad():
        last.weight.mul_(chosen)
        last.bias.mul_(chosen)
    params = {"params": _convert(dec, "sam_mask_decoder")}
    got, want, all_masks, all_iou = _compare_decoder(
        capsys, f"decoder dynamic stability (k={chosen:.3g})", hd, dec, torch_in, jax_in,
        multimask=False, params=params)
    stable = _official_stability(dec, all_masks[:, :1]) >= thresh
    assert 0 < stable.sum() < b, stable
    # Both branches really happened in the official output, and ours picked the same masks.
    fell_back = ~stable
    assert np.array_equal(_np(want[0][stable]), _np(all_masks[stable][:, :1]))
    best = 1 + np.argmax(_np(all_iou[:, 1:]), axis=-1)
    assert not np.allclose(_np(want[0][fell_back]), _np(all_masks[fell_back][:, :1]))
    np.testing.assert_array_equal(_np(want[1])[:, 0], np.where(
        stable, _np(all_iou[:, 0]), _np(all_iou)[np.arange(b), best]))
    ours_pick = np.abs(np.asarray(got["masks"])[:, 0] - np.asarray(got["all_masks"])[
        np.arange(b), np.where(stable, 0, best)]).max()
    assert ours_pick == 0.0
    with capsys.disabled():
        print(f"[sam heads parity] stability: stable={stable.tolist()} delta={delta} "
              f"margin to threshold {margin:.2e}")

    # Training mode has no fallback: always mask 0 (official `self.training`).
    dec.train()
    try:
        _compare_decoder(capsys, "decoder single-mask, training", hd, dec, torch_in, jax_in,
                         multimask=False, params=params, training=True)
    finally:
        dec.eval()


def test_mask_decoder_repeat_image(heads256, capsys):
    hd = heads256
    torch_in, jax_in = _decoder_inputs(hd, b=3, seed=30)
    feats_t, feats_j = torch_in[0][:1], jax_in[0][:1]
    _compare_decoder(capsys, "decoder repeat_image", hd, hd.dec, (feats_t, *torch_in[1:]),
                     (feats_j, *jax_in[1:]), multimask=True, repeat_image=True)


def test_sam_heads_at_512(capsys):
    hd = _official_heads(512, seed=2)
    torch_in, jax_in = _decoder_inputs(hd, b=1, seed=40, with_mask=True)
    for multimask in (True, False):
        got, *_ = _compare_decoder(capsys, f"512 decoder multimask={multimask}", hd, hd.dec,
                                   torch_in, jax_in, multimask)
        assert got["all_masks"].shape == (1, 4, 128, 128)


# ---------------------------------------------------------------- config variants


@pytest.mark.parametrize("variant", ["tiny_flags_off", "linear_obj_head"])
def test_variants_follow_the_config(capsys, variant):
    """Widths and head flags come from the config (official modules built directly)."""
    _import_sam2()
    from sam2.modeling.sam.mask_decoder import MaskDecoder as OfficialDecoder
    from sam2.modeling.sam.prompt_encoder import PromptEncoder as OfficialPrompt
    from sam2.modeling.sam.transformer import TwoWayTransformer as OfficialTransformer

    if variant == "tiny_flags_off":
        cfg = dataclasses.replace(get_config("tiny"), pred_obj_scores=False,
                                  iou_prediction_use_sigmoid=False,
                                  use_multimask_token_for_obj_ptr=False)
    else:
        cfg = dataclasses.replace(get_config("tiny"), pred_obj_scores_mlp=False)
    md, d = cfg.mask_decoder, cfg.hidden_dim
    torch.manual_seed(0)
    pe = OfficialPrompt(embed_dim=d, image_embedding_size=(cfg.feat_size, cfg.feat_size),
                        input_image_size=(cfg.image_size, cfg.image_size),
                        mask_in_chans=md.mask_in_chans)
    dec = OfficialDecoder(
        transformer_dim=d,
        transformer=OfficialTransformer(depth=md.transformer_depth, embedding_dim=d,
                                        num_heads=md.transformer_heads,
                                        mlp_dim=md.transformer_mlp_dim),
        num_multimask_outputs=md.num_multimask_outputs, iou_head_depth=md.iou_head_depth,
        iou_head_hidden_dim=md.iou_head_hidden_dim,
        iou_prediction_use_sigmoid=cfg.iou_prediction_use_sigmoid,
        dynamic_multimask_via_stability=md.dynamic_multimask_via_stability,
        pred_obj_scores=cfg.pred_obj_scores, pred_obj_scores_mlp=cfg.pred_obj_scores_mlp,
        use_multimask_token_for_obj_ptr=cfg.use_multimask_token_for_obj_ptr,
    )
    randomize_(pe, seed=5)
    randomize_(dec, seed=6)
    pe.eval()
    dec.eval()
    hd = _Heads(cfg, pe, dec)
    torch_in, jax_in = _decoder_inputs(hd, b=2, seed=50, with_mask=True)
    for multimask in (True, False):
        _compare_decoder(capsys, f"{variant} multimask={multimask}", hd, dec, torch_in, jax_in,
                         multimask)


def test_init_creates_exactly_the_official_params(heads256):
    """`init` (whatever the prompt) gives the converter's tree: same paths, same shapes."""
    hd = heads256
    h = hd.cfg.feat_size
    shapes = lambda tree: jax.tree_util.tree_map(np.shape, tree)
    rng = jax.random.PRNGKey(0)
    pe_vars = jax.eval_shape(hd.flax_pe.init, rng, None, None, None)
    assert shapes(nn.meta.unbox(pe_vars)) == shapes(hd.pe_params)
    dec_vars = jax.eval_shape(
        functools.partial(hd.flax_dec.init, multimask_output=True), rng,
        jnp.zeros((1, h, h, 256)), jnp.zeros((1, h, h, 256)), jnp.zeros((1, 3, 256)),
        jnp.zeros((1, h, h, 256)))
    assert shapes(nn.meta.unbox(dec_vars)) == shapes(hd.dec_params)
