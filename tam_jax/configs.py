"""Model configurations: the 8 released EfficientTAM variants plus tiny variants for tests.

One frozen dataclass tree. Every field that changes computation in the official model
(`efficienttam_spec.md` §7, the EfficientTAM YAML and `SAM2Base` flags) is here, with the
official value as default. The pooled memory cross-attention (paper §3.2, eq. 5 / eq. 6) is
configurable beyond the two official classes, for the ablation sweeps:

    pool_window          1 (no pooling: `RoPEAttention`), 2 (official `_1` / `_2`), 4, ...
    log_area_constant    "logits" (eq. 5, `EfficientRoPEAttention1`),
                         "keys"   (eq. 6, `EfficientRoPEAttention2`),
                         "none"   (Linformer-style, paper Table 4)
    pool_pointer_tokens  False (official) / True (paper ablation "pool all memory tokens")

Use `get_config(name)` to look a variant up, and `dataclasses.replace` (or `override`) to change
fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

LogAreaConstant = Literal["logits", "keys", "none"]
ComputeDtype = Literal["float32", "bfloat16"]
ConvImpl = Literal["xla", "matmul"]
MatmulPrecision = Literal["float32", "bfloat16"]
REMAT_POLICIES = ("none", "full", "dots")


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Plain ViTDet trunk (`backbones/vitdet.py`), spec §2.1."""

    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    patch_size: int = 16
    window_size: int = 14
    # Blocks that attend globally; all other blocks use windowed attention.
    global_att_blocks: tuple[int, ...] = (2, 5, 8, 11)
    # The learned pos-embed grid (pretrain 224 px / 16 = 14) with a leading, unused cls slot.
    pretrain_grid: int = 14
    layer_norm_eps: float = 1e-6
    # Rematerialisation of each block in training (`nn.remat`): "none" keeps every activation,
    # "full" recomputes the whole block in the backward pass (saves only its input),
    # "dots" keeps matmul outputs without batch dims and recomputes the rest (softmax, GELU,
    # norms). Changes memory and speed only, never the result.
    remat: str = "none"

    @property
    def window_block_indexes(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.depth) if i not in self.global_att_blocks)


@dataclasses.dataclass(frozen=True)
class MemoryCrossAttentionConfig:
    """The memory cross-attention of each memory-attention layer, spec §3 / §3.2."""

    pool_window: int = 1
    log_area_constant: LogAreaConstant = "logits"
    pool_pointer_tokens: bool = False

    @property
    def official_class(self) -> str:
        if self.pool_window == 1:
            return "RoPEAttention"
        if self.pool_window == 2 and not self.pool_pointer_tokens:
            return {"logits": "EfficientRoPEAttention1", "keys": "EfficientRoPEAttention2"}.get(
                self.log_area_constant, "(none)"
            )
        return "(none)"


@dataclasses.dataclass(frozen=True)
class MemoryAttentionConfig:
    """The memory attention stack (`memory_attention.py`), spec §3."""

    d_model: int = 256
    num_layers: int = 4
    num_heads: int = 1
    dim_feedforward: int = 2048
    kv_in_dim: int = 64
    rope_theta: float = 10000.0
    pos_enc_at_input: bool = True
    layer_norm_eps: float = 1e-5
    dropout: float = 0.1
    cross_attention: MemoryCrossAttentionConfig = MemoryCrossAttentionConfig()


@dataclasses.dataclass(frozen=True)
class MemoryEncoderConfig:
    """Mask downsampler + CXBlock fuser (`memory_encoder.py`), spec §4.1."""

    out_dim: int = 64
    downsampler_kernel: int = 3
    downsampler_stride: int = 2
    downsampler_padding: int = 1
    fuser_layers: int = 2
    fuser_kernel: int = 7
    fuser_hidden_ratio: int = 4


@dataclasses.dataclass(frozen=True)
class MaskDecoderConfig:
    """Prompt encoder + two-way mask decoder (`sam/`), spec §5."""

    transformer_depth: int = 2
    transformer_heads: int = 8
    transformer_mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16
    layer_norm_eps: float = 1e-5
    # Turned on by both official builders (apply_postprocessing=True).
    dynamic_multimask_via_stability: bool = True
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98


@dataclasses.dataclass(frozen=True)
class EfficientTAMConfig:
    """A whole EfficientTAM model. Defaults are `efficienttam_s` (spec §1, §7)."""

    name: str = "efficienttam_s"
    image_size: int = 1024
    vit: ViTConfig = ViTConfig()
    hidden_dim: int = 256  # neck / SAM-head width (d_model)
    memory_attention: MemoryAttentionConfig = MemoryAttentionConfig()
    memory_encoder: MemoryEncoderConfig = MemoryEncoderConfig()
    mask_decoder: MaskDecoderConfig = MaskDecoderConfig()

    # --- SAM2Base flags (values of the EfficientTAM YAML) ---
    num_maskmem: int = 7
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    use_mask_input_as_output_without_sam: bool = True
    directly_add_no_mem_embed: bool = True
    multimask_output_in_sam: bool = True
    multimask_min_pt_num: int = 0
    multimask_max_pt_num: int = 1
    multimask_output_for_tracking: bool = True
    use_multimask_token_for_obj_ptr: bool = True
    iou_prediction_use_sigmoid: bool = True
    use_obj_ptrs_in_encoder: bool = True
    max_obj_ptrs_in_encoder: int = 16
    only_obj_ptrs_in_the_past_for_eval: bool = True
    pred_obj_scores: bool = True
    pred_obj_scores_mlp: bool = True
    fixed_no_obj_ptr: bool = True
    soft_no_obj_ptr: bool = False
    use_mlp_for_obj_ptr_proj: bool = True
    memory_temporal_stride_for_eval: int = 1
    max_cond_frames_in_attn: int = -1
    # Set by the official video builder (apply_postprocessing=True).
    binarize_mask_from_pts_for_mem_enc: bool = True
    # The video predictor stores memory features in bfloat16 even in float32 runs (spec §4.1).
    round_memory_to_bf16: bool = True

    # --- numerics ---
    compute_dtype: ComputeDtype = "float32"
    # How convolutions run (same params, same results to float rounding): "xla" (one conv op;
    # TPU / GPU) or "matmul" (slices + matmul; several times faster to *train* on CPU, whose
    # XLA conv weight gradients are slow). See `models.layers.Conv2d`.
    conv_impl: ConvImpl = "xla"
    # Operands of the model's matmuls and convolutions: "float32" (the official numerics, what
    # parity tests use) or "bfloat16" (float32 operands rounded to bf16, float32 accumulation and
    # activations, as a TPU's default precision; 1.3-1.7x faster tracking on a CPU with
    # AVX512-BF16, masks agreeing with float32 on >= 99 % of pixels). See `models.layers`,
    # docs/benchmarks.md ("bf16 matmul operands").
    matmul_precision: MatmulPrecision = "float32"
    # Attention over >= 2048 keys (the memory cross-attention) loops over its batch (objects)
    # instead of one batched dot: same result, faster on XLA:CPU (the video predictor turns it
    # on there); TPU / GPU keep the batched dot. See `models.attention.BATCH_LOOP_MIN_KEYS`.
    attention_batch_loop: bool = False

    @property
    def feat_size(self) -> int:
        """Side of the backbone feature grid (64 at 1024 px, 32 at 512 px)."""
        return self.image_size // self.vit.patch_size

    @property
    def low_res_mask_size(self) -> int:
        """Side of the SAM decoder's low-resolution logits (256 at 1024 px)."""
        return self.feat_size * 4

    @property
    def mem_dim(self) -> int:
        return self.memory_encoder.out_dim

    def validate(self) -> EfficientTAMConfig:
        """Raise ValueError for combinations the released weights cannot compute."""
        errors = []
        if self.image_size % self.vit.patch_size:
            errors.append(f"image_size {self.image_size} is not a multiple of the patch size")
        if any(b >= self.vit.depth or b < 0 for b in self.vit.global_att_blocks):
            errors.append(f"global_att_blocks {self.vit.global_att_blocks} outside depth")
        ca = self.memory_attention.cross_attention
        if ca.pool_window < 1:
            errors.append("memory cross-attention pool_window must be >= 1")
        elif self.feat_size % ca.pool_window:
            errors.append(
                f"pool_window {ca.pool_window} does not divide the feature grid {self.feat_size}"
            )
        if ca.log_area_constant not in ("logits", "keys", "none"):
            errors.append(f"unknown log_area_constant {ca.log_area_constant!r}")
        if self.hidden_dim % self.mem_dim:
            errors.append("hidden_dim must be a multiple of the memory dim (pointer split)")
        if self.num_maskmem < 1:
            errors.append("num_maskmem must be >= 1")
        if self.vit.remat not in REMAT_POLICIES:
            errors.append(f"vit.remat must be one of {REMAT_POLICIES}, not {self.vit.remat!r}")
        if self.compute_dtype not in ("float32", "bfloat16"):
            errors.append(f"compute_dtype must be float32 or bfloat16, not {self.compute_dtype}")
        if self.conv_impl not in ("xla", "matmul"):
            errors.append(f"conv_impl must be xla or matmul, not {self.conv_impl!r}")
        if self.matmul_precision not in ("float32", "bfloat16"):
            errors.append(f"matmul_precision must be float32 or bfloat16, "
                          f"not {self.matmul_precision!r}")
        if errors:
            raise ValueError(f"invalid config {self.name!r}: " + "; ".join(errors))
        return self


def _vit_ti() -> ViTConfig:
    return ViTConfig(embed_dim=192, num_heads=3)


def _vit_s() -> ViTConfig:
    return ViTConfig(embed_dim=384, num_heads=6)


def _with_cross(window: int, constant: LogAreaConstant) -> MemoryAttentionConfig:
    return MemoryAttentionConfig(
        cross_attention=MemoryCrossAttentionConfig(pool_window=window, log_area_constant=constant)
    )


def _released() -> dict[str, EfficientTAMConfig]:
    out = {}
    for width, vit in (("ti", _vit_ti()), ("s", _vit_s())):
        out[f"efficienttam_{width}"] = EfficientTAMConfig(name=f"efficienttam_{width}", vit=vit)
        out[f"efficienttam_{width}_1"] = EfficientTAMConfig(
            name=f"efficienttam_{width}_1", vit=vit, memory_attention=_with_cross(2, "logits")
        )
        out[f"efficienttam_{width}_2"] = EfficientTAMConfig(
            name=f"efficienttam_{width}_2", vit=vit, memory_attention=_with_cross(2, "keys")
        )
        out[f"efficienttam_{width}_512x512"] = EfficientTAMConfig(
            name=f"efficienttam_{width}_512x512", vit=vit, image_size=512
        )
    return out


def _tiny() -> dict[str, EfficientTAMConfig]:
    """Small, fast variants for unit tests and CPU demos. Same structure, tiny widths."""
    vit = ViTConfig(
        embed_dim=32, depth=4, num_heads=2, window_size=4, global_att_blocks=(1, 3), pretrain_grid=6
    )
    mem_attn = MemoryAttentionConfig(
        d_model=64, num_layers=2, dim_feedforward=128, kv_in_dim=16,
        cross_attention=MemoryCrossAttentionConfig(pool_window=2, log_area_constant="logits"),
    )
    base = EfficientTAMConfig(
        name="tiny",
        image_size=128,
        vit=vit,
        hidden_dim=64,
        memory_attention=mem_attn,
        memory_encoder=MemoryEncoderConfig(out_dim=16),
        mask_decoder=MaskDecoderConfig(
            transformer_heads=4, transformer_mlp_dim=128, iou_head_hidden_dim=64, mask_in_chans=8
        ),
    )
    full = dataclasses.replace(base, name="tiny_full", memory_attention=dataclasses.replace(
        mem_attn, cross_attention=MemoryCrossAttentionConfig(pool_window=1)))
    return {"tiny": base, "tiny_full": full}


RELEASED_VARIANTS: tuple[str, ...] = tuple(_released())
TEST_VARIANTS: tuple[str, ...] = tuple(_tiny())
_ALL = {**_released(), **_tiny()}


def get_config(name: str, **overrides: Any) -> EfficientTAMConfig:
    """Return the named variant, with top-level field overrides applied and validated."""
    if name not in _ALL:
        raise KeyError(
            f"unknown EfficientTAM variant {name!r}; known: {', '.join(sorted(_ALL))}"
        )
    cfg = _ALL[name]
    if overrides:
        cfg = override(cfg, overrides)
    return cfg.validate()


def for_training(cfg: EfficientTAMConfig) -> EfficientTAMConfig:
    """The config of the same model in training mode: every place where the official model
    checks `self.training` (or the video predictor adds eval-only post-processing) as flags.

    - object pointers of future conditioning frames are attended too
      (`only_obj_ptrs_in_the_past_for_eval` is eval-only);
    - masks from clicks enter the memory encoder as sigmoid, not binarised
      (`binarize_mask_from_pts_for_mem_enc` is applied only when not training);
    - memory features are kept in the compute dtype (the bf16 rounding is the predictor's);
    - a single-mask output is mask 0, without the stability fallback
      (`dynamic_multimask_via_stability` is eval-only).
    Dropout in the memory attention is switched on by the caller (`deterministic=False`).
    """
    return override(cfg, {"only_obj_ptrs_in_the_past_for_eval": False,
                          "binarize_mask_from_pts_for_mem_enc": False,
                          "round_memory_to_bf16": False,
                          "mask_decoder.dynamic_multimask_via_stability": False})


def override(cfg: Any, dotted: Mapping[str, Any]) -> Any:
    """Apply dotted overrides, e.g. {"memory_attention.cross_attention.pool_window": 4}.

    Raises KeyError for a key that is not a field, TypeError for a value of the wrong type.
    """
    for key, value in dotted.items():
        head, _, rest = key.partition(".")
        fields = {f.name: f for f in dataclasses.fields(cfg)}
        if head not in fields:
            raise KeyError(f"{type(cfg).__name__} has no field {head!r} (override {key!r})")
        current = getattr(cfg, head)
        if rest:
            value = override(current, {rest: value})
        elif dataclasses.is_dataclass(current):
            raise TypeError(f"override {key!r} must name a leaf field, not a section")
        elif isinstance(current, bool) != isinstance(value, bool) or (
            not isinstance(value, type(current))
            and not (isinstance(current, float) and isinstance(value, int))
            and not (isinstance(current, tuple) and isinstance(value, list))
        ):
            raise TypeError(
                f"override {key!r}: expected {type(current).__name__}, got {type(value).__name__}"
            )
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        cfg = dataclasses.replace(cfg, **{head: value})
    return cfg
