"""Convolutions with a backward pass written as matrix products, for XLA:CPU.

Why (measured on 2 AMD EPYC cores, benchmarks/README.md): XLA:CPU runs a convolution's
forward pass and input gradient at 100-130 GFLOP/s, within ~20% of PyTorch, but its
kernel gradient (a convolution with batch and feature dimensions swapped, whose
contraction dimension is the batch of 2) at a third of that. Three more XLA:CPU habits
cost time in a ResNet step, and this module works around each:
- the kernel gradient of a matmul (x^T dy) contracts the pixel axis, the major axis of
  both operands; XLA then transposes one operand in a loop fused with its elementwise
  producer, ~7x slower than a plain transpose (`transposed`);
- it duplicates cheap elementwise producers into every consumer, so along a ResNet
  stage's residual stream each block re-evaluated all earlier blocks' BN + add + ReLU
  (`materialize`);
- it concatenates many slabs slowly (< 1 GB/s), so im2col patches stay separate taps.

`conv2d(x, kernel, stride, dilation, padding)` equals
`lax.conv_general_dilated(x, kernel, (s, s), ((p, p), (p, p)), rhs_dilation=(d, d))` on
NHWC / HWIO arrays up to summation order (a `jax.custom_vjp`):

  forward         y   = conv(x, W')                      XLA's convolution
  input grad      dx  = conv_transpose(dy, W')           XLA's, or with the activations
                                                         flipped (`input_grad`)
  kernel grad     dW_t = (dy^T [Cout, K] . tap_t(x) [K, Cin])^T  k*k matmuls, K = B*Ho*Wo
                  (stride 1, Cout < Cin: shift_t(dy) against x instead, `kernel_grad`)

W' is W without the taps that read only zero padding (`conv2d`; e.g. large dilations on a
small map); where no tap is dropped the forward values are XLA's, bit for bit. Where many
tap products would read padding (the ASPP branches' dilations 12-24 on a 33x65 map), the
convolution is a sum of 1 x k parts, one per kernel row over the rows it reads
(`_conv_stride1`): those products are skipped in all three passes.
tap_t(x) is tap t = (i, j) of the zero-padded input: rows i*d + s*r, columns j*d + s*c
for output pixel (r, c), a strided slice. Any stride and dilation works.
`dense(x, kernel)` is the same idea for 1x1 convolutions (layers.Conv1x1).

Model switch: `model.conv_impl` ('auto' | 'xla' | 'im2col', configs/common.py). 'xla' is
the standard graph (nn.Conv, einsum); 'im2col' uses this module; 'auto' is 'im2col' on
CPU and 'xla' on GPU/TPU, whose numerics and graph stay untouched. Parameters are the
same either way (`PatchConv` has nn.Conv's `kernel` and `bias`).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ('auto', 'xla', 'im2col')


def check_conv_impl(impl: str) -> str:
  if impl not in CONV_IMPLS:
    raise ValueError(f'Unknown model.conv_impl {impl!r}; valid: {", ".join(CONV_IMPLS)}.')
  return impl


def resolve_conv_impl(impl: str) -> str:
  """'auto' -> 'im2col' on CPU, 'xla' on accelerators; 'xla' and 'im2col' pass through."""
  if check_conv_impl(impl) == 'auto':
    return 'im2col' if jax.default_backend() == 'cpu' else 'xla'
  return impl


# --- XLA:CPU workarounds ------------------------------------------------------------------
def stored(x: jax.Array, after: jax.Array | None = None) -> jax.Array:
  """`x` bit for bit, as a value XLA:CPU computes once and keeps in memory; with `after`,
  also one it cannot compute before `after` exists.

  XLA:CPU duplicates cheap elementwise producers into each consumer, and drops
  optimisation barriers before fusing; it never duplicates a float division. Dividing by
  a runtime 1.0, which the compiler cannot fold (0 * y[0] is not simplified for floats),
  is exact. (If that element is inf or NaN the result is all NaN; such a step is
  rejected by the train step's finite-loss check anyway.) No gradient enters the divisor.
  With the batch sharded over several CPU devices the scalar comes from the first shard
  (a broadcast of one element per call); reading it per batch row instead avoids that
  but made the 128x256 DeepLabV2-R101 supervised step 6% slower (3.09 vs 2.91 s,
  alternating, load ~4), so the scalar stays: accelerators take the 'xla' path and never
  run this.
  """
  source = x if after is None else after
  one = lax.stop_gradient(1.0 + 0.0 * source.reshape(-1)[0].astype(x.dtype))
  return x / one


def materialize(x: jax.Array, impl: str) -> jax.Array:
  """A ResNet block's output, stored rather than re-evaluated by later blocks.

  Without it XLA:CPU fused the residual stream of a stage into each consumer: one fusion
  of DeepLabV2-R101 held all 23 ReLUs of layer3, ~7 evaluations per ReLU in all. Only on
  the CPU path (`impl` resolving to 'im2col'); accelerators keep their graph.
  """
  if resolve_conv_impl(impl) == 'xla':
    return x
  return stored(x)


def transposed(x2: jax.Array) -> jax.Array:
  """[K, C] -> [C, K] from a stored copy of `x2`: a plain transpose, which XLA:CPU runs as
  a tiled copy. Left alone, XLA fuses the elementwise producer into a strided transposing
  loop, ~7x slower (38 vs 5.8 ms for 17.6 MB here)."""
  return stored(x2).T


# --- k x k convolution ----------------------------------------------------------------------
# Internally a kernel is kh x kw with zero padding per side, pads = ((top, bottom), (left,
# right)): `conv2d` crops square kernels to the taps that read real pixels (below).
Pads = tuple[tuple[int, int], tuple[int, int]]


def _out_size(n: int, k: int, stride: int, dilation: int, pad: int) -> int:
  return (n + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def _symmetric(padding: int) -> Pads:
  return ((padding, padding), (padding, padding))


def xla_conv(x, kernel, stride: int, dilation: int, pads: Pads, lhs_dilation: int = 1):
  """lax.conv_general_dilated, NHWC / HWIO, zero padding per side."""
  return lax.conv_general_dilated(x, kernel, (stride, stride), pads,
                                  lhs_dilation=(lhs_dilation, lhs_dilation),
                                  rhs_dilation=(dilation, dilation),
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def taps(x: jax.Array, kernel_hw: tuple[int, int], stride: int, dilation: int, pads: Pads,
         out_hw: tuple[int, int]) -> list[jax.Array]:
  """The kh*kw shifted views of the zero-padded input, each [B, Ho, Wo, C], (row, col)
  order.

  Tap (i, j) holds the padded input at rows i*d + s*r and columns j*d + s*c of output pixel
  (r, c): a strided slice. They stay separate: XLA:CPU's concatenate of 9 slabs ran at
  < 1 GB/s, slower than the 9 matmuls that follow.
  """
  ho, wo = out_hw
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  out = []
  for i in range(kernel_hw[0]):
    for j in range(kernel_hw[1]):
      r0, c0 = i * dilation, j * dilation
      out.append(lax.slice(
          xp, (0, r0, c0, 0),
          (xp.shape[0], r0 + stride * (ho - 1) + 1, c0 + stride * (wo - 1) + 1, xp.shape[3]),
          (1, stride, stride, 1)))
  return out


def shifted_cotangents(dy: jax.Array, kernel_hw: tuple[int, int], dilation: int, pads: Pads,
                       in_hw: tuple[int, int]) -> list[jax.Array]:
  """For a stride-1 convolution, the kh*kw views of dy [B, Ho, Wo, Cout] aligned with the
  input, each [B, H, W, Cout], (row, col) order: view (i, j) at input pixel q holds dy at
  output pixel q + (top, left) - (i, j)*d, zero where that pixel does not exist (one pad
  or crop of dy: `lax.pad` takes negative padding)."""
  (top, _), (left, _) = pads
  (h, w), (ho, wo) = in_hw, dy.shape[1:3]
  out = []
  for i in range(kernel_hw[0]):
    for j in range(kernel_hw[1]):
      r0, c0 = i * dilation - top, j * dilation - left
      out.append(lax.pad(dy, jnp.zeros((), dy.dtype),
                         ((0, 0, 0), (r0, h - ho - r0, 0), (c0, w - wo - c0, 0), (0, 0, 0))))
  return out


def _pixel_contraction(a2: jax.Array, b2: jax.Array) -> jax.Array:
  """a2^T b2 for [K, M] and [K, N]: both operands as they are, the pixel axis K contracted
  (the dot takes the transposed operand itself; explicit transposes measured no faster)."""
  return lax.dot_general(a2, b2, (((0,), (0,)), ((), ())))


def kernel_grad(x, dy, kernel_hw: tuple[int, int], stride: int, dilation: int, pads: Pads):
  """dW [kh, kw, Cin, Cout]: per tap t, the sum over output pixels of tap_t(x)^T dy.

  x: [B, H, W, Cin]; dy: [B, Ho, Wo, Cout]. k*k matmuls over the pixel axis, with the k*k
  shifted copies made of the narrower operand: the taps of the input (`taps`),
  dW_t^T = dy^T tap_t(x); or, with stride 1 and Cout < Cin (the ASPP branches, 2048 ->
  256), the same sum indexed by input pixel, dW_t^T = shift_t(dy)^T x
  (`shifted_cotangents`): at 256x512 the 9 copies of a branch's input (35 MB each)
  become 9 copies of its dy (4.4 MB each).
  """
  cout, cin = dy.shape[-1], x.shape[-1]
  kh, kw = kernel_hw
  if stride == 1 and 16 <= cout < cin:
    x2 = x.reshape(-1, cin)
    grads = [_pixel_contraction(view.reshape(-1, cout), x2)
             for view in shifted_cotangents(dy, kernel_hw, dilation, pads, x.shape[1:3])]
    return jnp.stack(grads).reshape(kh, kw, cout, cin).transpose(0, 1, 3, 2)
  # Taps depend on x only, so XLA scheduled them early, holding k*k copies of every
  # layer's input through the backward pass (+40% temporary memory); tied to dy they
  # are made when this layer's gradient is.
  x = stored(x, after=dy)
  tap_list = taps(x, kernel_hw, stride, dilation, pads, dy.shape[1:3])
  if cin < 16:
    # Few input channels (the RGB stem): k*k matmuls of width Cin waste the matmul
    # kernel; one over the concatenated taps [K, k*k*Cin] is faster (54 vs 133 ms for the
    # 7x7 stem at 256x512; XLA's own kernel gradient 72 ms).
    cols = jnp.concatenate(tap_list, axis=-1).reshape(-1, kh * kw * cin)
    dy_t = transposed(dy.reshape(-1, cout))
    return (dy_t @ cols).reshape(cout, kh, kw, cin).transpose(1, 2, 3, 0)
  dy2 = dy.reshape(-1, cout)
  grads = [_pixel_contraction(dy2, tap.reshape(-1, cin)) for tap in tap_list]  # [Cout, Cin]
  return jnp.stack(grads).reshape(kh, kw, cout, cin).transpose(0, 1, 3, 2)


def _flip_hw(a: jax.Array) -> jax.Array:
  return lax.rev(a, (1, 2))


def _transposed_conv_padding(n_in: int, n_out: int, k: int, stride: int, dilation: int,
                             pads: tuple[int, int]) -> tuple[int, int]:
  """Padding of dy (dilated by the stride) for the correlation with the flipped kernel
  that gives dx of one spatial axis (as jax's own convolution transpose)."""
  span = dilation * (k - 1) + 1
  before = span - pads[0] - 1
  return before, n_in + span - 1 - ((n_out - 1) * stride + 1) - before


def input_grad(x, kernel, dy, stride: int, dilation: int, pads: Pads):
  """dx of `xla_conv(x, kernel, stride, dilation, pads)`: dy correlated with the kernel
  flipped in space, in/out swapped.

  jax.vjp leaves the flip to XLA, which builds reverse(W) with in/out swapped in one loop
  fusion over the weight at ~1 GB/s: 0.13-0.16 s of a DeepLabV2-R101 step at any image
  size (benchmarks/op_compare.py). Here the flip is a copy of whole [Cin, Cout] slabs and
  the swap a separate transpose: the supervised DeepLabV2-R101 step at 256x512 took 2.2%
  less time than with jax.vjp (9.91 vs 10.14 s, alternating, 2 threads), though XLA still
  transposes the ASPP weights at ~1 GB/s. For a stride-1 'same' convolution
  with a square kernel whose weight is the larger operand, B*H*W*(Cin+Cout) <
  kh*kw*Cin*Cout (layer3-4 and the head at 64x128), the activations are flipped instead:
  dx = flip_hw(conv(flip_hw(dy), W with in/out swapped)), since correlating with the
  flipped kernel is flipping the correlation of the flipped signal.
  """
  kh, kw, cin, cout = kernel.shape
  b, h, w, _ = x.shape
  same = pads == _symmetric(pads[0][0]) and kh == kw and 2 * pads[0][0] == dilation * (kh - 1)
  if stride == 1 and same and b * h * w * (cin + cout) < kh * kw * cin * cout:
    return _flip_hw(xla_conv(_flip_hw(dy), jnp.swapaxes(kernel, 2, 3), 1, dilation, pads))
  flipped = stored(lax.rev(kernel, (0, 1))).swapaxes(2, 3)  # [kh, kw, Cout, Cin]
  padding = tuple(_transposed_conv_padding(n, m, k, stride, dilation, p)
                  for n, m, k, p in zip((h, w), dy.shape[1:3], (kh, kw), pads))
  return xla_conv(dy, flipped, 1, dilation, padding, lhs_dilation=stride)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_matmul_grads(x, kernel, stride: int, dilation: int, pads: Pads):
  return xla_conv(x, kernel, stride, dilation, pads)


def _conv_fwd(x, kernel, stride, dilation, pads):
  return xla_conv(x, kernel, stride, dilation, pads), (x, kernel)


def _conv_bwd(stride, dilation, pads, residuals, dy):
  x, kernel = residuals
  dy = dy.astype(x.dtype)
  d_kernel = kernel_grad(x, dy, kernel.shape[:2], stride, dilation, pads)
  d_x = input_grad(x, kernel, dy, stride, dilation, pads)
  return d_x.astype(x.dtype), d_kernel.astype(kernel.dtype)


_conv_matmul_grads.defvjp(_conv_fwd, _conv_bwd)


def real_taps(n_in: int, n_out: int, k: int, stride: int, dilation: int,
              padding: int) -> tuple[int, int]:
  """First and last tap i along one axis whose input rows r*s + i*d - p (r < n_out) reach
  [0, n_in). Taps outside that range multiply zero padding only: at 64x128 the ASPP
  branches' dilations 12-24 on a 9x17 map leave 14 of their 36 taps real."""
  real = [i for i in range(k)
          if any(0 <= r * stride + i * dilation - padding < n_in for r in range(n_out))]
  return real[0], real[-1]


# Split a stride-1 convolution by kernel row (or column) once this share of its tap
# products along that axis would multiply zero padding. Measured (2 threads, forward +
# backward of [2, 33, 65, 2048] -> 256, the ASPP branches at 256x512, unsplit -> split
# by rows): dilation 24 (row share 0.48) 942 -> 474 ms, 18 (0.36) 806 -> 532 ms, 12
# (0.24) 743 -> 615 ms; dilation 6 (0.12) 699 -> 731 ms and a layer4 convolution (0.08)
# -4%: below the line. Splitting the parts once more by column (dilation 24: column
# share 0.18) was faster alone (354 ms) but not in the step (10.52 vs 9.85 s, +256 MiB
# of XLA temporaries for the parts' inputs), so parts are not split again.
SPLIT_PADDING_SHARE = 0.15


def padding_share(n_in: int, n_out: int, k: int, dilation: int, before: int) -> float:
  """Share of a stride-1 convolution's tap products along one axis that read zero
  padding: tap i reads input r + i*d - before for output r < n_out."""
  real = sum(max(0, min(n_out, n_in - o) - max(0, -o))
             for o in (i * dilation - before for i in range(k)))
  return 1.0 - real / (k * n_out)


def _conv_unsplit(x, kernel, dilation: int, pads: Pads) -> jax.Array:
  if kernel.shape[:2] == (1, 1) and pads == ((0, 0), (0, 0)):
    return dense(x, kernel[0, 0])
  return _conv_matmul_grads(x, kernel, 1, dilation, pads)


def _conv_stride1(x, kernel, dilation: int, pads: Pads) -> jax.Array:
  """A stride-1 convolution with the matmul gradients. Along the axis (1: rows, 2:
  columns) whose `padding_share` is larger, if it reaches SPLIT_PADDING_SHARE: the sum
  over kernel rows (columns) of 1 x k (k x 1) convolutions, each over only the input rows
  (columns) it reads, so products with the zero padding are skipped, not computed.
  Autodiff pads the parts' input gradients back and sums them."""
  n_out = [x.shape[a] + sum(pads[a - 1]) - dilation * (kernel.shape[a - 1] - 1)
           for a in (1, 2)]
  shares = [padding_share(x.shape[a], n_out[a - 1], kernel.shape[a - 1], dilation,
                          pads[a - 1][0]) for a in (1, 2)]
  if max(shares) < SPLIT_PADDING_SHARE:
    return _conv_unsplit(x, kernel, dilation, pads)
  axis = 1 if shares[0] >= shares[1] else 2
  n, y = n_out[axis - 1], None
  part_pads = tuple((0, 0) if a == axis else pads[a - 1] for a in (1, 2))
  for i in range(kernel.shape[axis - 1]):
    o = i * dilation - pads[axis - 1][0]  # input index of output 0 under this tap
    first, stop = max(0, -o), min(n, x.shape[axis] - o)  # outputs whose input exists
    if first >= stop:
      continue
    part = _conv_unsplit(lax.slice_in_dim(x, first + o, stop + o, axis=axis),
                         lax.slice_in_dim(kernel, i, i + 1, axis=axis - 1), dilation,
                         part_pads)
    widths = [(0, 0)] * 4
    widths[axis] = (first, n - stop)
    part = jnp.pad(part, widths)
    y = part if y is None else y + part
  return y


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, dilation: int = 1,
           padding: int = 0) -> jax.Array:
  """Square-kernel convolution [B, H, W, Cin] x [k, k, Cin, Cout] -> [B, Ho, Wo, Cout],
  Ho = (H + 2p - d(k-1) - 1) // s + 1, with the kernel gradient of `kernel_grad` and the
  input gradient of `input_grad`.

  Taps that read only zero padding at every output pixel (`real_taps`) are dropped: the
  kernel is cropped to the real ones (a 1x1 crop at stride 1 is `dense`), the padding
  adjusted per side, and the dropped taps' gradient is exactly zero (the crop's transpose
  pads it). Where taps read padding at many output pixels (stride 1, `padding_share` >=
  SPLIT_PADDING_SHARE along rows or columns: large dilations on a small map, as the
  ASPP branches), the convolution is summed kernel row by kernel row over the rows each
  tap reads (or column by column, `_conv_stride1`).
  Forward values then differ from the full convolution by summation order only.
  stride, dilation, padding: Python ints (symmetric zero padding, as PyTorch's Conv2d).
  """
  k = kernel.shape[0]
  (h, w), p = x.shape[1:3], padding
  ho, wo = _out_size(h, k, stride, dilation, p), _out_size(w, k, stride, dilation, p)
  (i0, i1), (j0, j1) = (real_taps(h, ho, k, stride, dilation, p),
                        real_taps(w, wo, k, stride, dilation, p))
  kh, kw = i1 - i0 + 1, j1 - j0 + 1
  top, left = p - i0 * dilation, p - j0 * dilation
  bottom = (ho - 1) * stride + dilation * (kh - 1) + 1 - h - top
  right = (wo - 1) * stride + dilation * (kw - 1) + 1 - w - left
  if (kh, kw) == (k, k) or min(top, bottom, left, right) < 0:
    pads = _symmetric(p)
  else:
    kernel, pads = kernel[i0:i1 + 1, j0:j1 + 1], ((top, bottom), (left, right))
  if stride == 1:
    return _conv_stride1(x, kernel, dilation, pads)
  return _conv_matmul_grads(x, kernel, stride, dilation, pads)


# --- 1x1 convolution ------------------------------------------------------------------------
@jax.custom_vjp
def dense(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """[..., Cin] x [Cin, Cout] -> [..., Cout] (a 1x1 convolution). The kernel gradient
  transposes the narrower of input and output gradient explicitly (`transposed`) rather
  than in XLA's fused transposing loop."""
  return jnp.einsum('...c,cd->...d', x, kernel)


def _dense_fwd(x, kernel):
  return dense(x, kernel), (x, kernel)


def _dense_bwd(residuals, dy):
  x, kernel = residuals
  cin, cout = kernel.shape
  x2, dy2 = x.reshape(-1, cin), dy.reshape(-1, cout).astype(x.dtype)
  if cin <= cout:
    d_kernel = transposed(x2) @ dy2
  else:
    d_kernel = (transposed(dy2) @ x2).T
  d_x = jnp.einsum('...d,cd->...c', dy, kernel.astype(dy.dtype))
  return d_x.astype(x.dtype), d_kernel.astype(kernel.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


class PatchConv(nn.Module):
  """Drop-in for `nn.Conv(features, (k, k), strides=s, padding=((p, p), (p, p)),
  kernel_dilation=d)` running `conv2d`: the same parameters (`kernel` [k, k, Cin,
  features], `bias`) and dtype handling, so weights and checkpoints are interchangeable.
  [B, H, W, Cin] -> [B, Ho, Wo, features].
  """
  features: int
  kernel_size: int
  stride: int = 1
  dilation: int = 1
  padding: int = 0
  use_bias: bool = False
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (k, k, x.shape[-1], self.features),
                        jnp.float32)
    y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.dilation,
               self.padding)
    if self.use_bias:
      bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y
