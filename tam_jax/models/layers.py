"""Building blocks shared by every module: layers whose parameters carry logical axis names.

Conventions (architecture.md §1.5, §3):
- Parameters are float32; `dtype` is the compute dtype (float32 for parity, bfloat16 for training).
- Every parameter is created through `nn.with_logical_partitioning`, so a rules table can shard
  it (`tam_jax/sharding.py`). Logical names used across the model:
    "embed"     ViT width (192 / 384)              "mlp"      hidden width of MLPs
    "qkv"       fused q|k|v output of the ViT      "hidden"   SAM-side width d_model (256)
    "mem"       memory-feature width (64)          "conv_in" / "conv_out"  conv channels
    "norm"      LayerNorm scale / bias             None       replicated (kernel spatial dims)
- Names of submodules mirror the PyTorch attribute names so the converter's key table stays a
  table: PyTorch `a.b.0.c` <-> Flax `a/b_0/c`.
- Activation: `gelu` is the exact erf form (PyTorch `nn.GELU()`), never the tanh approximation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Axes = tuple[str | None, ...]

# PyTorch's default Linear / Conv init is kaiming-uniform(a=sqrt(5)); any sane init works for
# training from scratch, parity tests always load converted weights.
_kernel_init = nn.initializers.lecun_normal()


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, as PyTorch `nn.GELU()` (spec §11.3)."""
    return jax.nn.gelu(x, approximate=False)


def compute_dtype(name: str) -> jnp.dtype:
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def dense(
    features: int,
    axes: Axes,
    name: str,
    use_bias: bool = True,
    dtype: jnp.dtype = jnp.float32,
) -> nn.Dense:
    """Linear layer; `axes` names the kernel's (in, out) dims. Bias gets axes[-1]."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(_kernel_init, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[-1],)),
        name=name,
    )


def conv(
    features: int,
    kernel_size: int,
    name: str,
    stride: int = 1,
    padding: int = 0,
    use_bias: bool = True,
    groups: int = 1,
    axes: Axes = (None, None, "conv_in", "conv_out"),
    dtype: jnp.dtype = jnp.float32,
) -> nn.Conv:
    """Conv2d on NHWC with PyTorch-style symmetric integer padding. Kernel HWIO."""
    return nn.Conv(
        features,
        kernel_size=(kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        feature_group_count=groups,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(_kernel_init, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[-1],)),
        name=name,
    )


def conv_transpose(
    features: int, kernel_size: int, stride: int, name: str, dtype: jnp.dtype = jnp.float32
) -> nn.ConvTranspose:
    """ConvTranspose2d (PyTorch semantics, padding 0) on NHWC.

    `transpose_kernel=True` makes Flax compute exactly PyTorch's transposed conv; the kernel is
    stored as (kh, kw, out, in) = torch weight (in, out, kh, kw).transpose(2, 3, 1, 0) (spec §11.2).
    """
    return nn.ConvTranspose(
        features,
        kernel_size=(kernel_size, kernel_size),
        strides=(stride, stride),
        padding="VALID",
        transpose_kernel=True,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(_kernel_init, (None, None, "conv_out", "conv_in")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
        name=name,
    )


def layer_norm(name: str, eps: float, dtype: jnp.dtype = jnp.float32) -> nn.LayerNorm:
    """LayerNorm over the last axis. Also PyTorch's LayerNorm2d on NHWC tensors.

    Statistics are computed in float32 whatever the compute dtype.
    """
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        param_dtype=jnp.float32,
        use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
        name=name,
    )


def param(
    module: nn.Module,
    name: str,
    shape: Sequence[int],
    axes: Axes,
    init: nn.initializers.Initializer | None = None,
) -> jax.Array:
    """A free-standing float32 parameter (tokens, embeddings) with logical axis names."""
    init = init or nn.initializers.normal(stddev=0.02)
    return module.param(name, nn.with_logical_partitioning(init, axes), tuple(shape), jnp.float32)


class MLP(nn.Module):
    """`sam2_utils.MLP`: `num_layers` Linear layers named `layers_i`, ReLU (or `activation`)
    between them.

    Used by the IoU / object-score heads, hypernetworks, object-pointer projection and the
    two-way transformer MLP. `sigmoid_output` applies a sigmoid on the last layer (IoU head).
    """

    hidden_dim: int
    output_dim: int
    num_layers: int
    sigmoid_output: bool = False
    in_axis: str = "hidden"
    hidden_axis: str = "mlp"
    out_axis: str = "hidden"
    dtype: jnp.dtype = jnp.float32
    activation: Callable[[jax.Array], jax.Array] = jax.nn.relu

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            features = self.output_dim if last else self.hidden_dim
            axes = (self.in_axis if i == 0 else self.hidden_axis,
                    self.out_axis if last else self.hidden_axis)
            x = dense(features, axes, name=f"layers_{i}", dtype=self.dtype)(x)
            if not last:
                x = self.activation(x)
        if self.sigmoid_output:
            x = jax.nn.sigmoid(x)
        return x
