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
- A recorded backward (create_graph=True: MAML's inner step) builds, in
  place of the core VJP's twenty-odd small Tensor operations, two fast-only
  nodes and a sum: dL/dx = batch_norm_grad_x(g, x, w), dL/dw from
  batch_norm_grad_w(g, x) = sum(g * xhat), dL/db = sum(g). With s = 1/sigma,
  P the projection P v = v - mean(v) - xhat mean(v * xhat) (symmetric), so
  dL/dx = w s P g, and u, v the upstream gradients of dL/dx and of sum(g xhat),
  their VJPs (the double backward of batch norm) are

      d<u, w s P g>/dg = w s P u,       d<u, w s P g>/dw = s sum(u * P g),
      d<u, w s P g>/dx = -w s^2 (xhat mean(u * P g) + mean(g xhat) P u + mean(u xhat) P g),
      d<v, sum(g xhat)>/dg = v xhat,    d<v, sum(g xhat)>/dx = v s P g

  (from d xhat_j / d x_i = s (delta_ij - 1/n - xhat_i xhat_j / n)). A plain
  backward of those nodes (second order) runs them on raw arrays, each a few
  full-size products and per-channel constants; a recorded one (third order)
  runs the same formulas in Tensor operations, so every order differentiates.
"""
import math

from .. import normalization
from ..backend import xp
from ..ops import fits, unbroadcast
from ..ops import sum as sum_op
from ..tensor import Tensor, is_grad_enabled, primitive, record
from .overlay import Entry, Saved, replace
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
    per_group = _per_group(w, x.ndim, axes) and _per_group(b, x.ndim, axes)
    if out.shape != x.shape or (is_grad_enabled() and not per_group):
        return normalization.batch_norm.vjp_fn(g, out, x, w, b, axes, eps)
    if is_grad_enabled():
        return _vjp_recorded(g, x, w, b, axes, eps, saved["mean"], saved["inv_std"])
    if not per_group:
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


# -- the recorded backward: two fast-only nodes ---------------------------------
def _grad_stats(ga, xa, axes, mean, inv_std):
    """mean(g) and mean(g * xhat) per group, from g and x without building xhat."""
    n = _count(xa.shape, axes)
    g1 = trailing_sum(ga, axes) / n
    g2 = (sum_product(ga, xa, axes) / n - mean * g1) * inv_std
    return g1, g2


def _p_of(va, xa, v1, v2, mean, s):
    """P v = v - mean(v) - xhat mean(v xhat) = v - (s v2) x + (s v2 mu - v1), full size."""
    out = xa * (-s * v2)
    out += va
    out += s * v2 * mean - v1
    return out


def _grad_x_forward(g, x, w, axes, eps, mean, inv_std, g1, g2):
    """dL/dx = w s P g."""
    out = _p_of(_like(g, x), x, g1, g2, mean, inv_std)
    out *= w * inv_std
    return out


def _grad_x_vjp(u, out, g, x, w, axes, eps, mean, inv_std, g1, g2):
    if is_grad_enabled():
        return _grad_x_vjp_tensors(u, g, x, w, axes, eps)
    n = _count(x.shape, axes)
    s, ga, xa, ua = inv_std, _like(g.data, x.data), x.data, _like(u.data, x.data)
    u1 = trailing_sum(ua, axes) / n
    u2 = (sum_product(ua, xa, axes) / n - mean * u1) * s                   # mean(u xhat)
    m = sum_product(ua, ga, axes) / n - u1 * g1 - u2 * g2                   # mean(u * P g)
    ws = w.data * s
    gg = gx = gw = None
    if g.requires_grad:                                                     # w s P u
        gg = _p_of(ua, xa, u1, u2, mean, s)
        gg *= ws
        gg = Tensor(gg)
    if x.requires_grad:      # -w s^2 (xhat m + g2 P u + u2 P g), collected as a u + b g + c x + d
        c = s * (m - 2 * g2 * u2)
        gx = ua * (-ws * s * g2)
        gx += ga * (-ws * s * u2)
        gx += xa * (-ws * s * c)
        gx += ws * s * (c * mean + g2 * u1 + u2 * g1)
        gx = Tensor(gx)
    if w.requires_grad:                                                     # s sum(u * P g)
        gw = unbroadcast(Tensor(s * m * n), w.shape)
    return gg, gx, gw


def _standardized(x, axes, eps):
    """s = 1/sigma and xhat = (x - mu) s in Tensor operations, and the mean over `axes`."""
    def mean(t):
        return t.mean(axis=axes, keepdims=True)
    centred = x - mean(x)
    s = (mean(centred * centred) + eps).sqrt() ** -1
    return s, centred * s, mean


def _grad_x_vjp_tensors(u, g, x, w, axes, eps):
    """The same derivatives in Tensor operations (a recorded backward: third order)."""
    s, xhat, mean = _standardized(x, axes, eps)
    g2, u2 = mean(g * xhat), mean(u * xhat)
    pg = g - mean(g) - xhat * g2                                            # P g
    pu = u - mean(u) - xhat * u2                                            # P u
    gg = unbroadcast(w * s * pu, g.shape) if g.requires_grad else None
    gx = (unbroadcast((w * s * s) * (xhat * mean(u * pg) + g2 * pu + u2 * pg), x.shape) * -1
          if x.requires_grad else None)
    gw = unbroadcast(s * u * pg, w.shape) if w.requires_grad else None
    return gg, gx, gw


def _grad_w_forward(g, x, axes, eps, mean, inv_std, g1, g2):
    """sum(g * xhat) per group (kept axes), before summing to w's shape."""
    return g2 * _count(x.shape, axes)


def _grad_w_vjp(v, out, g, x, axes, eps, mean, inv_std, g1, g2):
    if is_grad_enabled():                                   # Tensor operations: third order
        s, xhat, mean_ = _standardized(x, axes, eps)
        gg = v * xhat if g.requires_grad else None                          # v xhat
        gx = v * s * (g - mean_(g) - xhat * mean_(g * xhat)) if x.requires_grad else None   # v s P g
        return gg, gx
    xa, va = x.data, v.data
    gg = gx = None
    if g.requires_grad:                                                     # v xhat
        gg = xa * (va * inv_std)
        gg -= va * inv_std * mean
        gg = Tensor(gg)
    if x.requires_grad:                                                     # v s P g
        gx = _p_of(_like(g.data, xa), xa, g1, g2, mean, inv_std)
        gx *= va * inv_std
        gx = Tensor(gx)
    return gg, gx


def _node(forward, vjp, name):
    node = primitive(forward)
    node.name = name                                                # as graphs and errors show it
    return Entry(node, forward=forward, vjp=vjp, why="batch norm's recorded backward as one node")


batch_norm_grad_x = _node(_grad_x_forward, _grad_x_vjp, "batch_norm_grad_x")
batch_norm_grad_w = _node(_grad_w_forward, _grad_w_vjp, "batch_norm_grad_w")


def _vjp_recorded(g, x, w, b, axes, eps, mean, inv_std):
    """dL/dx, dL/dw, dL/db as three nodes whose VJPs are written out (above)."""
    ga = _like(g.data, x.data)
    g1, g2 = _grad_stats(ga, x.data, axes, mean, inv_std)
    kw = dict(axes=axes, eps=eps, mean=mean, inv_std=inv_std, g1=g1, g2=g2)
    gx = gw = gb = None
    if x.requires_grad:
        gx = record(Tensor(_grad_x_forward(ga, x.data, w.data, **kw)), batch_norm_grad_x, (g, x, w), kw)
    if w.requires_grad:
        gw = unbroadcast(record(Tensor(_grad_w_forward(ga, x.data, **kw)), batch_norm_grad_w,
                                (g, x), kw), w.shape)
    if b.requires_grad:                          # sum(g): the core's sum node, its sum reused
        sum_g = g1 * _count(x.shape, axes)
        gb = unbroadcast(record(Tensor(sum_g), sum_op, (g,), dict(axis=tuple(axes), keepdims=True)),
                         b.shape)
    return gx, gw, gb


replace(normalization.batch_norm, forward=_forward, vjp=_vjp,
        why="in place with a one-pass variance; mu and 1/sigma saved; a plain backward on raw "
            "arrays with two full-size products instead of building x - mu and xhat; a "
            "recorded backward as two nodes with written-out VJPs")
