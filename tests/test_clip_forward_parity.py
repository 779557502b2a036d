"""The training forward (`clip_forward.clip_loss`) against the official model in train mode.

SAM 2's trainer (`SAM2Train`) is not in the wheel, so its loop is driven here with the
official `SAM2Base` pieces in `model.train()` mode (dropout probabilities set to 0):
initial conditioning frames without memory, the other frames in order with memory, correction
clicks on the planned frames with the previous low-res logits fed back, corrected frames
stored as conditioning frames, sigmoid (not binarised) masks into the memory encoder, future
conditioning frames' pointers attended. The random pixels of clicks are made deterministic on
both sides (the same fixed noise field picks the click among the candidates, by SAM 2's
argmax rule); boxes are tight (noise 0). Compared: every frame's final low-res mask logits
(float32, <= 1e-3) and the loss terms (our loss functions, proved against a PyTorch reference
in test_losses.py, on the official per-step outputs vs. ours). Random weights, image size 256.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tam_jax import configs
from tam_jax.convert.checkpoint import official_to_params
from tam_jax.convert.official import build_official_model, make_objects_present_, randomize_
from tam_jax.training import clip_forward, losses, prompts

SIZE, T, B, O = 256, 4, 2, 2
VALID = np.array([[True, True], [True, False]])  # clip 1's second slot is padding
K = 3  # correction clicks per corrected frame (7 in training); 3 runs the scanned click loop
# on every kind of frame (a one-step multimask run, then a scan of single-mask steps)
NOISE = np.random.default_rng(5).random((B * O, SIZE, SIZE)).astype(np.float32)


def _click_rule(noise, gt, pred):
    """SAM 2's uniform click with a fixed noise field (numpy; both sides use this rule)."""
    n = gt.shape[0]
    fp, fn = pred & ~gt, gt & ~pred
    all_correct = ~(gt != pred).reshape(n, -1).any(1)[:, None, None]
    cand = (fp | (all_correct & ~gt) | fn).reshape(n, -1)
    idx = np.argmax(np.where(cand, noise.reshape(n, -1), -1.0), axis=1)
    label = fn.reshape(n, -1)[np.arange(n), idx].astype(np.int32)
    return np.stack([idx % SIZE, idx // SIZE], -1)[:, None].astype(np.float32), label[:, None]


def _jax_click(key, gt, pred):
    """Drop-in for prompts.correction_click: the fixed noise instead of jax.random."""
    n = gt.shape[0]
    pred = jnp.zeros_like(gt) if pred is None else pred
    fp, fn = pred & ~gt, gt & ~pred
    all_correct = ~jnp.any((gt != pred).reshape(n, -1), axis=1)[:, None, None]
    cand = (fp | (all_correct & ~gt) | fn).reshape(n, -1)
    idx = jnp.argmax(jnp.where(cand, jnp.asarray(NOISE[:n]).reshape(n, -1), -1.0), axis=1)
    label = jnp.take_along_axis(fn.reshape(n, -1), idx[:, None], axis=1).astype(jnp.int32)
    xy = jnp.stack([idx % SIZE, idx // SIZE], -1)[:, None].astype(jnp.float32)
    return xy, label


@functools.lru_cache(maxsize=1)
def _setup():
    cfg = configs.for_training(
        dataclasses.replace(configs.get_config("efficienttam_ti_512x512"), image_size=SIZE))
    model = build_official_model(cfg, seed=21)
    randomize_(model, seed=21)
    make_objects_present_(model)  # else every mask is -1024 and the comparison is void
    model.train()
    for m in model.modules():  # dropout off, train-mode logic on
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if hasattr(m, "dropout_p"):
            m.dropout_p = 0.0
    params = official_to_params(model.state_dict(), cfg)
    rng = np.random.default_rng(3)
    images = rng.normal(size=(B, T, SIZE, SIZE, 3)).astype(np.float32)
    masks = np.zeros((B, T, O, SIZE, SIZE), bool)
    for b in range(B):
        for o in range(O):
            for t in range(T):  # moving rectangles; one frame where object (0, 1) is absent
                if (b, o, t) == (0, 1, 2):
                    continue
                y, x = 30 + 40 * o + 9 * t, 40 + 60 * b + 11 * t
                masks[b, t, o, y:y + 50 + 10 * o, x:x + 70] = True
    return cfg, model, params, images, masks


def _official_clip(model, images_b, masks_b, noise, kind, order, corrected):
    """One clip's valid objects through the official pieces; returns final low-res logits
    per processed frame (T, n, 1, 64, 64) and the per-step outputs for the losses."""
    n = masks_b.shape[1]
    with torch.no_grad():
        backbone = model.forward_image(torch.from_numpy(images_b).permute(0, 3, 1, 2))
        _, feats, pos, sizes = model._prepare_backbone_features(backbone)
        out_dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        finals, steps = [], []
        for i, f in enumerate(order):
            f = int(f)
            gt = masks_b[f]  # (n, S, S)
            feats_f = [x[:, [f] * n] for x in feats]
            pos_f = [x[:, [f] * n] for x in pos]
            is_init = i < kind.num_init_cond
            point_inputs = mask_inputs = None
            if is_init and kind.init_prompts[i] == "mask":
                mask_inputs = torch.from_numpy(gt[:, None].astype(np.float32))
                pix = feats_f[-1].permute(1, 2, 0).view(n, -1, *sizes[-1])
                out = model._use_mask_as_output(pix, None, mask_inputs)
            else:
                if is_init:
                    if kind.init_prompts[i] == "box":
                        pts = np.stack([[[np.nonzero(g.any(0))[0].min(),
                                          np.nonzero(g.any(1))[0].min()],
                                         [np.nonzero(g.any(0))[0].max(),
                                          np.nonzero(g.any(1))[0].max()]] for g in gt])
                        pts, lbl = pts.astype(np.float32), np.tile([[2, 3]], (n, 1))
                    else:
                        pts, lbl = _click_rule(noise, gt, np.zeros_like(gt))
                    point_inputs = {"point_coords": torch.from_numpy(pts),
                                    "point_labels": torch.from_numpy(lbl.astype(np.int32))}
                pix = model._prepare_memory_conditioned_features(
                    frame_idx=f, is_init_cond_frame=is_init, current_vision_feats=feats_f[-1:],
                    current_vision_pos_embeds=pos_f[-1:], feat_sizes=sizes[-1:],
                    output_dict=out_dict, num_frames=T)
                out = model._forward_sam_heads(pix, point_inputs, None, None,
                                               model._use_multimask(is_init, point_inputs))
            steps.append(out)
            if corrected[i]:
                for _ in range(K):
                    pred = (out[4][:, 0] > 0).numpy()
                    new_pts, new_lbl = _click_rule(noise, gt, pred)
                    if point_inputs is None:
                        coords, labels = new_pts, new_lbl
                    else:
                        coords = np.concatenate([point_inputs["point_coords"].numpy(), new_pts], 1)
                        labels = np.concatenate([point_inputs["point_labels"].numpy(), new_lbl],
                                                1)
                    point_inputs = {"point_coords": torch.from_numpy(coords),
                                    "point_labels": torch.from_numpy(labels.astype(np.int32))}
                    out = model._forward_sam_heads(pix, point_inputs, out[3], None,
                                                   model._use_multimask(is_init, point_inputs))
                    steps.append(out)
            low, high, ptr = out[3], out[4], out[5]
            mem, mem_pos = model._encode_new_memory(feats_f, sizes, high,
                                                    is_mask_from_pts=point_inputs is not None)
            entry = {"pred_masks": low, "pred_masks_high_res": high, "obj_ptr": ptr,
                     "maskmem_features": mem, "maskmem_pos_enc": mem_pos,
                     "point_inputs": point_inputs, "mask_inputs": mask_inputs}
            store = "cond_frame_outputs" if (is_init or corrected[i]) else "non_cond_frame_outputs"
            out_dict[store][f] = entry
            finals.append(low.numpy())
        return np.stack(finals), steps


PLANS = {
    "click+extra_corrected": (prompts.PlanKind(True, ("click",), K), [0, 1, 2, 3],
                              [True, False, True, False]),
    "two_masks": (prompts.PlanKind(False, ("mask", "mask"), 0), [0, 2, 1, 3],
                  [False] * 4),
    "box_and_click": (prompts.PlanKind(True, ("box", "click"), K), [0, 3, 1, 2],
                      [True, True, False, False]),
}


# memory_segments 3 on the first plan: one scan per tracked frame, each attending only over the
# memory frames it can have (1, 2, then 3 of the bank's 8 slots), corrected frame 2 among them
@pytest.mark.parametrize("plan,segments", [(p, 0) for p in PLANS]
                         + [("click+extra_corrected", 3)])
def test_clip_forward_matches_official_train_mode(plan, segments, monkeypatch):
    cfg, model, params, images, masks = _setup()
    kind, order, corrected = PLANS[plan]
    monkeypatch.setattr(prompts, "correction_click", _jax_click)
    prompt_cfg = prompts.PromptConfig(num_correction_points=K, prob_sample_from_gt=0.0,
                                      box_noise=0.0)
    loss_cfg = losses.LossConfig()
    n_valid = int(VALID.sum())
    batch = {"images": jnp.asarray(images), "masks": jnp.asarray(masks),
             "obj_valid": jnp.asarray(VALID)}
    run = jax.jit(functools.partial(
        clip_forward.clip_loss, cfg, kind=kind, prompt_cfg=prompt_cfg, loss_cfg=loss_cfg,
        cond_capacity=2, deterministic=True, memory_segments=segments, return_frames=True))
    loss, aux = run(params, batch, order=jnp.asarray(order, jnp.int32),
                    corrected=jnp.asarray(corrected), key=jax.random.key(0),
                    num_objects=n_valid)
    ours = np.asarray(aux["low_res_masks"]).reshape(T, B, O, 1, SIZE // 4, SIZE // 4)

    want_terms = {k: 0.0 for k in losses.TERMS}
    worst = 0.0
    for b in range(B):
        objs = np.nonzero(VALID[b])[0]
        noise = NOISE.reshape(B, O, SIZE, SIZE)[b, objs]
        finals, steps = _official_clip(model, images[b], masks[b][:, objs], noise, kind, order,
                                       corrected)
        diff = np.abs(ours[:, b, objs] - finals).max()
        worst = max(worst, float(diff))
        # the official per-step outputs through our loss functions, in processing order
        gts = [masks[b][int(f)][objs] for f in order]
        per_frame = _steps_per_frame(kind, corrected)
        s = 0
        for frame_i, count in enumerate(per_frame):
            for _ in range(count):
                out = steps[s]
                s += 1
                terms = losses.step_losses(
                    loss_cfg, jnp.asarray(out[1].numpy()), jnp.asarray(out[2].numpy()),
                    jnp.asarray(out[6].numpy()), jnp.asarray(gts[frame_i]),
                    jnp.ones(len(objs), bool), n_valid)
                for k in losses.TERMS:
                    want_terms[k] += float(terms[k])
        assert s == len(steps)
    print(f"\n  {plan}: max |final low-res logit diff| {worst:.2e}; terms ours "
          f"{ {k: round(float(aux[k]), 5) for k in losses.TERMS} } official "
          f"{ {k: round(v, 5) for k, v in want_terms.items()} }")
    assert worst < 1e-3
    for k in ("loss_mask", "loss_dice", "loss_class"):
        np.testing.assert_allclose(float(aux[k]), want_terms[k], rtol=1e-4, atol=1e-6)
    # IoU targets threshold logits at 0: allow a pixel flip on near-zero logits
    np.testing.assert_allclose(float(aux["loss_iou"]), want_terms["loss_iou"], rtol=2e-3)
    np.testing.assert_allclose(float(loss), float(losses.total(loss_cfg, want_terms)), rtol=1e-3)


def _steps_per_frame(kind, corrected):
    return [1 + (kind.corrections if c else 0) for c in corrected]
