"""Batch normalisation as one primitive.

The forward is the textbook formula (Ioffe & Szegedy 2015, Algorithm 1) on raw
arrays, computed in place:

    mu = mean(x),  var = mean((x - mu)^2),  xhat = (x - mu) / sqrt(var + eps)
    y  = w * xhat + b

with the means taken over `axes` (the batch axis and the spatial axes).
Composed of elementwise primitives, the same formula records six full-size
intermediates in the graph and makes about twice as many passes over memory;
as one primitive it keeps only its input x.

The VJP, with n the number of values each mean is taken over and g = dL/dy:

    dL/db = sum(g),   dL/dw = sum(g * xhat)
    dL/dx = w / sqrt(var + eps) * (g - sum(g) / n - xhat * sum(g * xhat) / n)

It is written twice. In Tensor operations (`_vjp_differentiable`), which is
what a recorded backward pass (create_graph=True: MAML's inner step) uses, so
that it can be differentiated again. And on raw arrays (`_vjp_arrays`, and
`_vjp_arrays_affine` for layer norm's per-feature gains), which a plain
backward pass uses, since nothing will differentiate it: the same formula,
fewer passes over memory. tests/test_functional.py checks both, the
first to third order.
"""
import math

from .backend import xp
from .ops import fits, unbroadcast
from .tensor import Saved, Tensor, enable_grad, grad, is_grad_enabled, primitive


def _count(shape, axes):
    """How many values each mean is taken over."""
    return math.prod(shape[a] for a in axes)


def _sum_product(a, b, axes):
    """sum(a * b) over `axes` (kept as size 1), without a full-size temporary when
    `axes` are the trailing ones: then it is one batch of dot products."""
    n = len(axes)
    if (axes == tuple(range(a.ndim - n, a.ndim)) and _count(a.shape, axes) >= 256
            and a.flags.c_contiguous and b.flags.c_contiguous):
        lead, size = a.shape[:a.ndim - n], _count(a.shape, axes)
        dots = a.reshape(lead + (1, size)) @ b.reshape(lead + (size, 1))
        return dots.reshape(lead + (1,) * n)
    return (a * b).sum(axis=axes, keepdims=True)


@primitive
def batch_norm(x, w, b, axes, eps=1e-5):
    """y = w * (x - mean) / sqrt(var + eps) + b, statistics over `axes` (kept as size 1).

    w and b already have the statistics' shape (or broadcast to it).
    """
    n = _count(x.shape, axes)
    mean = x.mean(axis=axes, keepdims=True)
    # var = mean(x^2) - mean^2 needs no full-size x - mean; it loses about
    # log10(1 + mean^2 / var) digits, so it is used only where the pass it
    # saves is worth it (statistics over 256 values or more) and the mean is
    # not large beside the spread (mean^2 <= 64 var in every channel)
    centred = None
    if n >= 256:
        var = _sum_product(x, x, axes) / n - mean * mean
    if n < 256 or not bool((mean * mean <= 64 * var).all()):
        centred = x - mean
        var = _sum_product(centred, centred, axes) / n
    inv_std = 1 / xp.sqrt(var + eps)
    scale = w * inv_std
    if not (fits(scale.shape, x.shape) and fits(b.shape, x.shape)):
        y = (x - mean) * scale + b               # parameters carry axes x lacks
    elif centred is None:
        y = x * scale                            # y = x * w/sigma + (b - mean * w/sigma)
        y += b - mean * scale
    else:
        y = centred
        y *= scale
        y += b
    return Saved(y, mean=mean, inv_std=inv_std)


def _per_group(p, ndim, axes):
    """Whether parameter p is constant along the statistics' axes (batch norm's
    case; layer norm's weight varies along them)."""
    lead = ndim - p.ndim
    return all(a < lead or p.shape[a - lead] == 1 for a in axes)


@batch_norm.vjp
def _batch_norm_vjp(g, out, x, w, b, axes, eps=1e-5, saved=None):
    if is_grad_enabled() or out.shape != x.shape:
        return _vjp_differentiable(g, x, w, b, axes, eps)
    if not (_per_group(w, x.ndim, axes) and _per_group(b, x.ndim, axes)):
        return _vjp_arrays_affine(g, x, w, b, axes, saved["mean"], saved["inv_std"])
    return _vjp_arrays(g, x, w, b, axes, saved["mean"], saved["inv_std"])


def _vjp_differentiable(g, x, w, b, axes, eps):
    """The VJP in Tensor operations: differentiable to any order."""
    centred = x - x.mean(axis=axes, keepdims=True)
    inv_std = ((centred * centred).mean(axis=axes, keepdims=True) + eps).sqrt() ** -1
    xhat = centred * inv_std
    gx = gw = gb = None
    if x.requires_grad:
        gxhat = g * w
        gx = unbroadcast(inv_std * (gxhat - gxhat.mean(axis=axes, keepdims=True)
                                    - xhat * (gxhat * xhat).mean(axis=axes, keepdims=True)),
                         x.shape)
    if w.requires_grad:
        gw = unbroadcast(g * xhat, w.shape)
    if b.requires_grad:
        gb = unbroadcast(g, b.shape)
    return gx, gw, gb


def _vjp_arrays(g, x, w, b, axes, mean, inv_std):
    """The same VJP on raw arrays, first-order backward only, reusing the forward's
    mean mu and 1/sigma. With A = w / sigma and S = sum(g * xhat) = (sum(g * x) - mu * sum(g)) / sigma,

        dL/dx = A * g - (A * S / (n * sigma)) * x + A * (mu * S / sigma - sum(g)) / n:

    two full-size products and a constant per channel, where the textbook
    form needs x - mu and xhat as full-size arrays first."""
    n = _count(x.shape, axes)
    ga, xa = xp.ascontiguousarray(g.data), x.data
    sum_g = ga.sum(axis=axes, keepdims=True)                                  # dL/db before grouping
    sum_g_xhat = (_sum_product(ga, xa, axes) - mean * sum_g) * inv_std        # dL/dw before grouping
    gx = None
    if x.requires_grad:
        a = w.data * inv_std
        gx = ga * a
        gx += xa * (-a * inv_std * sum_g_xhat / n)
        gx += a * (mean * inv_std * sum_g_xhat - sum_g) / n
        gx = Tensor(gx)
    gw = unbroadcast(Tensor(sum_g_xhat), w.shape) if w.requires_grad else None
    gb = unbroadcast(Tensor(sum_g), b.shape) if b.requires_grad else None
    return gx, gw, gb


def _vjp_arrays_affine(g, x, w, b, axes, mean, inv_std):
    """The raw-array VJP where w or b vary along the statistics' axes (layer
    norm: one gain per feature, statistics over the features). The textbook
    form with gxhat = g * w, reusing the forward's mu and 1/sigma:

        dL/dx = (gxhat - mean(gxhat) - xhat * mean(gxhat * xhat)) / sigma
        dL/dw = sum(g * xhat),   dL/db = sum(g)   (over the axes w, b lack)"""
    n = _count(x.shape, axes)
    ga = xp.ascontiguousarray(g.data)
    xhat = x.data - mean
    xhat *= inv_std
    gx = gw = gb = None
    if x.requires_grad:
        gxhat = ga * w.data
        gx = gxhat - gxhat.sum(axis=axes, keepdims=True) / n
        gx -= xhat * (_sum_product(gxhat, xhat, axes) / n)
        gx *= inv_std
        gx = Tensor(gx)
    if w.requires_grad:
        xhat *= ga                                                  # g * xhat, in place
        gw = unbroadcast(Tensor(xhat), w.shape)
    if b.requires_grad:
        gb = unbroadcast(Tensor(ga), b.shape)
    return gx, gw, gb


# -- convolution followed by batch norm, through the im2col matrix's moments ----------
# When the im2col matrix U (K = C*kh*kw rows, L = N*OH*OW columns) is thin, as
# for a first layer on grey or RGB images (K = 9 or 27 rows against O = 64
# outputs), the statistics batch norm needs of y = W U + b follow from U's own
# mean u and covariance Sigma (K x K), without y:
#
#     mean(y) = W u + b,    var(y) = diag(W Sigma W^T)
#
# and the normalised output is again one matrix product, W' [U; 1], with
# W' = [s W | beta - s W u] and s = gamma / sqrt(var + eps) (the conv bias b
# cancels, as it always does before batch norm). The first-order VJP needs one
# more product, g [U; 1]^T = [g U^T | sum(g)], and small matrices only:
#
#     G = g U^T - sum(g) u^T  (= sum g (u - mean u)^T),   dL/dgamma = S = diag(G W^T) / sigma
#     dL/dW = A G - (A S / (L sigma)) L W Sigma,         A = gamma / sigma
#     dL/dbeta = sum(g),   dL/db = 0
#
# so neither y nor any full-size elementwise pass exists, forward or backward.
# A recorded backward (or one that needs dL/dx) differentiates the two
# primitives it fuses instead, recomputed (`_conv_batch_norm_composite`).
def _bn_axes(ndim):
    return (ndim - 3, ndim - 2, ndim - 1)                   # (N, OH, OW) of (..., O, N, OH, OW)


def _conv_batch_norm_composite(x, w, b, gamma, beta, padding, eps):
    """The same function from the primitives it fuses (Tensor ops)."""
    y = ops.conv_bias(x, w, b.reshape(b.shape + (1, 1, 1)), padding=padding)
    shape = gamma.shape + (1, 1, 1)
    return batch_norm(y, gamma.reshape(shape), beta.reshape(shape), axes=_bn_axes(y.ndim), eps=eps)


@primitive
def conv_batch_norm(x, w, b, gamma, beta, padding=0, eps=1e-5):
    """batch_norm(conv(x, w) + b) per output channel over (N, OH, OW), layout
    (..., C, N, H, W); b, gamma, beta of shape w.shape[:-4] + (O,). Stride 1."""
    out_c, in_c, kh, kw = w.shape[-4:]
    k = in_c * kh * kw
    ua, (n, oh, ow) = windows._im2col(x, kh, kw, 1, padding, ones_row=True)   # [U; 1]
    u = ua[..., :k, :]
    size = u.shape[-1]
    u_mean = u.mean(axis=-1, keepdims=True)                                   # (..., K, 1)
    centred = u - u_mean
    cov = centred @ xp.swapaxes(centred, -1, -2) / size                       # (..., K, K)
    wm = w.reshape(w.shape[:-3] + (k,))                                       # (..., O, K)
    wu = wm @ u_mean                                                          # (..., O, 1)
    var = ((wm @ cov) * wm).sum(axis=-1, keepdims=True)
    inv_std = 1 / xp.sqrt(var + eps)
    scale = gamma[..., None] * inv_std
    w_out = xp.concatenate([wm * scale, beta[..., None] - scale * wu], axis=-1)   # W'
    out = w_out @ ua
    lead = out.shape[:-2]
    return Saved(out.reshape(lead + (out_c, n, oh, ow)), u_mean=u_mean, cov=cov, inv_std=inv_std)


@conv_batch_norm.vjp
def _conv_batch_norm_vjp(g, out, x, w, b, gamma, beta, padding=0, eps=1e-5, saved=None):
    if is_grad_enabled() or x.requires_grad or out.shape[:-4] != w.shape[:-4]:
        inputs = [x, w, b, gamma, beta]
        with enable_grad():
            y = _conv_batch_norm_composite(x, w, b, gamma, beta, padding, eps)
        wanted = [t for t in inputs if t.requires_grad]
        grads = iter(grad(y, wanted, grad_outputs=g, create_graph=is_grad_enabled(),
                          allow_unused=True))
        return tuple(next(grads) if t.requires_grad else None for t in inputs)
    u_mean, cov, inv_std = saved["u_mean"], saved["cov"], saved["inv_std"]
    out_c, in_c, kh, kw = w.shape[-4:]
    k, wm = in_c * kh * kw, w.data.reshape(w.shape[:-3] + (in_c * kh * kw,))
    ua, _ = windows._im2col(x.data, kh, kw, 1, padding, ones_row=True)
    gf = g.data.reshape(g.shape[:-3] + (-1,))                                 # (..., O, L)
    size = gf.shape[-1]
    g_ua = gf @ xp.swapaxes(ua, -1, -2)                                       # [g U^T | sum(g)]
    sum_g = g_ua[..., k:]                                                     # (..., O, 1)
    gc = g_ua[..., :k] - sum_g * xp.swapaxes(u_mean, -1, -2)                  # G
    s = (gc * wm).sum(axis=-1, keepdims=True) * inv_std                       # dL/dgamma
    a = gamma.data[..., None] * inv_std
    gw = a * gc - (a * s * inv_std) * (wm @ cov)
    result = (None,
              Tensor(gw.reshape(w.shape)) if w.requires_grad else None,
              Tensor(xp.zeros(b.shape, dtype=b.dtype)) if b.requires_grad else None,
              Tensor(s[..., 0]) if gamma.requires_grad else None,
              Tensor(sum_g[..., 0]) if beta.requires_grad else None)
    return result


from . import ops, windows  # noqa: E402  (normalization is imported by ops, after windows)
