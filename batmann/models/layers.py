"""Binarised and 8-bit layers of the BATMANN controller, each exportable as a plain layer.

Every quantised layer has ``export() -> (plain_layer, input_transform)``: ``plain_layer`` is an
ordinary ``nn.Conv2d`` / ``nn.Linear`` holding the *effective* weights (exactly ``+-alpha`` for
binary layers, the dequantised 8-bit values for 8-bit layers) and ``input_transform`` is the
module to apply to the layer's input first (or ``None``), so that in eval mode
``plain_layer(input_transform(x)) == layer(x)`` up to float rounding.

Layer semantics (seed: ``quant/XNOR_module.py``, ``quant/RBNN_modules.py``):

* :class:`XnorConv2d` / :class:`BinaryLinear` (XNOR-Net): weights standardised per output
  channel (row), binarised with :func:`sign_pm1`; inputs standardised per sample and binarised;
  ``out = (op(sign(x_std), sign(w_std)) + bias) * alpha``. ``alpha`` is a *learned* parameter,
  initialised to ``mean|W|`` per output channel for the conv (a single scalar for the linear
  layer, as in the seed). Since standardising does not change signs, the input transform is
  ``sign(x - mean(x))`` per sample (:class:`SignActivation`); the standard deviation only
  shapes the STE window.
* :class:`RbnnConv2d` / :class:`RbnnLinear` (RBNN): the standardised weights ``w2``, viewed as
  ``(out, a, b)`` with ``a * b = fan_in`` (``a`` the largest divisor <= sqrt), are rotated by
  two orthogonal matrices, ``w3 = w2 + |sin(theta)| * (R1^T w2 R2 - w2)`` (the rotation term is
  detached, ``theta`` is learned per output channel, initialised to pi/2), then binarised with
  the RBNN surrogate gradient. ``a32=True`` (the seed default) keeps the standardised inputs
  real (1-bit weights, 32-bit activations), so the input transform is
  :class:`StandardizeActivation`; ``a32=False`` binarises them too.
  ``rotation_update``: the rotations are re-fitted (three alternating steps of the RBNN
  Procrustes problem) every ``rotation_update`` episodes via :meth:`RbnnConv2d.begin_episode`.
  *Seed difference:* the seed's training loop sets ``module.episode`` while the layers test
  ``self.epoch`` (always -1), so the seed never updates its rotations; it also sets the
  schedule ``(k, t)`` on ``nn.Conv2d`` modules only, leaving the RBNN FC at ``k=10, t=0.1``.
  We update rotations and the schedule on every RBNN layer, as the issue asks.
* :class:`Int8Conv2d` / :class:`Int8Linear`: 8-bit weights (see
  :mod:`batmann.models.quantizers`), real inputs (the seed does not quantise activations).

Further differences from the seed, all numerical-safety or device related: standard deviations
are clamped below at 1e-12 (the seed divides by zero on a constant input); the
standardise / rotate / binarise path runs in float32 with autocast disabled (the tensors are
small) so that bf16 autocast training binarises exactly as the float32 export does; the random
rotations come from a ``torch.Generator`` (the seed uses scipy's global NumPy state); nothing
hard-codes a CUDA device. At inference (no autograd) on a CPU, the +-1 x +-1 products of the XNOR
layers run on exact kernels (:mod:`batmann.models.binary_kernels`: int8 on AMX, elsewhere XOR and
popcount on AVX-512 VPOPCNTDQ or AVX2): the same numbers, several times faster.
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._prims_common import suggest_memory_format

from batmann.models import binary_kernels, fused, grouped_conv, grouped_relu_pool, pooled_grad, small_fan_in
from batmann.models import quantizers as q
from batmann.utils.determinism import in_deterministic_block
from crossbar import cpu_features

STD_EPS = fused.STD_EPS


# ---------------------------------------------------------------------------------------------
# helpers and input-transform modules
# ---------------------------------------------------------------------------------------------


def _row_dims(x: Tensor) -> tuple[int, ...]:
    return tuple(range(1, x.dim()))


def standardize_rows(x: Tensor) -> Tensor:
    """``(x - mean) / std`` over all dims but the first (unbiased std, as ``torch.std``), in float32."""
    xf = x.float()
    dims = _row_dims(xf)
    c = xf - xf.mean(dims, keepdim=True)
    return c / c.std(dims, keepdim=True).clamp_min(STD_EPS)


class _CenteredSign(torch.autograd.Function):
    """``sign_pm1(x - mean(x))`` per row, with an STE through ``x_hat = (x - mean) / std``.

    One function instead of an autograd chain of mean/sub/std/div (several times faster on
    CPU; fused further where :func:`batmann.models.fused.compiled_kernels` is on). Backward:
    ``g_hat = g * surrogate(x_hat)`` (``"hardtanh"``: ``|x_hat| < 1``; ``"rbnn"``:
    ``max(0, sqrt(2) t - t^2 |x_hat|)``), then the exact gradient of the standardisation:
    ``(g_hat - mean(g_hat) - x_hat * sum(g_hat * x_hat) / (N - 1)) / std``. With ``relu``, the
    same of ``relu(x)`` and its gradient with respect to ``x``, the ReLU in the same passes.
    """

    @staticmethod
    def forward(ctx, x: Tensor, surrogate: str, t: float, out_dtype: torch.dtype | None,  # noqa: D102
                training: bool, relu: bool = False) -> Tensor:
        out, mu, s = fused.sign_forward(x, out_dtype, compiled=training, relu=relu)
        ctx.save_for_backward(x, mu, s)
        ctx.surrogate, ctx.t, ctx.relu = surrogate, float(t), relu
        # the backward runs where the forward ran (sign_forward's choice)
        ctx.native = training and (out_dtype or x.dtype) == torch.float32 and fused.on_native_kernels(x)
        return out

    @staticmethod
    def backward(ctx, g: Tensor):  # noqa: D102
        x, mu, s = ctx.saved_tensors
        gx = fused.sign_backward(x, mu, s, g, ctx.surrogate, ctx.t, ctx.relu, native=ctx.native)
        return gx, None, None, None, None, None


class _Standardize(torch.autograd.Function):
    """``(x - mean) / std`` per row (float32 out) with the exact gradient, fused (see :class:`_CenteredSign`)."""

    @staticmethod
    def forward(ctx, x: Tensor, training: bool, relu: bool = False) -> Tensor:  # noqa: D102
        xh, mu, s = fused.standardize_forward(x, compiled=training, relu=relu)
        ctx.save_for_backward(x, mu, s)
        ctx.relu = relu
        ctx.native = training and fused.on_native_kernels(x)  # the backward runs where the forward ran
        return xh

    @staticmethod
    def backward(ctx, g: Tensor):  # noqa: D102
        x, mu, s = ctx.saved_tensors
        return fused.standardize_backward(x, mu, s, g, ctx.relu, native=ctx.native), None, None


def standardize_activations(x: Tensor, relu: bool = False) -> Tensor:
    """Per-row ``(x - mean) / std`` in float32 (fused forward and backward); the RBNN ``a32`` input.
    Without autograd, eager (:mod:`batmann.models.fused`). ``relu``: that of ``torch.relu(x)``;
    in training on the C kernels the ReLU runs on the fly and its mask in the backward (the same
    values and gradients, ``relu(x)`` never stored)."""
    training = torch.is_grad_enabled()
    if relu and not (training and fused.on_native_kernels(x)):
        x, relu = torch.relu(x), False
    return _Standardize.apply(x, training, relu)


def _row_mean(x: Tensor) -> Tensor:
    """The mean of each row (sample) of ``x`` in float32, shape (B, 1, ...): the centered sign's threshold."""
    return x.mean(_row_dims(x), keepdim=True, dtype=torch.float32)


def _sign_about_mean(x: Tensor, dtype: torch.dtype) -> Tensor:
    """+1 where ``x > mean(x)`` per row, -1 elsewhere, in ``dtype``: two passes over ``x``.
    ``x > mean`` is ``x - mean > 0`` exactly (the difference of two distinct floats is never
    rounded to zero)."""
    mu = _row_mean(x)
    one = torch.ones((), dtype=dtype, device=x.device)
    return torch.where(x > mu, one, -one)


def centered_sign(x: Tensor) -> Tensor:
    """``sign_pm1(x - mean(x))`` per row (no gradient), in ``x``'s dtype: the forward value of
    :func:`centered_sign_ste`."""
    return _sign_about_mean(x, x.dtype)


def centered_sign_int8(x: Tensor) -> Tensor:
    """:func:`centered_sign` as int8 +-1 (no gradient)."""
    return _sign_about_mean(x, torch.int8)


def centered_sign_ste(x: Tensor, surrogate: str = "hardtanh", t: float = 1.0,
                      out_dtype: torch.dtype | None = None, relu: bool = False) -> Tensor:
    """Binarise activations per row with an STE (``"hardtanh"`` for XNOR, ``"rbnn"`` for RBNN);
    +-1 in ``out_dtype`` (default ``x``'s; +-1 is exact in every float dtype). Without autograd,
    eager (:mod:`batmann.models.fused`). ``relu``: of ``torch.relu(x)``, the same values and
    gradients with the ReLU folded into the sign's passes (``relu(x)`` is never stored)."""
    return _CenteredSign.apply(x, surrogate, t, out_dtype, torch.is_grad_enabled(), relu)


def _fp32(t: Tensor):
    """Disable autocast on ``t``'s device (no-op where autocast is not supported)."""
    try:
        return torch.autocast(device_type=t.device.type, enabled=False)
    except RuntimeError:  # pragma: no cover - exotic device types
        return nullcontext()


def get_ab(n: int) -> tuple[int, int]:
    """``(a, b)`` with ``a * b = n`` and ``a`` the largest divisor of ``n`` not above ``sqrt(n)``."""
    for i in range(math.isqrt(n), 0, -1):
        if n % i == 0:
            return i, n // i
    raise ValueError(f"cannot factor {n}")  # pragma: no cover - n >= 1 always factors


def random_orthogonal(n: int, generator: torch.Generator | None = None) -> Tensor:
    """A Haar-distributed random ``n x n`` orthogonal matrix (float32, CPU)."""
    g = torch.randn(n, n, generator=generator, dtype=torch.float64)
    qm, r = torch.linalg.qr(g)
    qm = qm * torch.sign(torch.diagonal(r)).unsqueeze(0)
    return qm.float()


class SignActivation(nn.Module):
    """``x -> +1 / -1``: the sign of ``x - mean(x)`` per sample (``center=True``) or of ``x``.

    The mean runs over all non-batch dims. This is the input binarisation of XNOR layers
    (and of RBNN layers with ``a32=False``) and the only transform a crossbar input needs.
    """

    def __init__(self, center: bool = True):
        super().__init__()
        self.center = center

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if self.center:
            return centered_sign(x)
        return q.sign_pm1(x)

    def extra_repr(self) -> str:  # noqa: D102
        return f"center={self.center}"


def is_2x2_pool(m: nn.Module) -> bool:
    """Whether ``m`` is a plain 2x2, stride-2 max pool (no padding, dilation, ceil mode or indices)."""
    return (isinstance(m, nn.MaxPool2d) and m.kernel_size in (2, (2, 2)) and m.stride in (2, (2, 2))
            and m.padding in (0, (0, 0)) and m.dilation in (1, (1, 1)) and not m.ceil_mode
            and not m.return_indices)


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d``; at inference a 2x2, stride-2 pool over even sizes is two element-wise
    maxima (rows, then columns): the same values, about 6x faster on CPU than
    ``max_pool2d``, which also computes indices. Training keeps ``max_pool2d`` (its gradient)."""

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        h, w = x.shape[-2:]
        if (torch.is_grad_enabled() and x.requires_grad) or x.dim() != 4 or h % 2 or w % 2 \
                or not is_2x2_pool(self) or not x.is_contiguous():
            return super().forward(x)
        b, c = x.shape[:2]
        rows = x.view(b, c, h // 2, 2, w)
        rows = torch.maximum(rows[:, :, :, 0], rows[:, :, :, 1]).view(b, c, h // 2, w // 2, 2)
        return torch.maximum(rows[..., 0], rows[..., 1])


class StandardizeActivation(nn.Module):
    """``x -> (x - mean(x)) / std(x)`` per sample (all non-batch dims); RBNN ``a32`` input."""

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return standardize_activations(x)


def _plain_like(layer: nn.Module, weight: Tensor, bias: Tensor | None) -> nn.Module:
    """A plain ``nn.Conv2d`` / ``nn.Linear`` with ``layer``'s geometry and the given weights."""
    kw = dict(device=weight.device, dtype=weight.dtype)
    if isinstance(layer, nn.Conv2d):
        plain = nn.Conv2d(
            layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
            layer.dilation, layer.groups, bias=bias is not None, padding_mode=layer.padding_mode, **kw,
        )
    elif isinstance(layer, nn.Linear):
        plain = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None, **kw)
    else:  # pragma: no cover - internal use only
        raise TypeError(f"cannot export {type(layer).__name__}")
    with torch.no_grad():
        plain.weight.copy_(weight)
        if bias is not None:
            plain.bias.copy_(bias)
    plain.train(layer.training)
    return plain


def _padding(layer: nn.Module) -> int:
    return layer.padding[0] if isinstance(layer, nn.Conv2d) else 0


def _records_autograd(layer: nn.Module, x: Tensor) -> bool:
    """Whether a forward of ``layer`` on ``x`` records autograd (else it is inference)."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in layer.parameters()))


def _inference_kernel(layer: nn.Module, x: Tensor) -> str | None:
    """The exact kernel a +-1 x +-1 layer runs on (``"int8"`` or ``"popcount"``, see
    :func:`batmann.models.binary_kernels.kernel_for`), or None: autograd, another device, no fast
    kernel here, or a convolution the kernels do not cover."""
    if _records_autograd(layer, x):
        return None
    return _exact_kernel(layer, x)


def _exact_kernel(layer: nn.Module, x: Tensor) -> str | None:
    if not _plain_geometry(layer):
        return None
    return binary_kernels.kernel_for(x.device, _padding(layer))


def _plain_geometry(layer: nn.Module) -> bool:
    """Whether the exact kernels cover ``layer``: a linear layer or an ordinary square convolution."""
    if isinstance(layer, nn.Conv2d):
        return (layer.groups == 1 and tuple(layer.dilation) == (1, 1) and layer.padding_mode == "zeros"
                and not isinstance(layer.padding, str) and len(set(layer.kernel_size)) == 1
                and len(set(layer.stride)) == 1 and len(set(layer.padding)) == 1)
    return True


def _pm1_op(layer: nn.Module, x: Tensor, w: Tensor, kernel: str) -> Tensor:
    if isinstance(layer, nn.Conv2d):
        return binary_kernels.pm1_conv2d_exact(x, w, kernel, layer.stride[0], layer.padding[0])
    flat = binary_kernels.pm1_linear_exact(x.reshape(-1, x.shape[-1]), w, kernel)
    return flat.reshape(*x.shape[:-1], -1)


def _packs_from_real(x: Tensor, layer: nn.Module, kernel: str) -> bool:
    """Whether the popcount kernels pack ``x``'s centered signs straight from ``x`` (see :func:`_centered_sign_op`)."""
    return kernel == "popcount" and x.dtype == torch.float32 and (isinstance(layer, nn.Conv2d) or x.dim() == 2)


def _centered_sign_op(layer: "_XnorMixin", x: Tensor, kernel: str, scale: Tensor | None = None,
                      relu: bool = False, pool: bool = False) -> Tensor:
    """``_pm1_op(layer, centered_sign(x), +-1 weights)`` at inference. On the popcount kernels the
    signs of a float32 ``x`` are packed straight from ``x`` and its row means (one pass, no +-1
    tensor), against weights packed once; there (only) ``scale`` (per output channel), ``relu``
    and a 2x2 max ``pool`` (convolutions) are applied in the kernel's epilogue, the same bits as
    the separate ops."""
    if _packs_from_real(x, layer, kernel):
        from batmann.models import popcount_kernels

        mu, pw = _row_mean(x), layer._inference_weight(packed=True)
        if isinstance(layer, nn.Conv2d):
            return popcount_kernels.pm1_conv2d(x, pw, layer.stride[0], threshold=mu, scale=scale, relu=relu,
                                               pool=pool)
        return popcount_kernels.pm1_linear(x, pw, threshold=mu, scale=scale, relu=relu)
    if scale is not None or relu or pool:
        raise ValueError("an epilogue (scale, relu, pool) needs the popcount kernels on a float32 input")
    return _pm1_op(layer, centered_sign_int8(x), layer._inference_weight(), kernel)


def _exact_pm1_op(layer: nn.Module, x: Tensor, w: Tensor) -> Tensor:
    """The +-1 x +-1 product of ``layer`` in float32, exact: on the int8 / popcount kernels where they apply."""
    kernel = _exact_kernel(layer, x)
    if kernel is not None:
        return _pm1_op(layer, x, w, kernel)
    return _op(layer, x.float(), w.float(), None)


class _Pm1Product(torch.autograd.Function):
    """A +-1 x +-1 convolution / linear product whose forward is exact (float32 values, the int8
    or popcount kernels where the CPU has them) and whose two gradient products run in
    ``grad_dtype`` (bf16: AMX / AVX512-BF16 units). The forward, and so the trained function, is
    the float32 one bit for bit; only the gradients are rounded, as under bf16 autocast. With
    ``grad_dtype`` float32 (a bias-free convolution) the gradients are autograd's, bit for bit
    (where :func:`_in_ranges`, its call per image range)."""

    @staticmethod
    def forward(ctx, a: Tensor, w: Tensor, layer: nn.Module, grad_dtype: torch.dtype) -> Tensor:  # noqa: D102
        ctx.save_for_backward(a, w)
        ctx.layer, ctx.grad_dtype = layer, grad_dtype
        return _exact_pm1_op(layer, a, w)  # float32

    @staticmethod
    def backward(ctx, g: Tensor):  # noqa: D102
        a, w = ctx.saved_tensors
        layer, dt = ctx.layer, ctx.grad_dtype
        need_a, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if isinstance(layer, nn.Conv2d) and dt == torch.float32:  # autograd's own call
            ga, gw = _conv_grads(g, a, w, layer, need_a, need_w)
            return ga, gw, None, None
        ga, gw = _pm1_grad_products(g.to(dt, memory_format=torch.channels_last) if isinstance(layer, nn.Conv2d)
                                    else g.to(dt), a, w, layer, need_a, need_w)
        return ga, gw, None, None


def _pm1_grad_products(g: Tensor, a: Tensor, w: Tensor, layer: nn.Module, need_a: bool,
                       need_w: bool) -> tuple[Tensor | None, Tensor | None]:
    """The input and weight gradients of ``layer``'s +-1 product of ``a`` and ``w`` from the
    output gradient ``g``, already in the products' low-precision dtype (channels-last for a
    convolution); returned in ``a``'s and ``w``'s dtypes, each None unless asked for."""
    dt = g.dtype
    if isinstance(layer, nn.Conv2d):
        cl = torch.channels_last
        ga, gw = _conv_grads(g, a.to(dt, memory_format=cl), w.to(dt, memory_format=cl), layer, need_a, need_w)
    else:
        g2, a2 = g.reshape(-1, g.shape[-1]), a.reshape(-1, a.shape[-1]).to(dt)
        ga = (g2 @ w.to(dt)).reshape(a.shape) if need_a else None
        gw = g2.t() @ a2 if need_w else None
    ga = None if ga is None else ga.to(a.dtype)
    gw = None if gw is None else gw.to(w.dtype, memory_format=torch.contiguous_format)
    return ga, gw


def _conv_grads(g: Tensor, a: Tensor, w: Tensor, layer: nn.Conv2d, need_a: bool,
                need_w: bool) -> tuple[Tensor | None, Tensor | None]:
    """The input and weight gradients of ``layer``'s convolution of ``a`` with ``w`` (no bias)
    from the output gradient ``g``: autograd's ``convolution_backward`` call, or where
    :func:`_in_ranges` the same call per image range (the weight gradient then summed in
    float32)."""
    if _in_ranges(layer, a):
        ga, gw, _ = grouped_conv.conv2d_backward(g, a, w, layer.stride, layer.padding, layer.dilation,
                                                 layer.groups, need=(need_a, need_w, False))
        return ga, gw
    ga, gw, _ = torch.ops.aten.convolution_backward(
        g, a, w, None, list(layer.stride), list(layer.padding), list(layer.dilation), False, [0, 0], layer.groups,
        [need_a, need_w, False])
    return ga, gw


class _ConvReluPool(torch.autograd.Function):
    """``max_pool2d(relu((conv2d(x, w) + b) * alpha), 2)`` (``pool`` 2; ``pool`` 1: without the
    max pool) of a stride-1 unpadded float32 convolution (``b`` and ``alpha`` per output channel,
    each optional; with bf16 gradient products, +-1 bf16 ``x``) in training. Without the pool the
    same, the backward from the ReLU's sparse gradient (its zeros skipped).

    The forward is the separate ops' (``exact``: the bias-free +-1 x +-1 product on the exact
    kernels, as :class:`_Pm1Product`), then one pass for alpha, the ReLU and the pool that keeps each window's
    argmax (:func:`batmann.models.pooled_grad.relu_pool`): the same bits. The backward starts from
    the pooled gradient and the argmax, masked and scaled by alpha in one pass that also sums
    alpha's gradient (:func:`batmann.models.pooled_grad.scale_grad`: in double, per image group,
    the same bits on any number of threads). With ``grad_dtype`` None, in float32
    (:func:`batmann.models.pooled_grad.conv_backward`: a quarter of the dense products' work); it
    equals autograd's through the separate ops to float32 rounding (another summation order).
    With ``grad_dtype`` bf16 (an exact +-1 layer), the convolution's output gradient is laid out
    in one pass as bf16 channels-last (:func:`batmann.models.pooled_grad.unpool_bf16`) for the
    dense bf16 products of :class:`_Pm1Product`: the same input and weight gradients, bit for
    bit, as :class:`_Pm1Product` followed by the separate alpha, ReLU and pool. Under CPU bf16
    autocast (a plain convolution, :func:`_pooled_autocast_ok`) the product is autocast's bf16 one
    and the rest as in float32: the ReLU and pool pick its values exactly, the gradients are
    float32 sums of the bf16 operands, and the input gradient is handed back in the input's dtype."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None, alpha: Tensor | None, layer: nn.Module,  # noqa: D102
                exact: bool, grad_dtype: torch.dtype | None = None, pool: int = 2) -> Tensor:
        y = _exact_pm1_op(layer, x, w) if exact else _op(layer, x, w, b)  # exact: bias-free XNOR layers only
        y = pooled_grad.to_float32(y)  # a bf16 product under autocast: exact (the ReLU and pool pick its values)
        scale = torch.ones(y.shape[1]) if alpha is None else alpha.detach().to(y.dtype)
        if pool == 2:
            out, offsets, y_at = pooled_grad.relu_pool(y, scale)  # y_at: d out / d alpha where out > 0
        else:  # the separate ops' values: y * alpha, then the ReLU
            out, offsets, y_at = torch.relu(y if alpha is None else y * scale.view(1, -1, 1, 1)), None, y
        ctx.save_for_backward(x, w, scale, out > 0, y_at, offsets)
        ctx.has_bias, ctx.has_alpha, ctx.grad_dtype, ctx.layer = b is not None, alpha is not None, grad_dtype, layer
        ctx.pool = pool
        return out

    @staticmethod
    def backward(ctx, g: Tensor):  # noqa: D102
        x, w, scale, kept, y_at, offsets = ctx.saved_tensors
        # the ReLU's gradient at the argmax, times alpha; alpha's gradient: one pass
        gy, g_alpha = pooled_grad.scale_grad(g, kept, y_at, scale)
        g_alpha = g_alpha if ctx.has_alpha and ctx.needs_input_grad[3] else None
        need_a, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if ctx.grad_dtype is None:
            # under bf16 autocast the product took x and w rounded to bf16: their float32 values
            wp = w if x.dtype == torch.float32 else w.detach().to(x.dtype).float()
            xk = x if pooled_grad.supports(x, wp, ctx.pool) else pooled_grad.to_float32(x)  # bf16 channels-last as it is
            ga, gw = pooled_grad.conv_backward(gy, offsets, xk, wp, need_a, need_w, pool=ctx.pool)
            ga = None if ga is None else ga.to(x.dtype)
        else:
            gd = pooled_grad.unpool_bf16(gy, offsets) if ctx.pool == 2 else \
                gy.to(ctx.grad_dtype, memory_format=torch.channels_last)
            ga, gw = _pm1_grad_products(gd, x, w, ctx.layer, need_a, need_w)
        gb = gy.sum((0, 2, 3)) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return ga, gw, gb, g_alpha, None, None, None, None


def _pooled_ok(layer: nn.Module, x: Tensor, pool: nn.Module | None) -> bool:
    """Whether the training forward of convolution ``layer`` on ``x`` with ReLU and ``pool`` after
    it can be :class:`_ConvReluPool`: :func:`_training_kernels_apply`, a 2x2 max pool, or none
    inside ``deterministic_kernels`` (there the C kernels keep the threads torch gives up; from a
    ReLU's half-zero gradient they only match oneDNN's dense products thread for thread, so not
    elsewhere; whatever the core count, for the same bits on any machine), stride 1, no padding,
    no dilation or groups, and the kernels here (:func:`batmann.models.pooled_grad.supports`)."""
    pooled = is_2x2_pool(pool) if pool is not None else in_deterministic_block()
    return (pooled and isinstance(layer, nn.Conv2d) and _training_kernels_apply(layer, x)
            and layer.stride == (1, 1) and layer.padding in (0, (0, 0)) and layer.dilation == (1, 1)
            and layer.groups == 1 and pooled_grad.supports(x, layer.weight, _pool_size(pool))
            and pooled_grad.available())


def _pooled_autocast_ok(layer: nn.Module, x: Tensor, pool: nn.Module | None) -> bool:
    """Whether the training forward of a plain convolution ``layer`` on ``x`` with ReLU and a 2x2
    max ``pool`` under CPU bf16 autocast takes :class:`_ConvReluPool` (the bf16 product, then its
    float32 gradients from the pooled gradient): where bf16 is native without matrix units
    (:func:`crossbar.cpu_features.has_bf16_matrix_units`; with AMX oneDNN's dense bf16 gradient
    products are faster), stride 1, no padding, dilation or groups, and the kernels here."""
    return (pool is not None and is_2x2_pool(pool) and isinstance(layer, nn.Conv2d) and _records_autograd(layer, x)
            and x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and binary_kernels.KERNEL != "fp32"
            and not cpu_features.has_bf16_matrix_units(x.device)
            and layer.stride == (1, 1) and layer.padding in (0, (0, 0)) and layer.dilation == (1, 1)
            and layer.groups == 1 and pooled_grad.supports(x[:1].float(), layer.weight, 2) and pooled_grad.available())


def _pool_size(pool: nn.Module | None) -> int:
    """2 for a 2x2 max pool, 1 for none (:class:`_ConvReluPool`'s ``pool``)."""
    return 1 if pool is None else 2


def _training_kernels_apply(layer: nn.Module, x: Tensor) -> bool:
    """Whether the training forward of ``layer`` on ``x`` may take the custom-gradient functions
    (:class:`_ConvReluPool`, :class:`_SmallFanInConv`): autograd records it, a CPU float32 input,
    no autocast, and the kernel setting is not ``fp32`` (which keeps plain autograd)."""
    return (_records_autograd(layer, x) and x.device.type == "cpu" and x.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu") and binary_kernels.KERNEL != "fp32")


def conv_output(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)`` for a plain ``nn.Conv2d``, the same values, with the training kernels of
    :func:`conv_relu_pool` that apply without a ReLU (:class:`_SmallFanInConv`; the image ranges
    of :mod:`batmann.models.grouped_conv`): for a convolution whose ReLU the next layer folds in."""
    if _small_fan_in(conv, x):
        return _SmallFanInConv.apply(x, conv.weight, conv.bias, conv)
    return grouped_conv.layer_conv2d(conv, x, conv.weight, conv.bias) if _in_ranges(conv, x) else conv(x)


def conv_relu_pool(conv: nn.Conv2d, x: Tensor, pool: nn.Module | None) -> Tensor:
    """``pool(relu(conv(x)))`` (no pool if None) for a plain ``nn.Conv2d``, the same values. In CPU
    float32 training a stride-1 unpadded convolution with a 2x2 max pool (or none, see
    :func:`_pooled_ok`) takes its gradients from the pooled (or the ReLU's sparse) gradient
    (:class:`_ConvReluPool`), under bf16 autocast one with a 2x2 max pool where the CPU has no
    bf16 matrix units (:func:`_pooled_autocast_ok`), and a small fan-in convolution its weight gradient from one batched
    product (:class:`_SmallFanInConv`)."""
    if _pooled_ok(conv, x, pool) or _pooled_autocast_ok(conv, x, pool):
        return _ConvReluPool.apply(x, conv.weight, conv.bias, None, conv, False, None, _pool_size(pool))
    out = conv_output(conv, x)
    if _records_autograd(conv, x) and _in_ranges_relu_pool(out, pool):
        return grouped_relu_pool.relu_pool(out, pool)
    out = torch.relu(out) if _records_autograd(conv, x) else out.relu_()
    return out if pool is None else pool(out)


def _in_ranges_relu_pool(y: Tensor, pool: nn.Module | None) -> bool:
    """Whether the ReLU (and max ``pool``) of a convolution's output ``y`` in training run per image
    range on every core (:mod:`batmann.models.grouped_relu_pool`, torch's values): inside
    ``deterministic_kernels`` on the CPU, at least :data:`batmann.models.grouped_relu_pool.MIN_ELEMENTS`
    elements, with a pool it covers or in bf16 (autocast; torch's float32 ReLU alone is bound by
    memory, no faster on two cores), unless the kernel setting is ``fp32``."""
    return (grouped_conv.active(y) and y.numel() >= grouped_relu_pool.MIN_ELEMENTS
            and (pool is not None or y.dtype == torch.bfloat16) and grouped_relu_pool.covers(pool)
            and binary_kernels.KERNEL != "fp32")


def set_gradient_dtype(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """Run the gradient products of ``model``'s XNOR layers in ``dtype`` (``torch.bfloat16``), their
    forward exactly as in float32; ``None`` restores plain float32 autograd. Returns ``model``."""
    for m in model.modules():
        if isinstance(m, _XnorMixin):
            m.grad_dtype = dtype
    return model


def describe_training_path(controller: str, precision: str, device: torch.device | str) -> str:
    """How the convolutions of a ``controller`` (a :data:`batmann.options.CONTROLLERS` kind) train
    in ``precision`` (``fp32`` or ``bf16``, the effective one) on ``device``, in one line for the
    training log: e.g. ``pooled layers: float32 gradients from the pooled gradient (AVX2 loops)``."""
    device = torch.device(device)
    if device.type != "cpu":
        return "autograd"
    if binary_kernels.KERNEL == "fp32":
        return "plain autograd (BATMANN_BINARY_KERNEL=fp32)"
    if not pooled_grad.available():
        return f"autograd (pooled kernels unavailable: {pooled_grad.unavailable_reason()})"
    pooled = f"pooled layers: float32 gradients from the pooled gradient ({pooled_grad.ISAS[pooled_grad.isa()]} loops)"
    first = ""  # conv1 outside autocast: its forward and weight gradient on the small fan-in kernels
    if small_fan_in.available() and (precision != "bf16" or controller.startswith("xnor")):
        first = f"; conv1's forward and weight gradient in C ({small_fan_in.channels_per_pass()} output channels per pass)"
    if controller.startswith("xnor"):
        if binary_kernels.kernel_for(device) is None:
            return "autograd (no exact +-1 kernel here)"
        forward = f"+-1 products: {binary_kernels.describe_kernel(device)}"
        return f"{forward}; " + ("bf16 gradient products" if precision == "bf16" else pooled) + first
    if precision != "bf16":
        return pooled + first
    if controller == "fp" and not cpu_features.has_bf16_matrix_units(device):
        return f"bf16 products; {pooled}"
    return "bf16 autocast, autograd's dense bf16 products"


def _bias_view(layer: nn.Module) -> Tensor:
    b = layer.bias.float()
    return b.view(1, -1, 1, 1) if isinstance(layer, nn.Conv2d) else b


def _fan_in(conv: nn.Conv2d) -> int:
    """Inputs per output of a convolution: ``C_in / groups * kh * kw``."""
    return conv.in_channels // conv.groups * math.prod(conv.kernel_size)


def _in_ranges(layer: nn.Module, x: Tensor) -> bool:
    """Whether ``layer``'s convolution of ``x`` runs per image range on every core
    (:mod:`batmann.models.grouped_conv`): inside ``deterministic_kernels`` on the CPU, a
    convolution it covers with a fan-in above :data:`SMALL_FAN_IN`, or any under CPU autocast (in
    float32 the first layer's 1 x 5 x 5 product is cheap on one thread and its ranges' outputs only
    add allocations; oneDNN's bf16 one takes longer), unless the kernel setting is ``fp32`` (plain
    autograd)."""
    return (grouped_conv.active(x) and grouped_conv.covers(layer) and binary_kernels.KERNEL != "fp32"
            and (_fan_in(layer) > SMALL_FAN_IN or torch.is_autocast_enabled("cpu")))


def _op(layer: nn.Module, x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
    """``layer``'s product of ``x`` with ``w`` and ``bias``; a convolution :func:`_in_ranges` runs per
    image range on every core (:func:`batmann.models.grouped_conv.layer_conv2d`)."""
    if isinstance(layer, nn.Conv2d):
        if _in_ranges(layer, x):
            return grouped_conv.layer_conv2d(layer, x, w, bias)
        return F.conv2d(x, w, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    return F.linear(x, w, bias)


# ---------------------------------------------------------------------------------------------
# XNOR-Net layers
# ---------------------------------------------------------------------------------------------


class _XnorMixin:
    """Shared code of :class:`XnorConv2d` and :class:`BinaryLinear`."""

    weight: Tensor
    bias: Tensor | None
    alpha: nn.Parameter

    def _alpha_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def _alpha_view(self) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def reset_alpha(self) -> None:
        """``alpha = mean|W|`` (per output channel for convs, over all weights for linears)."""
        w = self.weight.detach().float()
        if self.alpha.dim() == 0:
            self.alpha.copy_(w.abs().mean())
        else:
            self.alpha.copy_(w.abs().flatten(1).mean(1))

    def binary_weight(self) -> Tensor:
        """The +-1 weights used in the forward pass (float32, no gradient)."""
        with torch.no_grad(), _fp32(self.weight):
            return q.sign_pm1(standardize_rows(self.weight))

    def _inference_weight(self, packed: bool = False):
        """The +-1 weights, kept between inference calls while the weights are unchanged;
        ``packed``: as bits for the popcount kernels (:func:`batmann.models.popcount_kernels.pack_weights`)."""
        key = (self.weight.data_ptr(), self.weight._version, self.weight.device)
        cached = getattr(self, "_bw_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, self.binary_weight(), None)
            self._bw_cache = cached
        if not packed:
            return cached[1]
        if cached[2] is None:
            from batmann.models import popcount_kernels

            cached = (key, cached[1], popcount_kernels.pack_weights(cached[1]))
            self._bw_cache = cached
        return cached[2]

    #: dtype of the gradient products in training (``None``: float32 autograd); see :func:`set_gradient_dtype`
    grad_dtype: torch.dtype | None = None

    def _exact_fp32_training(self, x: Tensor) -> bool:
        """Whether float32 training runs this layer's forward product on an exact kernel: a
        convolution without bias (its sum is then the same integer, and the gradient products
        the same ``convolution_backward`` call autograd makes, so the bits are autograd's), not
        under autocast (which runs the plain path's product in its own dtype)."""
        return (isinstance(self, nn.Conv2d) and self.bias is None and not torch.is_autocast_enabled(x.device.type)
                and _exact_kernel(self, x) is not None)

    def _pooled_training(self, x: Tensor, pool: nn.Module | None) -> bool:
        """Whether training runs this convolution, its ReLU and the 2x2 max ``pool`` (or none) as
        :class:`_ConvReluPool` (its backward from the pooled gradient): an exact forward kernel
        (:meth:`_exact_fp32_training`), float32 or bf16 gradient products and :func:`_pooled_ok`."""
        return (self.grad_dtype in (None, torch.bfloat16) and _pooled_ok(self, x, pool)
                and self._exact_fp32_training(x))

    def forward(self, x: Tensor, relu: bool = False, pool: nn.Module | None = None,
                input_relu: bool = False) -> Tensor:
        """The layer's output; ``relu``: ``torch.relu`` of it; ``pool``: then that module of it;
        ``input_relu``: the output for ``torch.relu(x)`` (the previous layer's ReLU).
        At inference on the popcount kernels the product, ``alpha``, the ReLU and a 2x2 max pool
        are one pass (the same values; the passes over the full-size output saved). In training
        with a 2x2 max pool (float32 or bf16 gradient products), the backward of all three starts
        from the pooled gradient (:class:`_ConvReluPool`; the same forward values); with a ReLU
        and no pool, likewise inside ``deterministic_kernels`` (see :func:`_pooled_ok`). There an
        ``input_relu`` is folded into the centered sign of ``x`` (:func:`centered_sign_ste`, the
        same values and gradients)."""
        if input_relu and not (relu and self._pooled_training(x, pool)):
            x, input_relu = torch.relu(x), False
        kernel = _inference_kernel(self, x)  # inference: the same numbers from int8 / popcount units
        if kernel is not None and self.bias is None and _packs_from_real(x, self, kernel):
            fuse_pool = relu and pool is not None and is_2x2_pool(pool) and isinstance(self, nn.Conv2d) \
                and all(((n - k) // s + 1) % 2 == 0 for n, k, s in zip(x.shape[-2:], self.kernel_size, self.stride))
            out = _centered_sign_op(self, x, kernel, scale=self.alpha.detach(), relu=relu, pool=fuse_pool)
            return out if fuse_pool or pool is None else pool(out)
        if relu and self._pooled_training(x, pool):
            with _fp32(x):
                bw = q.xnor_weight_sign(standardize_rows(self.weight))
                ba = centered_sign_ste(x, "hardtanh", out_dtype=self.grad_dtype, relu=input_relu)
            return _ConvReluPool.apply(ba, bw, None, self.alpha, self, True, self.grad_dtype, _pool_size(pool))
        out = self._forward(x, kernel)  # a new tensor: relu in place unless autograd records it
        if relu:
            out = torch.relu(out) if _records_autograd(self, x) else out.relu_()
        return out if pool is None else pool(out)

    def _forward(self, x: Tensor, kernel: str | None) -> Tensor:
        fast = kernel is not None
        mixed = not fast and torch.is_grad_enabled() and (self.grad_dtype is not None or self._exact_fp32_training(x))
        with _fp32(x):
            if fast:
                out = _centered_sign_op(self, x, kernel)
            else:
                bw = q.xnor_weight_sign(standardize_rows(self.weight))
                # == xnor_act_sign(standardize_rows(x))
                ba = centered_sign_ste(x, "hardtanh", out_dtype=self.grad_dtype if mixed else None)
        if fast:
            out = (out if self.bias is None else out + _bias_view(self)).to(x.dtype)
        elif mixed:
            out = _Pm1Product.apply(ba, bw, self, self.grad_dtype or torch.float32)
            out = out if self.bias is None else out + _bias_view(self)
        else:
            out = _op(self, ba, bw, self.bias)
        return out * self._alpha_view().to(out.dtype)

    @torch.no_grad()
    def effective_weight(self) -> tuple[Tensor, Tensor | None]:
        """``(sign(W) * alpha, bias * alpha)``: weights exactly ``+-alpha`` per output channel."""
        a = self._alpha_view_param().float()
        w = self.binary_weight() * a
        b = None if self.bias is None else self.bias.detach().float() * a.reshape(-1)
        return w, b

    def export(self) -> tuple[nn.Module, nn.Module]:
        """``(plain layer with +-alpha weights, SignActivation(center=True))``."""
        w, b = self.effective_weight()
        return _plain_like(self, w, b), SignActivation(center=True)


class XnorConv2d(_XnorMixin, nn.Conv2d):
    """XNOR-Net binary convolution with a learned per-output-channel scale ``alpha``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = False, device=None, dtype=None):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding,
                           bias=bias, device=device, dtype=dtype)
        self.alpha = nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype))
        self.reset_alpha()

    def _alpha_view(self) -> Tensor:
        return self.alpha.view(1, -1, 1, 1)

    def _alpha_view_param(self) -> Tensor:
        return self.alpha.detach().view(-1, 1, 1, 1)


class BinaryLinear(_XnorMixin, nn.Linear):
    """XNOR-Net binary linear layer (seed ``binary_last_fc``) with one learned scalar ``alpha``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        nn.Linear.__init__(self, in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.alpha = nn.Parameter(torch.empty((), device=device, dtype=dtype))
        self.reset_alpha()

    def _alpha_view(self) -> Tensor:
        return self.alpha

    def _alpha_view_param(self) -> Tensor:
        return self.alpha.detach().reshape(1, 1)


# ---------------------------------------------------------------------------------------------
# RBNN layers
# ---------------------------------------------------------------------------------------------


class _RbnnMixin:
    """Shared code of :class:`RbnnConv2d` and :class:`RbnnLinear`."""

    weight: Tensor
    bias: Tensor | None
    alpha: nn.Parameter
    rotate: nn.Parameter
    R1: Tensor
    R2: Tensor

    def _init_rbnn(self, rotation_update: int, a32: bool, generator: torch.Generator | None) -> None:
        if int(rotation_update) < 1:
            raise ValueError(f"rotation_update must be >= 1, got {rotation_update}")
        self.rotation_update = int(rotation_update)
        self.a32 = bool(a32)
        self.k = 10.0  # seed defaults, replaced by begin_episode()
        self.t = 0.1
        self.epoch = -1
        fan_in = self.weight[0].numel()
        self.a, self.b = get_ab(fan_in)
        dev = self.weight.device
        self.register_buffer("R1", random_orthogonal(self.a, generator).to(dev))
        self.register_buffer("R2", random_orthogonal(self.b, generator).to(dev))

    def _rotated(self) -> Tensor:
        """``w3`` (float32, differentiable w.r.t. ``weight`` and ``rotate``)."""
        w2 = standardize_rows(self.weight)
        x = w2.reshape(w2.shape[0], self.a, self.b)
        rw = (self.R1.float().t() @ x.detach() @ self.R2.float()).reshape(w2.shape)
        return w2 + torch.abs(torch.sin(self.rotate.float())) * (rw - w2)

    def binary_weight(self) -> Tensor:
        """The +-1 weights used in the forward pass (float32, no gradient)."""
        with torch.no_grad(), _fp32(self.weight):
            return q.sign_pm1(self._rotated())

    @torch.no_grad()
    def update_rotation(self, iterations: int = 3) -> None:
        """Re-fit ``R1``, ``R2`` to the current weights (the RBNN alternating Procrustes steps).

        ``B = sign(R1^T X R2)``; ``R1 = V1 U1^T`` with ``U1 S V1^T = sum_i B_i R2^T X_i^T``;
        ``R2 = U2 V2^T`` with ``U2 S V2^T = sum_i X_i^T R1 B_i`` (vectorised over ``i``).
        """
        with _fp32(self.weight):
            w2 = standardize_rows(self.weight)
            x = w2.reshape(w2.shape[0], self.a, self.b)
            r1, r2 = self.R1.float(), self.R2.float()
            for _ in range(iterations):
                bmat = q.sign_pm1(r1.t() @ x @ r2)
                d1 = torch.einsum("nab,ncb->ac", bmat @ r2.t(), x)
                u1, _, v1h = torch.linalg.svd(d1)
                r1 = v1h.t() @ u1.t()
                d2 = torch.einsum("nab,nac->bc", x, r1 @ bmat)
                u2, _, v2h = torch.linalg.svd(d2)
                r2 = u2 @ v2h
            self.R1.copy_(r1)
            self.R2.copy_(r2)

    def begin_episode(self, episode: int, k: float, t: float) -> None:
        """Set the surrogate-gradient schedule and, every ``rotation_update`` episodes, the rotations."""
        self.epoch = int(episode)
        self.k = float(k)
        self.t = float(t)
        if self.epoch >= 0 and self.epoch % self.rotation_update == 0:
            self.update_rotation()

    def forward(self, x: Tensor, relu: bool = False, pool: nn.Module | None = None,
                input_relu: bool = False) -> Tensor:
        """The layer's output; ``relu``: ``torch.relu`` of it; ``pool``: then that module of it;
        ``input_relu``: the output for ``torch.relu(x)`` (the previous layer's ReLU, folded into
        the standardisation or sign of ``x``: the same values and gradients). In CPU float32
        training with a 2x2 max pool (or none, see :func:`_pooled_ok`), they are
        :class:`_ConvReluPool` (the same values, the backward from the pooled gradient)."""
        with _fp32(x):
            bw = q.rbnn_weight_sign(self._rotated(), self.k, self.t)
            if self.a32:
                ba = standardize_activations(x, relu=input_relu)
            else:  # == rbnn_act_sign(standardize_rows(x), t): k = 1, t' = max(t, 1)
                ba = centered_sign_ste(x, "rbnn", max(self.t, 1.0), relu=input_relu)
        if relu and _pooled_ok(self, ba, pool):
            return _ConvReluPool.apply(ba, bw, self.bias, self.alpha, self, False, None, _pool_size(pool))
        out = _op(self, ba, bw, self.bias)
        out = out * self._alpha_view().to(out.dtype)
        if relu:
            out = torch.relu(out) if _records_autograd(self, x) else out.relu_()
        return out if pool is None else pool(out)

    @torch.no_grad()
    def effective_weight(self) -> tuple[Tensor, Tensor | None]:
        """``(sign(w3) * alpha, bias * alpha)``: weights exactly ``+-alpha``."""
        a = self._alpha_view_param().float()
        w = self.binary_weight() * a
        b = None if self.bias is None else self.bias.detach().float() * a.reshape(-1)
        return w, b

    def export(self) -> tuple[nn.Module, nn.Module]:
        """``(plain layer, StandardizeActivation())`` for ``a32``, else ``SignActivation``."""
        w, b = self.effective_weight()
        transform = StandardizeActivation() if self.a32 else SignActivation(center=True)
        return _plain_like(self, w, b), transform


class RbnnConv2d(_RbnnMixin, nn.Conv2d):
    """Rotated binary convolution (RBNN) with per-output-channel ``alpha`` and ``theta``.

    Has a bias (zero-initialised) as in the seed.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, rotation_update: int = 1, a32: bool = True,
                 generator: torch.Generator | None = None, device=None, dtype=None):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding,
                           bias=bias, device=device, dtype=dtype)
        self._init_rbnn(rotation_update, a32, generator)
        self.alpha = nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype))
        self.rotate = nn.Parameter(torch.full((out_channels, 1, 1, 1), math.pi / 2, device=device, dtype=dtype))
        self.reset_alpha()

    @torch.no_grad()
    def reset_alpha(self) -> None:
        """``alpha = mean|W|`` per output channel."""
        self.alpha.copy_(self.weight.detach().float().abs().flatten(1).mean(1))

    def _alpha_view(self) -> Tensor:
        return self.alpha.view(1, -1, 1, 1)

    def _alpha_view_param(self) -> Tensor:
        return self.alpha.detach().view(-1, 1, 1, 1)

    def extra_repr(self) -> str:  # noqa: D102
        return super().extra_repr() + f", rotation_update={self.rotation_update}, a32={self.a32}"


class RbnnLinear(_RbnnMixin, nn.Linear):
    """Rotated binary linear layer (seed ``Binarize_last_fc``): scalar ``alpha``, per-row ``theta``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rotation_update: int = 1,
                 a32: bool = True, generator: torch.Generator | None = None, device=None, dtype=None):
        nn.Linear.__init__(self, in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_rbnn(rotation_update, a32, generator)
        self.alpha = nn.Parameter(torch.empty((), device=device, dtype=dtype))
        self.rotate = nn.Parameter(torch.full((out_features, 1), math.pi / 2, device=device, dtype=dtype))
        self.reset_alpha()

    @torch.no_grad()
    def reset_alpha(self) -> None:
        """``alpha = mean|W|`` over all weights."""
        self.alpha.copy_(self.weight.detach().float().abs().mean())

    def _alpha_view(self) -> Tensor:
        return self.alpha

    def _alpha_view_param(self) -> Tensor:
        return self.alpha.detach().reshape(1, 1)

    def extra_repr(self) -> str:  # noqa: D102
        return super().extra_repr() + f", rotation_update={self.rotation_update}, a32={self.a32}"


# ---------------------------------------------------------------------------------------------
# 8-bit layers
# ---------------------------------------------------------------------------------------------


#: largest fan-in (C_in * k * k) whose weight gradient :class:`_SmallFanInConv` takes as one batched product
SMALL_FAN_IN = 64


class _SmallFanInConv(torch.autograd.Function):
    """``F.conv2d`` whose forward and weight gradient, for a small fan-in (the first convolution:
    1 x 5 x 5), are the C kernels of :mod:`batmann.models.small_fan_in` where they apply (stride 1,
    no padding, a contiguous input; with the bias gradient; every core, the same bits on any
    thread count; the forward equals ``F.conv2d``'s to float32 rounding), else ``F.conv2d`` and
    one batched matrix product of the output gradient with the unfolded input,
    summed over the batch (about 5x faster on CPU than ``convolution_backward``'s; inside
    ``deterministic_kernels`` summed in the image ranges of :mod:`batmann.models.grouped_conv`).
    Either equals ``convolution_backward``'s to float32 rounding. The input gradient, when asked
    for, is ``convolution_backward``'s."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, bias: Tensor | None, layer: nn.Module) -> Tensor:  # noqa: D102
        ctx.save_for_backward(x, w)
        ctx.layer, ctx.has_bias = layer, bias is not None
        if small_fan_in.supports(x, w, layer) and suggest_memory_format(x) == torch.contiguous_format:
            return small_fan_in.forward(x, w, bias)  # every core, the same bits on any count
        return _op(layer, x, w, bias)

    @staticmethod
    def backward(ctx, g: Tensor):  # noqa: D102
        x, w = ctx.saved_tensors
        layer = ctx.layer
        ga = gw = gb = None
        if ctx.needs_input_grad[0]:
            ga = _conv_grads(g, x, w, layer, True, False)[0]
        with_bias = ctx.has_bias and ctx.needs_input_grad[2]
        if ctx.needs_input_grad[1] and small_fan_in.supports(x, w, layer):
            gw, gb = small_fan_in.grads(g, x, w.shape[-1], with_bias)
        elif ctx.needs_input_grad[1]:
            def part(lo: int, hi: int) -> Tensor:
                # (b, C k k, L) patches and (b, O, L) gradients -> (O, C k k), summed over the images
                cols = F.unfold(x[lo:hi], layer.kernel_size, layer.dilation, layer.padding, layer.stride)
                g2 = g[lo:hi].reshape(hi - lo, g.shape[1], -1)
                return torch.bmm(g2, cols.transpose(1, 2)).sum(0)

            if grouped_conv.active(x):  # deterministic: image ranges on every core, summed in order
                gw = grouped_conv.sum_in_order(grouped_conv.each(part, x.shape[0])).to(w.dtype).view_as(w)
            else:
                gw = part(0, x.shape[0]).view_as(w)
        if with_bias and gb is None:
            gb = g.sum((0, 2, 3))
        return ga, gw, gb, None


def _small_fan_in(layer: nn.Module, x: Tensor) -> bool:
    """Whether a training forward of ``layer`` on ``x`` takes :class:`_SmallFanInConv`: a
    convolution (no groups) with fan-in at most :data:`SMALL_FAN_IN`, under
    :func:`_training_kernels_apply`."""
    return (isinstance(layer, nn.Conv2d) and layer.groups == 1 and layer.padding_mode == "zeros"
            and not isinstance(layer.padding, str) and _fan_in(layer) <= SMALL_FAN_IN
            and _training_kernels_apply(layer, x))


class _Int8Mixin:
    weight: Tensor
    bias: Tensor | None
    scale_mode: str

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if _records_autograd(self, x):
            wq = q.int8_quantize_ste(self.weight, self.scale_mode)
            if _small_fan_in(self, x):
                return _SmallFanInConv.apply(x, wq, self.bias, self)
            return _op(self, x, wq, self.bias)
        return _op(self, x, self._inference_weight(), self.bias)

    def _inference_weight(self) -> Tensor:
        """The 8-bit weights (dequantised), kept between inference calls while the weights are unchanged."""
        key = (self.weight.data_ptr(), self.weight._version, self.weight.device, self.scale_mode)
        cached = getattr(self, "_w8_cache", None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, q.int8_dequantize(self.weight, self.scale_mode))
            self._w8_cache = cached
        return cached[1]

    def int8_levels(self) -> tuple[Tensor, Tensor]:
        """``(levels, scale)``: integer-valued levels in [-127, 127] (``absmax``) and the scale."""
        return q.int8_levels(self.weight, self.scale_mode)

    @torch.no_grad()
    def effective_weight(self) -> tuple[Tensor, Tensor | None]:
        """The dequantised 8-bit weights and the (unquantised) bias."""
        b = None if self.bias is None else self.bias.detach().clone()
        return q.int8_dequantize(self.weight, self.scale_mode), b

    def export(self) -> tuple[nn.Module, None]:
        """``(plain layer with the dequantised 8-bit weights, None)``: inputs stay real."""
        w, b = self.effective_weight()
        return _plain_like(self, w, b), None

    def extra_repr(self) -> str:  # noqa: D102
        return super().extra_repr() + f", scale_mode={self.scale_mode!r}"


class Int8Conv2d(_Int8Mixin, nn.Conv2d):
    """Convolution with 8-bit weights (seed ``first_conv``; no bias by default, as the seed)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = False, scale_mode: str = "absmax", device=None, dtype=None):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding,
                           bias=bias, device=device, dtype=dtype)
        q.int8_scale(torch.ones(1), scale_mode)  # validates the mode
        self.scale_mode = scale_mode


class Int8Linear(_Int8Mixin, nn.Linear):
    """Linear layer with 8-bit weights (seed ``last_fc``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 scale_mode: str = "absmax", device=None, dtype=None):
        nn.Linear.__init__(self, in_features, out_features, bias=bias, device=device, dtype=dtype)
        q.int8_scale(torch.ones(1), scale_mode)
        self.scale_mode = scale_mode


QUANTIZED_LAYERS = (XnorConv2d, BinaryLinear, RbnnConv2d, RbnnLinear, Int8Conv2d, Int8Linear)


def export_layer(layer: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """Export one layer: quantised layers via their ``export()``, plain Conv2d/Linear as a copy."""
    if isinstance(layer, QUANTIZED_LAYERS):
        return layer.export()
    if type(layer) in (nn.Conv2d, nn.Linear):
        return copy.deepcopy(layer), None
    raise TypeError(f"cannot export a {type(layer).__name__} layer")
