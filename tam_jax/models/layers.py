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
- Matmul precision (`EfficientTAMConfig.matmul_precision`): every matmul and convolution of the
  model goes through `dot_general` / `einsum` / `Conv2d` here, which read the precision set by
  `matmul_precision(...)` *when traced*. "float32" (default, parity) leaves float32 operands
  as they are; "bfloat16" rounds float32 operands to bfloat16 and accumulates and returns
  float32, as a TPU's default precision does; on a CPU with AVX512-BF16 XLA runs such dots at
  ~2x the float32 rate. `EfficientTAM` enters the context from its config in every method,
  so a jitted function keyed on the config can never reuse a trace of the other precision.
  Not rounded: `conv_transpose`'s "xla" path (Flax's ConvTranspose, the mask decoder's
  upscaling on TPU / GPU), depthwise convolutions under "matmul" (elementwise, no matmul).
"""

from __future__ import annotations

import contextlib
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


MATMUL_PRECISIONS = ("float32", "bfloat16")
_matmul_precision = "float32"  # what the model's matmuls trace with (see the module docstring)


@contextlib.contextmanager
def matmul_precision(name: str):
    """Trace the model's matmuls / convolutions inside with precision `name` (module doc)."""
    global _matmul_precision
    if name not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul_precision must be one of {MATMUL_PRECISIONS}, not {name!r}")
    saved, _matmul_precision = _matmul_precision, name
    try:
        yield
    finally:
        _matmul_precision = saved


def matmul_operands(*xs: jax.Array) -> tuple[jax.Array, ...]:
    """The arrays as the traced precision feeds them to a matmul: under "bfloat16", float32
    ones rounded to bfloat16 (e.g. attention's q / k / v, rounded once before a loop over
    query chunks instead of once per chunk); else unchanged."""
    if _matmul_precision != "bfloat16":
        return xs
    return tuple(x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x for x in xs)


def _matmul_operands(lhs: jax.Array, rhs: jax.Array, preferred_element_type):
    """`matmul_operands` of a pair, and the result type to request: float32 (the operands'
    type before rounding) unless the caller asked for one."""
    out = preferred_element_type
    if out is None and _matmul_precision == "bfloat16" and jnp.float32 in (lhs.dtype, rhs.dtype):
        out = jnp.float32
    return (*matmul_operands(lhs, rhs), out)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                **kwargs) -> jax.Array:
    """`lax.dot_general` at the traced matmul precision (what every `dense` layer calls)."""
    lhs, rhs, out = _matmul_operands(lhs, rhs, preferred_element_type)
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=out, **kwargs)


def einsum(spec: str, lhs: jax.Array, rhs: jax.Array, preferred_element_type=None) -> jax.Array:
    """Two-operand `jnp.einsum` at the traced matmul precision."""
    lhs, rhs, out = _matmul_operands(lhs, rhs, preferred_element_type)
    return jnp.einsum(spec, lhs, rhs, preferred_element_type=out)


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
        dot_general=dot_general,
        name=name,
    )


ConvImpl = str  # "xla" (lax.conv_general_dilated) or "matmul" (slices + one matmul)
CONV_IMPLS = ("xla", "matmul")


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
    impl: ConvImpl = "xla",
) -> Conv2d:
    """Conv2d on NHWC with PyTorch-style symmetric integer padding. Kernel HWIO.

    `impl` ("xla" / "matmul", the model config's `conv_impl`) picks how it is computed; the
    parameters and the result are the same either way (see `Conv2d`)."""
    return Conv2d(features, kernel_size, stride, padding, groups, use_bias, axes, dtype, impl,
                  name=name)


class Conv2d(nn.Module):
    """Conv2d, NHWC in / out, kernel (k, k, Cin / groups, Cout) + bias: the params of `nn.Conv`.

    impl "xla": one `lax.conv_general_dilated` (the right choice on TPU / GPU).
    impl "matmul": the k x k strided slices of the padded input concatenated on the channel
    axis (im2col without a convolution op), then one matmul with the kernel reshaped to
    (k * k * Cin, Cout); a depthwise conv (groups == Cin == Cout) is the sum of k * k shifted
    slices times a per-channel weight. Why: XLA:CPU runs the *weight gradient* of a
    convolution through a slow generic path (measured 1.7 s for the 7 x 7 depthwise kernel
    gradient of one tiny-variant memory-encoder call, about 60 % of a CPU train step), while
    slices, matmuls and their transposes are fast. Same sums in a different order: results
    agree to float rounding (tests/test_conv_impl.py).
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    use_bias: bool = True
    axes: Axes = (None, None, "conv_in", "conv_out")
    dtype: jnp.dtype = jnp.float32
    impl: ConvImpl = "xla"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s, p, g = self.kernel_size, self.stride, self.padding, self.groups
        lead, x = x.shape[:-3], x.reshape((-1,) + x.shape[-3:])  # any leading batch dims
        cin = x.shape[-1]
        if cin % g or self.features % g:
            raise ValueError(f"{self.name}: channels {cin} -> {self.features} not divisible "
                             f"by groups {g}")
        kernel = self.param("kernel", nn.with_logical_partitioning(_kernel_init, self.axes),
                            (k, k, cin // g, self.features), jnp.float32)
        x = x.astype(self.dtype)
        w = kernel.astype(self.dtype)
        if self.impl == "xla":
            xo, wo, out = _matmul_operands(x, w, None)
            y = jax.lax.conv_general_dilated(
                xo, wo, (s, s), ((p, p), (p, p)), feature_group_count=g,
                dimension_numbers=("NHWC", "HWIO", "NHWC"), preferred_element_type=out)
        elif self.impl == "matmul":
            y = _conv_by_slices(x, w, s, p, g, self.name)
        else:
            raise ValueError(f"conv impl must be one of {CONV_IMPLS}, not {self.impl!r}")
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(
                nn.initializers.zeros_init(), (self.axes[-1],)), (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y.reshape(lead + y.shape[1:])


def _shifted_slices(x: jax.Array, k: int, s: int, p: int) -> tuple[list[jax.Array], int, int]:
    """The k * k views x_pad[:, dy::s, dx::s] (dy, dx row-major) of output size (Ho, Wo)."""
    n, h, w, c = x.shape
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    if p:
        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    views = [
        jax.lax.slice(x, (0, dy, dx, 0), (n, dy + s * (ho - 1) + 1, dx + s * (wo - 1) + 1, c),
                      (1, s, s, 1))
        for dy in range(k) for dx in range(k)
    ]
    return views, ho, wo


def _conv_by_slices(x: jax.Array, w: jax.Array, s: int, p: int, groups: int,
                    name: str) -> jax.Array:
    """`Conv2d`'s "matmul" path. x (N, H, W, Cin), w (k, k, Cin / groups, Cout)."""
    k, _, cin_g, cout = w.shape
    cin = x.shape[-1]
    if k == s and p == 0 and groups == 1 and x.shape[1] % k == 0 and x.shape[2] % k == 0:
        # non-overlapping patches (patch embeddings, 2x2 / 4x4 downscaling): a reshape
        n, h, wd, _ = x.shape
        x = x.reshape(n, h // k, k, wd // k, k, cin).transpose(0, 1, 3, 2, 4, 5)
        return einsum("nhwijc,ijco->nhwo", x, w)
    views, ho, wo = _shifted_slices(x, k, s, p)
    if groups == 1:
        cols = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
        return einsum("nhwc,co->nhwo", cols, w.reshape(k * k * cin, cout))
    if groups == cin == cout and cin_g == 1:  # depthwise
        taps = w.reshape(k * k, cout)
        y = views[0] * taps[0]
        for i in range(1, len(views)):
            y = y + views[i] * taps[i]
        return y
    raise NotImplementedError(f"{name}: conv impl 'matmul' supports groups 1 or depthwise, "
                              f"not groups={groups} with {cin} -> {cout} channels")


def conv_transpose(
    features: int, kernel_size: int, stride: int, name: str, dtype: jnp.dtype = jnp.float32,
    impl: ConvImpl = "xla",
) -> nn.Module:
    """ConvTranspose2d (PyTorch semantics, padding 0) on NHWC.

    `transpose_kernel=True` makes Flax compute exactly PyTorch's transposed conv; the kernel is
    stored as (kh, kw, out, in) = torch weight (in, out, kh, kw).transpose(2, 3, 1, 0) (spec §11.2).
    impl "matmul" (kernel == stride only, as every use in the model): one matmul per input
    pixel to its k x k output block, then a depth-to-space reshape (see `Conv2d` for why).
    """
    if impl == "matmul":
        if kernel_size != stride:
            raise NotImplementedError(f"{name}: conv impl 'matmul' needs kernel == stride")
        return PatchConvTranspose(features, kernel_size, dtype, name=name)
    if impl != "xla":
        raise ValueError(f"conv impl must be one of {CONV_IMPLS}, not {impl!r}")
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


class PatchConvTranspose(nn.Module):
    """ConvTranspose2d with kernel == stride = k, padding 0 (the params of `conv_transpose`):
    out[n, k*y + i, k*x + j, o] = sum_c in[n, y, x, c] * kernel[i, j, o, c] + bias[o]
    (what Flax computes with transpose_kernel=True and this kernel layout)."""

    features: int
    kernel_size: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, lead = self.kernel_size, x.shape[:-3]
        x = x.reshape((-1,) + x.shape[-3:])
        n, h, w, cin = x.shape
        axes = (None, None, "conv_out", "conv_in")
        kernel = self.param("kernel", nn.with_logical_partitioning(_kernel_init, axes),
                            (k, k, self.features, cin), jnp.float32)
        bias = self.param("bias", nn.with_logical_partitioning(
            nn.initializers.zeros_init(), ("conv_out",)), (self.features,), jnp.float32)
        kernel = kernel.astype(self.dtype)
        y = einsum("nhwc,ijoc->nhiwjo", x.astype(self.dtype), kernel)
        y = y.reshape(lead + (h * k, w * k, self.features))
        return y + bias.astype(self.dtype)


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
