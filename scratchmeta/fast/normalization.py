"""Fast batch norm: replaces normalization.batch_norm (forward and VJP).

- In place, one-pass variance: var = mean(x^2) - mean^2 needs no full-size
  x - mean; it loses about log10(1 + mean^2 / var) digits, so it is used only
  where the pass it saves is worth it (statistics over 256 values or more)
  and the mean is not large beside the spread (mean^2 <= 64 var everywhere).
- Saved statistics: the forward hands mu and 1/sigma to the VJP.
- Sums over trailing axes (a layer norm's width; batch norm's (N, H, W) in
  the CNHW layout) as products with a vector of ones (fast/reductions.py).
- Raw-array VJP for a plain backward (grad mode off): with A = w / sigma and
  S = sum(g * xhat) = (sum(g * x) - mu sum(g)) / sigma,

      dL/dx = A g - (A S / (n sigma)) x + A (mu S / sigma - sum(g)) / n

  two full-size products and a constant per channel, where the textbook form
  needs x - mu and xhat as full-size arrays first. Layer norm (w, b varying
  along the statistics' axes) gets the textbook form on raw arrays.
A recorded backward (create_graph=True) runs the core VJP, which differentiates.
"""
import math

from .. import normalization
from ..backend import xp
from ..ops import fits, unbroadcast
from ..tensor import Tensor, is_grad_enabled
from .overlay import Saved, replace
from .reductions import sum_product, sum_to, trailing_sum


def _count(shape, axes):
    return math.prod(shape[a] for a in axes)




def _forward(x, w, b, axes, eps=1e-5):
    n = _count(x.shape, axes)
    mean = trailing_sum(x, axes) / n
    centred = None
    if n >= 256:
        var = sum_product(x, x, axes) / n - mean * mean
    if n < 256 or not bool((mean * mean <= 64 * var).all()):
        centred = x - mean
        var = sum_product(centred, centred, axes) / n
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


def _like(g, x):
    """g as it is when it is laid out like x (the route of max pooling writes it
    so) or C-contiguous; else a C-contiguous copy (a broadcast or strided g)."""
    if g.flags.c_contiguous or g.strides == x.strides:
        return g
    return xp.ascontiguousarray(g)


def _per_group(p, ndim, axes):
    """Whether parameter p is constant along the statistics' axes (batch norm's
    case; layer norm's weight varies along them)."""
    lead = ndim - p.ndim
    return all(a < lead or p.shape[a - lead] == 1 for a in axes)


def _vjp(g, out, x, w, b, axes, eps=1e-5, saved=None):
    if is_grad_enabled() or out.shape != x.shape:
        return normalization.batch_norm.vjp_fn(g, out, x, w, b, axes, eps)
    if not (_per_group(w, x.ndim, axes) and _per_group(b, x.ndim, axes)):
        return _vjp_arrays_affine(g, x, w, b, axes, saved["mean"], saved["inv_std"])
    return _vjp_arrays(g, x, w, b, axes, saved["mean"], saved["inv_std"])


def _vjp_arrays(g, x, w, b, axes, mean, inv_std):
    n = _count(x.shape, axes)
    ga, xa = _like(g.data, x.data), x.data
    sum_g = trailing_sum(ga, axes)                                  # dL/db before grouping
    sum_g_xhat = (sum_product(ga, xa, axes) - mean * sum_g) * inv_std        # dL/dw before grouping
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
    """dL/dx = (gxhat - mean(gxhat) - xhat mean(gxhat xhat)) / sigma on raw arrays,
    gxhat = g w, reusing the forward's mu and 1/sigma."""
    n = _count(x.shape, axes)
    ga = xp.ascontiguousarray(g.data)
    xhat = x.data - mean
    xhat *= inv_std
    gx = gw = gb = None
    if x.requires_grad:
        gxhat = ga * w.data
        gx = gxhat - trailing_sum(gxhat, axes) / n
        gx -= xhat * (sum_product(gxhat, xhat, axes) / n)
        gx *= inv_std
        gx = Tensor(gx)
    if w.requires_grad:
        xhat *= ga                                                  # g * xhat, in place
        gw = Tensor(sum_to(xhat, w.shape))
    if b.requires_grad:
        gb = Tensor(sum_to(ga, b.shape))
    return gx, gw, gb


replace(normalization.batch_norm, forward=_forward, vjp=_vjp,
        why="in place with a one-pass variance; mu and 1/sigma saved; a plain backward on raw "
            "arrays with two full-size products instead of building x - mu and xhat")
