"""Rounding-error bounds for the tests that compare floating-point results computed in a different order.

Project rule: never assert bit-equality of floating-point results that two implementations (or two batch
sizes, kernels, CPUs) compute in a different order; derive the tolerance from the precision, the
accumulation lengths and the magnitudes involved. Every tolerance in the suite that compares such
results comes from the helpers here, so the reasoning lives in one place.

The model (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., ch. 2-3):

- one rounding: ``fl(a op b) = (a op b)(1 + d)``, ``|d| <= u`` (unit roundoff: 2**-24 in float32,
  2**-53 in float64);
- an ``n``-term sum or dot product, in *any* order, blocking or FMA use:
  ``|fl(sum) - sum| <= gamma_n * sum |terms|``, ``gamma_n = n u / (1 - n u)`` (section 3.1). Two kernels
  that sum in different orders (oneDNN vs ONNX Runtime's MLAS, batch 1 vs batch 3, one CPU's AVX-512
  blocking vs another's AVX2) each lie within that of the exact value, so they differ by at most twice it;
- a network (:func:`forward_error_bound`): every rounding is a local error on some intermediate value,
  which reaches the output through the (exact) Jacobian; summing ``|Jacobian| * local bound`` gives a
  first-order worst case. Summed as independent zero-mean variables instead (the probabilistic model
  of Higham & Mary, SIAM J. Sci. Comput. 41 (2019) A2815, with Hoeffding's inequality) the bound shrinks
  by about ``sqrt`` of the number of roundings; that ``probable`` bound fails with probability below
  ``2 exp(-LAMBDA^2 / 2)`` = 2.5e-14 per compared element;
- two implementations in one precision differ by at most the sum of their bounds: ``2 x`` the bound.

Gradients after many layers (:func:`chain_atol`) use the norm-wise form: ``depth`` dependent sums of at
most ``n`` terms, relative to the tensor's scale; Adam's normalised step amplifies a gradient's error by
up to ``lr / eps`` (:func:`adam_sensitivity`), which is why the learner comparison runs in float64.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: Unit roundoff ``u`` (half the spacing of numbers in [1, 2)) per floating-point type.
UNIT_ROUNDOFF: Mapping[torch.dtype, float] = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24,
                                              torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}

#: Accuracy of the elementary functions in the libraries compared here, in units of ``u`` relative to the
#: result: torch (SLEEF, <= 1 ulp) measured 1.06 u on tanh, ONNX Runtime's MLAS rational tanh 5.5 u, on
#: 2.2 M float32 points in [-12, 12] and [1e-8, 10]; 16 u leaves a 3x margin over the worst of them.
ELEMENTARY_FUNCTION_ULPS = 16.0


def unit_roundoff(dtype: torch.dtype | np.dtype | type) -> float:
    """``u`` of a torch or numpy floating-point dtype (2**-24 for float32, 2**-53 for float64)."""
    if not isinstance(dtype, torch.dtype):
        dtype = torch.from_numpy(np.zeros(0, dtype=np.dtype(dtype))).dtype
    if dtype not in UNIT_ROUNDOFF:
        raise TypeError(f"no unit roundoff for {dtype}: not a floating-point type")
    return UNIT_ROUNDOFF[dtype]


def gamma(n: int, dtype: torch.dtype | np.dtype | type) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)``: worst-case relative error of an ``n``-term sum.

    Raises:
        ValueError: ``n u >= 1`` (the bound says nothing: use a wider type or a shorter sum).
    """
    nu = max(int(n), 0) * unit_roundoff(dtype)
    if nu >= 1.0:
        raise ValueError(f"gamma_{n} is unbounded in {dtype} (n u = {nu:.3g} >= 1)")
    return nu / (1.0 - nu)


def sum_atol(n: int, abs_sum: float | np.ndarray | torch.Tensor, dtype: torch.dtype | np.dtype | type
             ) -> float | np.ndarray | torch.Tensor:
    """Largest error of an ``n``-term sum or dot product in ``dtype``, any order: ``gamma_n * sum|terms|``.

    Two implementations that sum in different orders differ by at most twice this.
    """
    return gamma(n, dtype) * abs_sum


def cast_atol(value: float | np.ndarray | torch.Tensor, dtype: torch.dtype | np.dtype | type
              ) -> float | np.ndarray | torch.Tensor:
    """Largest error of rounding ``value`` once to ``dtype`` (round to nearest): ``u |value|``."""
    return unit_roundoff(dtype) * abs(value)


def chain_atol(depth: int, n: int, scale: float, dtype: torch.dtype | np.dtype | type) -> float:
    """First-order error bound of a result computed through ``depth`` dependent accumulations, each of
    at most ``n`` terms, whose absolute terms are of magnitude ``scale``: ``depth * gamma_n * scale``.

    The norm-wise form of :func:`forward_error_bound` (each layer's relative error adds to the next, to
    first order), for results whose per-element terms are not tracked (gradients through a network).
    """
    return depth * gamma(n, dtype) * scale


def accumulation_lengths(model: nn.Module, *inputs: torch.Tensor) -> dict[str, int]:
    """Longest sum each Linear / Conv2d / LayerNorm layer of ``model`` computes in forward or backward.

    For a layer with input batch ``B`` and ``P`` output positions per sample: the forward fan-in
    (``C_in k_h k_w + 1`` or ``in_features + 1`` with the bias), the weight gradient's sum over
    ``B * P`` positions, and the input gradient's sum over ``C_out k_h k_w`` (or ``out_features``).
    LayerNorm: its normalised size (the mean and variance sums) and the ``B`` of its affine gradients.

    Shapes: ``inputs`` as ``model(*inputs)`` takes them. Returns ``{layer name: length}``.
    """
    lengths: dict[str, int] = {}
    hooks = []

    def hook(name: str) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        def record(layer: nn.Module, args: tuple, out: torch.Tensor) -> None:
            batch = int(args[0].shape[0])
            if isinstance(layer, nn.Conv2d):
                kh, kw = layer.kernel_size
                fan_in = layer.in_channels // layer.groups * kh * kw + (layer.bias is not None)
                positions = batch * int(out.shape[-1]) * int(out.shape[-2])
                fan_out = layer.out_channels // layer.groups * kh * kw
                n = max(fan_in, positions, fan_out)
            elif isinstance(layer, nn.Linear):
                positions = int(np.prod(out.shape[:-1]))
                n = max(layer.in_features + (layer.bias is not None), positions, layer.out_features)
            else:  # LayerNorm
                n = max(int(np.prod(layer.normalized_shape)), int(np.prod(out.shape[:-1])))
            lengths[name] = max(lengths.get(name, 0), n)
        return record

    for name, layer in model.named_modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear, nn.LayerNorm)):
            hooks.append(layer.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return lengths


def adam_sensitivity(optimizer: torch.optim.Adam, param: torch.Tensor) -> torch.Tensor:
    """Per-element bound on ``|d (Adam's step of param) / d (its gradient)|`` for the step just taken.

    Adam (no weight decay) moves ``w`` by ``lr * m_hat / (sqrt(v_hat) + eps)`` with
    ``m_hat = m_t / (1 - b1^t)``, ``v_hat = v_t / (1 - b2^t)``, ``m_t = b1 m + (1 - b1) g``,
    ``v_t = b2 v + (1 - b2) g^2``. Differentiating in ``g`` (``a = (1 - b1) / (1 - b1^t)``,
    ``c = (1 - b2) / (1 - b2^t)``, and ``c g^2 <= v_hat``)::

        |d step / d g| <= lr * (a + sqrt(c) * |m_hat| / (sqrt(v_hat) + eps)) / (sqrt(v_hat) + eps)

    which is ``~lr / eps`` for an element whose gradient is ~0 (Adam normalises every element's step, so
    a rounding-noise gradient gets a step up to ``lr``) and ``~lr / |g|`` otherwise. Evaluated on the
    optimizer's state *after* the step. Shapes: ``param`` any -> same shape, float64.
    """
    state = optimizer.state[param]
    group = next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))
    if group.get("weight_decay", 0.0) or group.get("amsgrad", False) or group.get("maximize", False):
        raise ValueError("adam_sensitivity covers plain Adam (no weight decay, amsgrad or maximize)")
    lr, (b1, b2), eps = float(group["lr"]), group["betas"], float(group["eps"])
    t = float(state["step"])
    a, c = (1.0 - b1) / (1.0 - b1 ** t), (1.0 - b2) / (1.0 - b2 ** t)
    m_hat = state["exp_avg"].double() / (1.0 - b1 ** t)
    denom = (state["exp_avg_sq"].double() / (1.0 - b2 ** t)).sqrt() + eps
    return lr * (a + math.sqrt(c) * m_hat.abs() / denom) / denom


# --- linearised forward error of the policy network ---------------------------------------------------


def _layer_norm_rounding(layer: nn.LayerNorm, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bound on LayerNorm's own rounding error on an exact input ``x`` (``(..., n)`` float64).

    ``y = (x - mean) / s * w + b``, ``s = sqrt(var + eps)``: the mean (``n`` terms), the variance from
    either ``mean((x - mean)^2)`` or ``mean(x^2) - mean^2`` (ONNX Runtime's one-pass form; bounded with
    ``mean(x^2) + mean^2``, which covers both), the square root (halves a relative error, then rounds),
    the subtraction, division, scale and shift (one rounding each).
    """
    n = int(np.prod(layer.normalized_shape))
    u = unit_roundoff(dtype)
    mean = x.mean(-1, keepdim=True)
    d = x - mean
    var = x.var(-1, unbiased=False, keepdim=True)
    s = (var + layer.eps).sqrt()
    z = d / s
    w = layer.weight.detach().double() if layer.weight is not None else torch.ones(n, dtype=torch.float64)
    b = layer.bias.detach().double() if layer.bias is not None else torch.zeros(n, dtype=torch.float64)
    mean_err = gamma(n, dtype) * x.abs().mean(-1, keepdim=True)
    var_rel = gamma(n + 3, dtype) * (x.pow(2).mean(-1, keepdim=True) + mean.pow(2)) / (var + layer.eps)
    s_rel = 0.5 * var_rel + 2.0 * u
    return w.abs() * ((mean_err + u * d.abs()) / s + z.abs() * s_rel) + 3.0 * u * ((z * w).abs() + b.abs())


def _local_rounding(layer: nn.Module, x: torch.Tensor, out: torch.Tensor, dtype: torch.dtype
                    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """Rounding error ``layer`` adds to its output when its input ``x`` is exact (float64): per output
    element, ``(worst-case bound, Hoeffding variance proxy or None)``; ``None`` for an exact layer.

    Conv2d / Linear with fan-in ``n`` (plus the bias), ``T = |W| |x| + |b|``: the computed sum is
    ``sum_j s_j theta_j`` off, over its ``n`` roundings ``|theta_j| <= u`` of partial sums ``|s_j| <= T``
    (products too, without FMA): worst case ``gamma_n T``; proxy ``sum_j (u s_j)^2 <= n (u T)^2``.
    Tanh: the library's accuracy, ``ELEMENTARY_FUNCTION_ULPS u |tanh x|``; LayerNorm:
    :func:`_layer_norm_rounding`. These two have no proxy: their errors are not independent sums of
    roundings (a LayerNorm's mean and variance are shared by its outputs, a library's tanh error can
    be biased), so they count at their worst case. ReLU, Flatten: exact.
    """
    u = unit_roundoff(dtype)
    if isinstance(layer, (nn.Conv2d, nn.Linear)):
        w = layer.weight.detach().abs()
        b = layer.bias.detach().abs() if layer.bias is not None else None
        if isinstance(layer, nn.Conv2d):
            terms = F.conv2d(x.abs(), w, b, layer.stride, layer.padding, layer.dilation, layer.groups)
            fan_in = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
        else:
            terms = F.linear(x.abs(), w, b)
            fan_in = layer.in_features
        n = fan_in + (b is not None)
        return gamma(n, dtype) * terms, n * (u * terms) ** 2
    if isinstance(layer, nn.Tanh):
        return ELEMENTARY_FUNCTION_ULPS * u * out.abs(), None
    if isinstance(layer, nn.LayerNorm):
        return _layer_norm_rounding(layer, x, dtype), None
    if isinstance(layer, (nn.ReLU, nn.Flatten, nn.Identity)):
        return None
    raise TypeError(f"no rounding model for {type(layer).__name__}")


#: Hoeffding multiplier of the probable bound: ``P(|error| > LAMBDA sigma) <= 2 exp(-LAMBDA^2 / 2)``,
#: 2.5e-14 per compared element for 8.
LAMBDA = 8.0


class ErrorBound:
    """Exact value of a computation and two first-order bounds on its rounding error in a precision.

    ``worst``: ``sum_k |dy/dz_k| |delta_k|_max`` over every local error ``delta_k``: sound for any
    summation order and any data, but it lets every rounding conspire, so it is ``sqrt(n)`` to ``n``
    times the typical error (0.013 on the export tests' small policy, whose actions differ by 4e-6).

    ``probable``: the roundings inside sums are independent with mean 0 (Higham & Mary's model), so
    by Hoeffding's inequality their total exceeds ``LAMBDA * sigma`` with probability at most
    ``2 exp(-LAMBDA^2 / 2)``. Identical computations round identically (a uniform image region gives
    every position of a conv channel the same patch), so a conv channel's positions are summed as fully
    correlated (linearly, then squared) and only channels, linear outputs and the terms of one sum count
    as independent. Errors without a variance proxy (input scaling, tanh, LayerNorm) are added at
    their worst case. Never more than ``worst``.
    Shapes: all ``(B, K)`` float64.
    """

    def __init__(self, value: torch.Tensor, worst: torch.Tensor, probable: torch.Tensor) -> None:
        self.value, self.worst, self.probable = value, worst, torch.minimum(probable, worst)


def forward_error_bound(model: nn.Module, *inputs: torch.Tensor, dtype: torch.dtype = torch.float32,
                        rounded_inputs: Sequence[tuple[nn.Module, float]] = ()) -> ErrorBound:
    """First-order bounds on ``|model(*inputs) computed in dtype - exact|``, per output element.

    Every rounding is a local error ``delta_k`` on some intermediate ``z_k`` (a layer's output), bounded by
    :func:`_local_rounding`; to first order in ``u`` the output moves by ``sum_k (dy/dz_k) delta_k``. The
    Jacobian is the exact one (autograd on a float64 copy), so errors are not compounded through ``|W|``
    layer after layer, which would overstate them by the product of the layers' l1 row norms.
    ``rounded_inputs``: ``(layer, k)`` pairs whose *input* carries ``k`` roundings relative to its value
    (``obs / 255`` feeding the first convolution: ``k = 2`` covers a runtime that folds it into
    ``obs * (1 / 255)``).

    The model must be per-sample (no batch statistics) with leaf layers Conv2d, Linear, LayerNorm, Tanh,
    ReLU, Flatten; its remaining ops must be exact (slicing, concatenation, ``min``) or be accounted for
    by the caller (a final ``tanh``). Shapes: ``model(*inputs) -> (B, K)``; returns an
    :class:`ErrorBound` of ``(B, K)`` tensors.
    """
    exact = copy.deepcopy(model).double().eval()
    for p in exact.parameters():
        p.requires_grad_(True)
    # (tensor whose gradient we read, worst-case local error, variance proxy or None, is a conv output)
    records: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]] = []
    roundings = {id(exact.get_submodule(name)): k for m, k in rounded_inputs
                 for name, m_orig in model.named_modules() if m_orig is m}
    hooks = []

    def pre_hook(layer: nn.Module, args: tuple) -> tuple:
        x = args[0].detach().requires_grad_(True)
        records.append((x, roundings[id(layer)] * unit_roundoff(dtype) * x.detach().abs(), None, False))
        return (x, *args[1:])

    def hook(layer: nn.Module, args: tuple, out: torch.Tensor) -> None:
        local = _local_rounding(layer, args[0].detach(), out.detach(), dtype)
        if local is not None:
            out.retain_grad()
            records.append((out, *local, isinstance(layer, nn.Conv2d)))

    for layer in exact.modules():
        if id(layer) in roundings:
            hooks.append(layer.register_forward_pre_hook(pre_hook))
        if not list(layer.children()):
            hooks.append(layer.register_forward_hook(hook))
    try:
        y = exact(*[t.double() if t.is_floating_point() else t for t in inputs])
    finally:
        for h in hooks:
            h.remove()
    if y.dim() != 2:
        raise ValueError(f"forward_error_bound needs a (B, K) output, got {tuple(y.shape)}")
    worst, var, correlated = (torch.zeros_like(y, dtype=torch.float64) for _ in range(3))
    for i in range(y.shape[1]):
        for t, *_ in records:
            t.grad = None
        y[:, i].sum().backward(retain_graph=True)
        with torch.no_grad():
            for t, local, proxy, is_conv in records:
                if t.grad is None:
                    continue
                w = (t.grad.abs() * local).flatten(1).sum(1)
                worst[:, i] += w
                if proxy is None:
                    correlated[:, i] += w
                elif is_conv:  # (B, C, H, W): positions of a channel correlated, channels independent
                    var[:, i] += ((t.grad.abs() * proxy.sqrt()).flatten(2).sum(2) ** 2).sum(1)
                else:
                    var[:, i] += (t.grad ** 2 * proxy).flatten(1).sum(1)
    return ErrorBound(y.detach(), worst, LAMBDA * var.sqrt() + correlated)


class _PolicyMean(nn.Module):
    """The pre-``tanh`` action mean of a :class:`~covr_ray.rl.networks.PixelPolicy`: ``(B, C, H, W) -> (B, A)``."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy.actor(self.policy.encoder(obs))[:, :self.policy.actor.action_dim]


def policy_error_bound(policy: nn.Module, obs: torch.Tensor, dtype: torch.dtype = torch.float32) -> ErrorBound:
    """Exact value and rounding-error bounds of a :class:`~covr_ray.rl.networks.PixelPolicy`'s action
    ``tanh(mean)``: the final tanh scales the mean's bounds by its slope ``1 - a^2`` and adds its own.

    Shapes: ``obs: (B, C, H, W)`` uint8 -> bounds of ``(B, action_dim)``.
    """
    mean = forward_error_bound(_PolicyMean(policy), obs, dtype=dtype, rounded_inputs=[(policy.encoder.convs[0], 2.0)])
    action = torch.tanh(mean.value)
    slope, own = 1.0 - action ** 2, ELEMENTARY_FUNCTION_ULPS * unit_roundoff(dtype) * action.abs()
    return ErrorBound(action, slope * mean.worst + own, slope * mean.probable + own)


def export_verification_atol(policy: nn.Module, samples: int = 16, seed: int = 0) -> float:
    """Tolerance for :func:`covr_ray.export.verify_artifact` on ``policy``: twice (exported runtime and
    torch, both float32) the largest probable bound of its actions on the verification observations."""
    from covr_ray.export import verification_inputs

    obs = torch.from_numpy(verification_inputs(tuple(policy.encoder.obs_shape), samples, seed))
    return 2.0 * float(policy_error_bound(policy, obs).probable.max())


def assert_close_within(actual: np.ndarray | torch.Tensor, expected: np.ndarray | torch.Tensor,
                        atol: np.ndarray | torch.Tensor | float, what: str = "values") -> None:
    """Element-wise ``|actual - expected| <= atol`` (``atol`` broadcasts), with the worst element named.

    Raises:
        AssertionError: some element is further apart than its bound.
    """
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    tol = np.broadcast_to(np.asarray(atol, dtype=np.float64), np.broadcast_shapes(a.shape, b.shape))
    diff = np.abs(a - b)
    bad = ~(diff <= tol)
    if bad.any():
        ratio = np.where(tol > 0, diff / np.where(tol > 0, tol, 1.0), np.inf)
        i = np.unravel_index(int(np.argmax(np.where(bad, ratio, -1.0))), ratio.shape)
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.size} elements exceed their derived bound; "
                             f"worst at {tuple(int(k) for k in i)}: |{a[i]!r} - {b[i]!r}| = {diff[i]:.3g} > "
                             f"{tol[i]:.3g}")
