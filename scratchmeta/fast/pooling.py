"""Fast max-pooling routes: replaces the forwards of windows.pool_route and pool_pick.

The core builds each window's tie-shared selection ("shares") on x viewed as
(..., OH, k, OW*k) and divides that full-size array by the window's count of
maxima, counted by hits.sum(axis=-2, dtype=int8): a reduction NumPy runs as a
slow casting loop (about four times a plain pass over x in float32), then
repeats g and multiplies again. The backward of a second-order MAML step runs
pool_route or pool_pick for every pooling layer several times.

Here, in the same layout (every inner loop along a whole image row):

    hits   = rows(x) == out repeated k times along the row     (one pass over x)
    count  = the k rows of hits added as int8 views, then the k columns
             of each window (passes the size of x/k and of out)
    routed = hits * repeat(g / count)                           (one pass)
    picked = sum over a window of rows(gx) * hits, / count

so the division by the count happens on arrays the size of `out`, a k*k-th
of x's. Same values as the core (a tie's share g/m instead of (1/m) g, a
rounding apart). The VJPs stay the core's: route and pick are each other's
adjoints, so every order of derivative still works.
"""
from .. import windows
from ..backend import xp
from .overlay import replace


def _hits_and_count(x, out, k):
    """hits (..., OH, k, OW*k): x equals its window's max; count (..., OH, OW): how many."""
    oh, ow = out.shape[-2:]
    hits = windows._rows(x, k, oh, ow) == xp.repeat(out, k, axis=-1)[..., :, None, :]
    per_row = hits[..., 0, :].astype(xp.int8)                 # (..., OH, OW*k)
    for i in range(1, k):
        per_row += hits[..., i, :]
    return hits, windows._window_cols(per_row, k)             # maxima per window


def _route_forward(g, x, out, k):
    """g (..., OH, OW) placed at each window's maximum of x (split over ties)."""
    oh, ow = out.shape[-2:]
    hits, count = _hits_and_count(x, out, k)
    share = g / count                                   # g itself where a window has one maximum
    routed = hits * xp.repeat(share, k, axis=-1)[..., :, None, :]
    routed = routed.reshape(routed.shape[:-3] + (oh * k, ow * k))
    if routed.shape != x.shape:                         # rows and columns cropped off the edge
        full = xp.zeros(routed.shape[:-2] + x.shape[-2:], dtype=routed.dtype)
        full[..., :oh * k, :ow * k] = routed
        routed = full
    return routed


def _pick_forward(gx, x, out, k):
    """The adjoint of the route: each window's (tie-shared) value of gx at its maximum."""
    oh, ow = out.shape[-2:]
    hits, count = _hits_and_count(x, out, k)
    selected = windows._rows(gx, k, oh, ow) * hits          # (..., OH, k, OW*k)
    rows = selected[..., 0, :]
    for i in range(1, k):
        rows += selected[..., i, :]
    return windows._window_cols(rows, k) / count


replace(windows.pool_route, forward=_route_forward,
        why="tie counts by int8 views row by row (not a casting reduction over the window "
            "axis), and the division by them on arrays the size of out")
replace(windows.pool_pick, forward=_pick_forward,
        why="one masked product, the window's rows and columns summed, one division "
            "the size of out")
