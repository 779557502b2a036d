"""Build the official PyTorch EfficientTAM (the oracle) from a tam_jax config.

Needs the `torch` extra: `torch==2.13.0`, `hydra-core`, `iopath`, and the PyPI wheel
`efficient-track-anything==1.0` installed with `--no-deps` (its metadata asks for torchvision,
which cannot be installed beside the CPU torch). That wheel's import name is `sam2` and it ships
no YAML configs, so the model is instantiated with Hydra from a dict holding the arguments of the
official `configs/efficienttam/*.yaml` (spec §7), pointed at the `sam2.modeling...` classes.

Only used by tests, the benchmark, the demo and the converter's self-checks; the library itself
never imports torch.
"""

from __future__ import annotations

from typing import Any

from tam_jax.configs import EfficientTAMConfig

_M = "sam2.modeling"


def _cross_attention_class(cfg: EfficientTAMConfig) -> str:
    name = cfg.memory_attention.cross_attention.official_class
    if name == "(none)":
        raise ValueError(
            f"{cfg.name}: memory cross-attention {cfg.memory_attention.cross_attention} has no "
            "official PyTorch class (only window 1, or window 2 with the eq. 5 / eq. 6 constant)"
        )
    return f"{_M}.sam.transformer.{name}"


def official_hydra_config(cfg: EfficientTAMConfig, video: bool = False) -> dict[str, Any]:
    """The `model:` section of the official YAML for `cfg`, as a dict for hydra.instantiate."""
    vit, ma, me = cfg.vit, cfg.memory_attention, cfg.memory_encoder
    feat = [cfg.feat_size, cfg.feat_size]
    attn_common = dict(
        rope_theta=ma.rope_theta, feat_sizes=feat, embedding_dim=ma.d_model,
        num_heads=ma.num_heads, downsample_rate=1, dropout=ma.dropout,
    )
    return {
        "_target_": (
            "sam2.sam2_video_predictor.SAM2VideoPredictor" if video else f"{_M}.sam2_base.SAM2Base"
        ),
        "image_encoder": {
            "_target_": f"{_M}.backbones.image_encoder.ImageEncoder",
            "scalp": 0,
            "trunk": {
                "_target_": f"{_M}.backbones.vitdet.ViT",
                "patch_size": vit.patch_size, "embed_dim": vit.embed_dim, "depth": vit.depth,
                "num_heads": vit.num_heads, "mlp_ratio": vit.mlp_ratio, "qkv_bias": True,
                "drop_path_rate": 0.0, "use_rel_pos": False, "window_size": vit.window_size,
                "window_block_indexes": list(vit.window_block_indexes),
                "pretrain_img_size": vit.pretrain_grid * vit.patch_size,
            },
            "neck": {
                "_target_": f"{_M}.backbones.image_encoder.ViTDetNeck",
                "position_encoding": {
                    "_target_": f"{_M}.position_encoding.PositionEmbeddingSine",
                    "num_pos_feats": cfg.hidden_dim, "normalize": True, "scale": None,
                    "temperature": 10000,
                },
                "d_model": cfg.hidden_dim,
                "backbone_channel_list": [vit.embed_dim],
                "neck_norm": "LN",
            },
        },
        "memory_attention": {
            "_target_": f"{_M}.memory_attention.MemoryAttention",
            "d_model": ma.d_model, "pos_enc_at_input": ma.pos_enc_at_input,
            "num_layers": ma.num_layers,
            "layer": {
                "_target_": f"{_M}.memory_attention.MemoryAttentionLayer",
                "activation": "relu", "dim_feedforward": ma.dim_feedforward,
                "dropout": ma.dropout, "pos_enc_at_attn": False, "d_model": ma.d_model,
                "pos_enc_at_cross_attn_keys": True, "pos_enc_at_cross_attn_queries": False,
                "self_attention": {"_target_": f"{_M}.sam.transformer.RoPEAttention",
                                   **attn_common},
                "cross_attention": {"_target_": _cross_attention_class(cfg), **attn_common,
                                    "rope_k_repeat": True, "kv_in_dim": ma.kv_in_dim},
            },
        },
        "memory_encoder": {
            "_target_": f"{_M}.memory_encoder.MemoryEncoder",
            "out_dim": me.out_dim,
            "position_encoding": {
                "_target_": f"{_M}.position_encoding.PositionEmbeddingSine",
                "num_pos_feats": me.out_dim, "normalize": True, "scale": None,
                "temperature": 10000,
            },
            "mask_downsampler": {
                "_target_": f"{_M}.memory_encoder.MaskDownSampler",
                "kernel_size": me.downsampler_kernel, "stride": me.downsampler_stride,
                "padding": me.downsampler_padding,
            },
            "fuser": {
                "_target_": f"{_M}.memory_encoder.Fuser",
                "num_layers": me.fuser_layers,
                "layer": {
                    "_target_": f"{_M}.memory_encoder.CXBlock", "dim": cfg.hidden_dim,
                    "kernel_size": me.fuser_kernel, "padding": me.fuser_kernel // 2,
                    "layer_scale_init_value": 1e-6, "use_dwconv": True,
                },
            },
        },
        "num_maskmem": cfg.num_maskmem,
        "image_size": cfg.image_size,
        "sigmoid_scale_for_mem_enc": cfg.sigmoid_scale_for_mem_enc,
        "sigmoid_bias_for_mem_enc": cfg.sigmoid_bias_for_mem_enc,
        "use_mask_input_as_output_without_sam": cfg.use_mask_input_as_output_without_sam,
        "directly_add_no_mem_embed": cfg.directly_add_no_mem_embed,
        "use_high_res_features_in_sam": False,
        "multimask_output_in_sam": cfg.multimask_output_in_sam,
        "iou_prediction_use_sigmoid": cfg.iou_prediction_use_sigmoid,
        "use_obj_ptrs_in_encoder": cfg.use_obj_ptrs_in_encoder,
        "max_obj_ptrs_in_encoder": cfg.max_obj_ptrs_in_encoder,
        "add_tpos_enc_to_obj_ptrs": False,
        "only_obj_ptrs_in_the_past_for_eval": cfg.only_obj_ptrs_in_the_past_for_eval,
        "pred_obj_scores": cfg.pred_obj_scores,
        "pred_obj_scores_mlp": cfg.pred_obj_scores_mlp,
        "fixed_no_obj_ptr": cfg.fixed_no_obj_ptr,
        "soft_no_obj_ptr": cfg.soft_no_obj_ptr,
        "multimask_output_for_tracking": cfg.multimask_output_for_tracking,
        "use_multimask_token_for_obj_ptr": cfg.use_multimask_token_for_obj_ptr,
        "multimask_min_pt_num": cfg.multimask_min_pt_num,
        "multimask_max_pt_num": cfg.multimask_max_pt_num,
        "use_mlp_for_obj_ptr_proj": cfg.use_mlp_for_obj_ptr_proj,
        "memory_temporal_stride_for_eval": cfg.memory_temporal_stride_for_eval,
        "max_cond_frames_in_attn": cfg.max_cond_frames_in_attn,
        "binarize_mask_from_pts_for_mem_enc": video and cfg.binarize_mask_from_pts_for_mem_enc,
        # torch.compile on CPU only costs time; the computation is the same.
        "compile_image_encoder": False,
        "sam_mask_decoder_extra_args": {
            "dynamic_multimask_via_stability": cfg.mask_decoder.dynamic_multimask_via_stability,
            "dynamic_multimask_stability_delta": cfg.mask_decoder.dynamic_multimask_stability_delta,
            "dynamic_multimask_stability_thresh": (
                cfg.mask_decoder.dynamic_multimask_stability_thresh
            ),
        },
    }


def build_official_model(cfg: EfficientTAMConfig, seed: int = 0, video: bool = False):
    """Instantiate the official model in float32 eval mode with random weights from `seed`.

    The random init is the official one, except that the handful of parameters PyTorch creates
    as zeros (`no_mem_embed`, `maskmem_tpos_enc`, ... are trunc-normal already) stay as the
    official code makes them; tests perturb weights where zeros would hide a bug.
    """
    try:
        import torch
        from hydra.utils import instantiate
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the official model needs the torch extra: pip install torch==2.13.0 hydra-core "
            "iopath && pip install --no-deps efficient-track-anything==1.0"
        ) from e
    _import_sam2()
    torch.manual_seed(seed)
    model = instantiate(official_hydra_config(cfg, video=video), _recursive_=True)
    return model.float().eval()


def randomize_(model, seed: int = 0) -> None:
    """Overwrite every floating parameter and buffer with seeded random values, in place.

    The official init leaves many tensors at 0 or 1 (biases, LayerNorms, `gamma` = 1e-6), which
    would hide a wrong transform in a parity test. Here: 1-D `*.weight` (the LayerNorms) and the
    layer-scale `gamma` are 1 + 0.1 N(0,1); matrices and conv kernels are N(0, 1/fan_in); the
    rest (biases, tokens, embeddings) are 0.1 N(0,1); the Fourier matrix is N(0,1).
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=g, dtype=torch.float32)
            if name.endswith("gamma") or (t.ndim == 1 and name.endswith(".weight")):
                t.copy_(1.0 + 0.1 * noise)
            elif name.endswith("positional_encoding_gaussian_matrix"):
                t.copy_(noise)
            elif t.ndim >= 2 and "." in name and not name.endswith("pos_embed"):
                t.copy_(noise / max(1, t[0].numel()) ** 0.5)
            else:
                t.copy_(0.1 * noise)


def make_objects_present_(model, bias: float = 10.0) -> None:
    """Raise the object-score head's output bias in place so every object is "present".

    With random weights the object score is as often negative as not, and a gated-out object's
    masks are all -1024 and its memory is the no-object embedding: a parity test or a benchmark
    would compare or time nothing. A bias of 10 keeps the full mask / memory path running.
    """
    import torch

    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[2].bias.fill_(bias)


def promote_memory_to_float32_(model) -> None:
    """Patch the official memory attention (in place) to receive `memory.float()`.

    Upstream bug worked around (issue 3): the official predictor stores memories in bfloat16
    and, on CPU in float32, its memory attention crashes ("mat1 and mat2 must have the same
    dtype") whenever the memory holds no object-pointer tokens. In its non-crashing paths
    `torch.cat` with the float32 pointers silently promotes the bf16 memory to float32; this
    patch does that promotion always, reproducing those numerics on every path.
    """
    forward = model.memory_attention.forward

    def promoted(curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens=0):
        return forward(curr, memory.float(), curr_pos, memory_pos.float(), num_obj_ptr_tokens)

    model.memory_attention.forward = promoted


def _import_sam2():
    """Import the wheel's `sam2` package, tolerating its import-time Hydra initialisation."""
    import sys

    if "sam2" in sys.modules:
        return sys.modules["sam2"]
    try:
        import sam2  # noqa: F401  (its __init__ calls hydra.initialize("configs"))
    except ValueError:
        # GlobalHydra already initialised by someone else: the modules are importable anyway.
        import sam2.modeling.sam2_base  # noqa: F401
    return sys.modules["sam2"]


def official_image_predictor(model):
    """The official `SAM2ImagePredictor` around `model`, with a torchvision stand-in.

    The predictor imports three torchvision transforms, and PyPI's torchvision cannot be imported
    beside the CPU torch used here. `install_torchvision_standin` provides them with the same
    arithmetic (see its docstring); everything else is the official predictor's code.
    """
    install_torchvision_standin()
    _import_sam2()
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    return SAM2ImagePredictor(model)


def install_torchvision_standin() -> None:
    """Register a minimal `torchvision.transforms` (ToTensor, Resize, Normalize) if needed.

    - ToTensor: HWC uint8 array -> CHW float32 in [0, 1].
    - Resize((h, w)) on a float tensor: torchvision calls `F.interpolate(mode="bilinear",
      align_corners=False, antialias=True)`; so does the stand-in.
    - Normalize(mean, std): (x - mean) / std per channel.
    A real torchvision, when importable, is left alone.
    """
    import sys
    import types

    try:
        import torchvision.transforms  # noqa: F401

        return
    except Exception:
        pass
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    class ToTensor:
        def __call__(self, pic):
            arr = np.asarray(pic)
            if arr.ndim == 2:
                arr = arr[:, :, None]
            t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
            return t.float().div(255) if t.dtype == torch.uint8 else t.float()

    class Resize(nn.Module):
        def __init__(self, size):
            super().__init__()
            self.size = [int(size[0]), int(size[1])]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x[None], size=self.size, mode="bilinear",
                                 align_corners=False, antialias=True)[0]

    class Normalize(nn.Module):
        def __init__(self, mean, std):
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32)[:, None, None])
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32)[:, None, None])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x - self.mean) / self.std

    pkg = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    transforms.ToTensor, transforms.Resize, transforms.Normalize = ToTensor, Resize, Normalize
    pkg.transforms = transforms
    sys.modules["torchvision"] = pkg
    sys.modules["torchvision.transforms"] = transforms
