"""Fast max pooling: replaces the forwards of windows.pool_max, pool_route and
pool_pick (their VJPs are the core's: each other).

The core views x as (..., OH, k, OW, k) and reduces over two short axes of
length k, where NumPy's inner loop runs k elements at a time. Here x is viewed
as (..., OH, k, OW*k): the k rows of a window are an axis of their own and
each row stays contiguous, so every loop runs along a whole image row, and the
k columns of a window are strided views [..., j::k]. Ties are counted only
when a window has more than one maximum (a count of hits settles that in one
pass). NumPy and CuPy alike.
"""
from .. import windows
from ..backend import xp
from .overlay import replace


def _rows(x, k, oh, ow):
    """x cropped to whole windows (floor mode), viewed as (..., OH, k, OW*k)."""
    return x[..., :oh * k, :ow * k].reshape(x.shape[:-2] + (oh, k, ow * k))


def _window_cols(a, k):
    """Sum over the last axis's k-long windows: (..., OW*k) -> (..., OW)."""
    total = a[..., 0::k].copy()
    for j in range(1, k):
        total += a[..., j::k]
    return total


def _pool_max(x, k):
    oh, ow = x.shape[-2] // k, x.shape[-1] // k
    rows = _rows(x, k, oh, ow)
    m = rows[..., 0, :]
    for i in range(1, k):
        m = xp.maximum(m, rows[..., i, :])                           # max over a window's rows
    out = m[..., 0::k].copy()
    for j in range(1, k):
        xp.maximum(out, m[..., j::k], out=out)                        # then over its columns
    return out


def _shares(x, out, k, dtype):
    """(..., OH, k, OW*k): 1 at each window's maximum, 1/m for an m-way tie, else 0."""
    oh, ow = out.shape[-2:]
    hits = _rows(x, k, oh, ow) == xp.repeat(out, k, axis=-1)[..., :, None, :]
    if int(xp.count_nonzero(hits)) == out.size:        # one maximum in every window: no ties
        return hits
    count = _window_cols(hits.sum(axis=-2, dtype=xp.int8), k)          # maxima per window
    return (hits / xp.repeat(count, k, axis=-1)[..., :, None, :]).astype(dtype)


def _pool_route(g, x, out, k):
    oh, ow = out.shape[-2:]
    routed = _shares(x, out, k, g.dtype) * xp.repeat(g, k, axis=-1)[..., :, None, :]
    routed = routed.reshape(routed.shape[:-3] + (oh * k, ow * k))
    if routed.shape[-2:] != x.shape[-2:]:           # rows and columns cropped off the edge
        full = xp.zeros(routed.shape[:-2] + x.shape[-2:], dtype=routed.dtype)
        full[..., :oh * k, :ow * k] = routed
        routed = full
    return routed


def _pool_pick(gx, x, out, k):
    oh, ow = out.shape[-2:]
    picked = (_rows(gx, k, oh, ow) * _shares(x, out, k, gx.dtype)).sum(axis=-2)   # (..., OH, OW*k)
    return _window_cols(picked, k)


_WHY = "whole contiguous image rows per loop instead of reductions over two k-long axes"
replace(windows.pool_max, forward=_pool_max, why=_WHY)
replace(windows.pool_route, forward=_pool_route, why=_WHY + "; ties counted only if present")
replace(windows.pool_pick, forward=_pool_pick, why=_WHY + "; ties counted only if present")
