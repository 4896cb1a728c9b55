"""Sliding-window primitives: unfold and fold, max pooling, convolution.

The same contract as ops.py: a forward on raw `xp` arrays beside a VJP in
Tensor operations, so every order of derivative works. The forwards loop over
the kh*kw window offsets, each a strided slice of the whole batch, never over
pixels.
"""
from .backend import xp
from .ops import unbroadcast
from .tensor import primitive


# -- sliding windows (convolution and pooling) ------------------------------------
def _out_size(n, k, stride):
    return (n - k) // stride + 1


def _pad(x, p):
    """x with p zeros around its last two axes."""
    padded = xp.zeros(x.shape[:-2] + (x.shape[-2] + 2 * p, x.shape[-1] + 2 * p), dtype=x.dtype)
    padded[..., p:-p, p:-p] = x
    return padded


def _window_lead(ndim, at):
    """How many axes come before the window axes that unfold inserts."""
    at = at % ndim
    if not 0 <= at <= ndim - 2:
        raise ValueError(f"unfold: at={at} must lie before the last two (spatial) axes")
    return at


@primitive
def unfold(x, kh, kw, stride=1, padding=0, at=-2):
    """Sliding kh x kw windows over the last two axes, window offsets inserted at `at`.

    at=-2 (default): (..., C, H, W) -> (..., C, kh, kw, OH, OW).
    at=-3:           (..., C, N, H, W) -> (..., C, kh, kw, N, OH, OW), so that
    (C*kh*kw, N*OH*OW) is a plain reshape: the im2col matrix of a whole batch.
    A loop over the kh*kw window offsets, each copying one strided slice of
    the whole batch (no loop over pixels).
    """
    lead = _window_lead(x.ndim, at)
    if padding:
        x = _pad(x, padding)
    H, W = x.shape[-2:]
    oh, ow = _out_size(H, kh, stride), _out_size(W, kw, stride)
    if oh < 1 or ow < 1:
        raise ValueError(f"unfold: a {kh}x{kw} window does not fit an input of size {H}x{W} (after padding)")
    cols = xp.empty(x.shape[:lead] + (kh, kw) + x.shape[lead:-2] + (oh, ow), dtype=x.dtype)
    head = (slice(None),) * lead
    for i in range(kh):
        for j in range(kw):
            cols[head + (i, j)] = x[..., i:i + stride * oh:stride, j:j + stride * ow:stride]
    return cols


@unfold.vjp
def _unfold_vjp(g, out, x, kh, kw, stride=1, padding=0, at=-2):
    return (fold(g, size=x.shape[-2:], stride=stride, padding=padding, at=at),)


@primitive
def fold(cols, size, stride=1, padding=0, at=-2):
    """The adjoint of unfold: add every window back where it came from."""
    lead = _window_lead(cols.ndim - 2, at)
    kh, kw = cols.shape[lead], cols.shape[lead + 1]
    oh, ow = cols.shape[-2:]
    H, W = size[0] + 2 * padding, size[1] + 2 * padding
    if (oh, ow) != (_out_size(H, kh, stride), _out_size(W, kw, stride)):
        raise ValueError(f"fold: windows of shape {cols.shape} do not tile an input of size "
                         f"{tuple(size)} with stride {stride} and padding {padding}")
    x = xp.zeros(cols.shape[:lead] + cols.shape[lead + 2:-2] + (H, W), dtype=cols.dtype)
    head = (slice(None),) * lead
    for i in range(kh):
        for j in range(kw):
            x[..., i:i + stride * oh:stride, j:j + stride * ow:stride] += cols[head + (i, j)]
    if padding:
        x = x[..., padding:H - padding, padding:W - padding]
    return x


@fold.vjp
def _fold_vjp(g, out, cols, size, stride=1, padding=0, at=-2):
    lead = _window_lead(cols.ndim - 2, at)
    kh, kw = cols.shape[lead], cols.shape[lead + 1]
    return (unfold(g, kh=kh, kw=kw, stride=stride, padding=padding, at=at),)


# -- max pooling over non-overlapping k x k windows ---------------------------------
# Pooling is a selection. Its VJP routes g back to each window's maximum
# (split evenly between ties, as for max); the adjoint of routing is picking.
# Both are linear in g, with a selection that is locally constant in x, so
# their derivatives in x and out are zero (None).
def _windows(x, k):
    """x cropped to whole k x k windows (floor mode), viewed as (..., OH, k, OW, k)."""
    oh, ow = x.shape[-2] // k, x.shape[-1] // k
    return x[..., :oh * k, :ow * k].reshape(x.shape[:-2] + (oh, k, ow, k))


def _shares(x, out, k, dtype):
    """(..., OH, k, OW, k): 1/m at each of a window's m maxima, 0 elsewhere."""
    hits = (_windows(x, k) == out[..., :, None, :, None]).astype(dtype)
    return hits / hits.sum(axis=(-3, -1), keepdims=True)


@primitive
def pool_max(x, k):
    return _windows(x, k).max(axis=(-3, -1))                           # (..., OH, OW)


@pool_max.vjp
def _pool_max_vjp(g, out, x, k):
    return (pool_route(g, x, out, k=k),)


@primitive
def pool_route(g, x, out, k):
    """g (..., OH, OW) placed at each window's maximum of x; zeros elsewhere."""
    routed = _shares(x, out, k, g.dtype) * g[..., :, None, :, None]
    oh, ow = out.shape[-2:]
    full = xp.zeros(g.shape[:-2] + x.shape[-2:], dtype=g.dtype)       # rows cropped off stay 0
    full[..., :oh * k, :ow * k] = routed.reshape(g.shape[:-2] + (oh * k, ow * k))
    return full


@pool_route.vjp
def _pool_route_vjp(g, out, g_in, x, pooled, k):
    return (pool_pick(g, x, pooled, k=k), None, None)


@primitive
def pool_pick(gx, x, out, k):
    """The adjoint of pool_route: each window's (tie-shared) value at its maximum."""
    return (_windows(gx, k) * _shares(x, out, k, gx.dtype)).sum(axis=(-3, -1))


@pool_pick.vjp
def _pool_pick_vjp(g, out, gx, x, pooled, k):
    return (pool_route(g, x, pooled, k=k), None, None)


# -- convolution as three bilinear primitives, layout (..., C, N, H, W) ---------------
# With U(x) the im2col matrix (C*kh*kw, N*OH*OW) of x (unfold, at=-3) and W the
# weight as a matrix (O, C*kh*kw), a convolution (a cross-correlation, as in
# every deep-learning library) is one matrix product:
#     conv:              y     = W U(x)           (..., O, N, OH, OW)
#     conv_transpose:    x_bar = U^T(W^T y_bar)   the adjoint of conv in x (U^T is fold)
#     conv_weight_grad:  W_bar = y_bar U(x)^T     the adjoint of conv in W
# Each one's VJPs are the other two, so every order of derivative stays within the three.
def _im2col(x, kh, kw, stride, padding):
    """The im2col matrix (..., C*kh*kw, N*OH*OW) of x (..., C, N, H, W), and (N, OH, OW)."""
    cols = unfold.forward(x, kh, kw, stride, padding, at=-3)       # (..., C, kh, kw, N, OH, OW)
    n, oh, ow = cols.shape[-3:]
    return cols.reshape(cols.shape[:-6] + (-1, n * oh * ow)), (n, oh, ow)


def _flat(y):
    """(..., O, N, OH, OW) -> (..., O, N*OH*OW)."""
    return y.reshape(y.shape[:-3] + (-1,))


def _matrix(w):
    """(..., O, C, kh, kw) -> (..., O, C*kh*kw)."""
    return w.reshape(w.shape[:-3] + (-1,))


@primitive
def conv(x, w, stride=1, padding=0):
    cols, image = _im2col(x, w.shape[-2], w.shape[-1], stride, padding)
    y = _matrix(w) @ cols                                               # W U(x)
    return y.reshape(y.shape[:-1] + image)                              # (..., O, N, OH, OW)


@conv.vjp
def _conv_vjp(g, out, x, w, stride=1, padding=0):
    # <g, W U(x)>:  d/dx = U^T(W^T g),  d/dW = g U(x)^T
    gx = gw = None
    if x.requires_grad:
        gx = unbroadcast(conv_transpose(g, w, size=x.shape[-2:], stride=stride, padding=padding),
                         x.shape)
    if w.requires_grad:
        gw = unbroadcast(conv_weight_grad(x, g, kernel=w.shape[-2:], stride=stride,
                                          padding=padding), w.shape)
    return gx, gw


@primitive
def conv_transpose(g, w, size, stride=1, padding=0):
    out_c, in_c, kh, kw = w.shape[-4:]
    cols = xp.swapaxes(_matrix(w), -1, -2) @ _flat(g)                  # W^T g: (..., C*kh*kw, N*OH*OW)
    cols = cols.reshape(cols.shape[:-2] + (in_c, kh, kw) + g.shape[-3:])
    return fold.forward(cols, size, stride, padding, at=-3)             # U^T(W^T g)


@conv_transpose.vjp
def _conv_transpose_vjp(a, out, g, w, size, stride=1, padding=0):
    # <a, U^T(W^T g)> = <W U(a), g>:  d/dg = conv(a, W),  d/dW = g U(a)^T
    gg = gw = None
    if g.requires_grad:
        gg = unbroadcast(conv(a, w, stride=stride, padding=padding), g.shape)
    if w.requires_grad:
        gw = unbroadcast(conv_weight_grad(a, g, kernel=w.shape[-2:], stride=stride,
                                          padding=padding), w.shape)
    return gg, gw


@primitive
def conv_weight_grad(x, g, kernel, stride=1, padding=0):
    kh, kw = kernel
    cols, _ = _im2col(x, kh, kw, stride, padding)
    wb = _flat(g) @ xp.swapaxes(cols, -1, -2)                           # g U(x)^T
    return wb.reshape(wb.shape[:-1] + (x.shape[-4], kh, kw))


@conv_weight_grad.vjp
def _conv_weight_grad_vjp(b, out, x, g, kernel, stride=1, padding=0):
    # <B, g U(x)^T> = <B U(x), g>:  d/dx = U^T(B^T g),  d/dg = conv(x, B)
    gx = gg = None
    if x.requires_grad:
        gx = unbroadcast(conv_transpose(g, b, size=x.shape[-2:], stride=stride, padding=padding),
                         x.shape)
    if g.requires_grad:
        gg = unbroadcast(conv(x, b, stride=stride, padding=padding), g.shape)
    return gx, gg
