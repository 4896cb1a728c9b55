"""Reductions over short trailing axes, for the overlay's entries.

NumPy reduces a contiguous last axis one row at a time, so x.sum(axis=-1) and
x.max(axis=-1) over rows of 30 or 32 values (attention scores, a layer norm's
width) run far below memory speed: on a (64, 4, 30, 30) float32 array the
sum took 0.17 ms and the max 0.61 ms, an exp 0.09 ms. Here

- a sum over trailing axes is one matrix-vector product with a vector of
  ones: x.reshape(rows, n) @ 1 (BLAS, 0.03 ms on that array); also over
  axes that a transposition makes trailing (batch norm over (N, H, W) of an
  NCHW view of CNHW memory);
- a sum over leading axes (a bias's gradient) is a product of a vector of
  ones with the rows (sum_to; 0.01 ms against sum(axis=0)'s 0.04 ms on
  (1920, 128));
- a max over a short last axis is a loop of elementwise maxima over its
  columns (0.12 ms), each across every row at once.

Same values up to the order of the additions (the sum) or exactly (the max).
Any other case falls back to NumPy's own reduction. NumPy and CuPy alike.
"""
import math

from ..backend import xp

SHORT = 64      # a last axis this long or shorter is maxed by the column loop
LONG = 1024     # rows longer than this are summed by NumPy (pairwise), not by a gemv


def _rows(a, axes):
    """a as a (rows, size) matrix whose columns run over `axes`, if that is a view.

    True when `axes` are a's trailing axes and a is C-contiguous, and also when
    a transposition puts them last contiguously: an NCHW view of CNHW memory
    (functional.conv2d's output) reduced over (N, H, W). Else None.
    """
    axes = sorted({ax % a.ndim for ax in axes})
    keep = [i for i in range(a.ndim) if i not in axes]
    moved = a.transpose(keep + axes)
    if not axes or a.size == 0 or not moved.flags.c_contiguous:
        return None
    return moved.reshape(-1, math.prod(a.shape[i] for i in axes))


def _kept(a, axes):
    """The shape of a.sum(axis=axes, keepdims=True)."""
    axes = {ax % a.ndim for ax in axes}
    return tuple(1 if i in axes else n for i, n in enumerate(a.shape))


def trailing_sum(a, axes):
    """a.sum(axis=axes, keepdims=True).

    Rows of up to LONG values are summed by one gemv; longer rows by NumPy's
    own pairwise summation along each contiguous row, fast there, and in
    float32 more accurate than a running sum over thousands of values.
    """
    rows = _rows(a, axes)
    if rows is None:
        return a.sum(axis=tuple(axes), keepdims=True)
    if rows.shape[1] > LONG:
        return rows.sum(axis=1).reshape(_kept(a, axes))
    return (rows @ xp.ones(rows.shape[1], dtype=a.dtype)).reshape(_kept(a, axes))   # one gemv


def sum_product(a, b, axes):
    """(a * b).sum(axis=axes, keepdims=True), a and b of one shape."""
    ra, rb = _rows(a, axes), _rows(b, axes)
    if ra is not None and rb is not None and ra.shape[1] >= 256:
        dots = ra[:, None, :] @ rb[:, :, None]                            # a batch of dot products
        return dots.reshape(_kept(a, axes))
    return trailing_sum(xp.asarray(a * b), axes)


def sum_to(a, shape):
    """a summed down to `shape` (ops.unbroadcast on raw arrays): a bias's or a
    layer norm's parameter's gradient. Where `shape` is a's trailing shape and
    a is C-contiguous, one product of a vector of ones with a's rows."""
    shape, n = tuple(shape), len(shape)
    if a.shape == shape:
        return a
    if a.ndim > n and a.shape[a.ndim - n:] == shape and a.flags.c_contiguous:
        rows = a.reshape(-1, math.prod(shape))
        return (xp.ones(rows.shape[0], dtype=a.dtype) @ rows).reshape(shape)
    lead = a.ndim - n
    axes = tuple(range(lead)) + tuple(i + lead for i, s in enumerate(shape)
                                      if s == 1 and a.shape[i + lead] != 1)
    return a.sum(axis=axes, keepdims=True).reshape(shape)


def last_max(a, axis=-1):
    """a.max(axis=axis, keepdims=True)."""
    if a.ndim == 0 or axis % a.ndim != a.ndim - 1 or not 1 <= a.shape[-1] <= SHORT:
        return a.max(axis=axis, keepdims=True)
    m = a[..., 0].copy()
    for j in range(1, a.shape[-1]):
        xp.maximum(m, a[..., j], out=m)
    return m[..., None]
