"""Fast max pooling: replaces the forwards of windows.pool_max, pool_route and
pool_pick (their VJPs are the core's: each other).

The core views x as (..., OH, k, OW, k) and reduces over two short axes of
length k, where NumPy's inner loop runs k elements at a time. Here x is viewed
as (..., OH, k, OW*k): the k rows of a window are an axis of their own and
each row stays contiguous, so every loop runs along a whole image row, and the
k columns of a window are strided views [..., j::k]. The route and pick share
g between tied maxima only where there are ties: one count_nonzero finds
whether any window has two; then the maxima of each window are counted by
adding the k rows of hits as int8 arrays (NumPy runs a sum(axis, dtype=int8)
as a slow casting reduction) and g is divided by the counts at the size of
the output, not of x. The route writes into an array laid out like x.
NumPy and CuPy alike.

The composite functional.relu_max_pool2d, max_pool2d(relu(x)), is replaced by
relu(max_pool2d(x)): ReLU is monotone, so the two commute, and the ReLU (its
forward, its mask, its VJP) then runs on the pooled output, k*k times smaller.
Ties need no care: a window whose maximum is <= 0 gets a gradient of 0 both ways.
"""
from .. import functional as F
from .. import windows
from ..backend import xp
from ..tensor import lift
from .overlay import replace, replace_composite


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
    if k == 1:
        return rows[..., 0, :].copy()
    m = xp.maximum(rows[..., 0, :], rows[..., 1, :])               # max over a window's rows
    for i in range(2, k):
        xp.maximum(m, rows[..., i, :], out=m)
    out = xp.empty(m.shape[:-1] + (m.shape[-1] // k,), dtype=m.dtype)  # C order, as the core's
    xp.maximum(m[..., 0::k], m[..., 1::k], out=out)                  # then over its columns
    for j in range(2, k):
        xp.maximum(out, m[..., j::k], out=out)
    return out


def _hits_and_count(x, out, k):
    """hits (..., OH, k, OW*k): x equals its window's max; count (..., OH, OW): how
    many, or None when every window has exactly one (no ties to share).

    One count_nonzero over hits tells whether any window has a tie (each
    window has at least one maximum, so there are none exactly when the
    hits number out.size); only then are the k rows of hits added, as int8
    arrays row by row (NumPy runs hits.sum(axis=-2, dtype=int8) as a slow
    casting reduction).
    """
    oh, ow = out.shape[-2:]
    hits = _rows(x, k, oh, ow) == xp.repeat(out, k, axis=-1)[..., :, None, :]
    if int(xp.count_nonzero(hits)) == out.size:
        return hits, None
    per_row = hits[..., 0, :].astype(xp.int8)                 # (..., OH, OW*k)
    for i in range(1, k):
        per_row += hits[..., i, :]
    return hits, _window_cols(per_row, k)                     # maxima per window


def _pool_route(g, x, out, k):
    """g / m at each of a window's m maxima: the division at the size of out.

    The result is written into an array laid out like x (through the view of
    its whole windows as rows), so that the ReLU's and batch norm's VJPs after
    it read g and x in one memory order (a public-API Conv4's activations are
    NCHW views of CNHW memory).
    """
    oh, ow = out.shape[-2:]
    hits, count = _hits_and_count(x, out, k)
    share = g if count is None else g / count           # g itself where a window has one maximum
    spread = xp.repeat(share, k, axis=-1)[..., :, None, :]
    routed = xp.empty_like(x, dtype=share.dtype)
    # (..., OH, k, OW*k): a view of routed in any layout, as the reshape only splits H
    xp.multiply(hits, spread, out=_rows(routed, k, oh, ow))
    if oh * k != x.shape[-2]:                           # rows and columns cropped off the edge
        routed[..., oh * k:, :] = 0
    if ow * k != x.shape[-1]:
        routed[..., :, ow * k:] = 0
    return routed


def _pool_pick(gx, x, out, k):
    oh, ow = out.shape[-2:]
    hits, count = _hits_and_count(x, out, k)
    selected = _rows(gx, k, oh, ow) * hits                  # (..., OH, k, OW*k)
    rows = selected[..., 0, :]
    for i in range(1, k):
        rows += selected[..., i, :]
    picked = _window_cols(rows, k)
    return picked if count is None else picked / count


_WHY = "whole contiguous image rows per loop instead of reductions over two k-long axes"
replace(windows.pool_max, forward=_pool_max, why=_WHY)
replace(windows.pool_route, forward=_pool_route,
        why=_WHY + "; tie counts by int8 row views, the division at the size of out")
replace(windows.pool_pick, forward=_pool_pick,
        why=_WHY + "; tie counts by int8 row views, the division at the size of out")


def _relu_max_pool2d(x, kernel_size, stride=None):
    (x,) = lift((x,))
    return F.max_pool2d(x, kernel_size, stride).relu()


replace_composite(F.relu_max_pool2d, _relu_max_pool2d,
                  why="pool first, then ReLU (they commute): the ReLU and its VJP at the "
                      "pooled size, k*k times smaller")
