"""Sliding-window primitives: unfold and fold, max pooling, convolution.

The same contract as ops.py: a forward on raw `xp` arrays beside a VJP in
Tensor operations, so every order of derivative works. The forwards loop over
the kh*kw window offsets, each a strided slice of the whole batch, never over
pixels.
"""
import math

from . import backend
from .backend import xp
from .ops import unbroadcast
from .tensor import Tensor, is_grad_enabled, primitive


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
    return _unfold(x, kh, kw, stride, padding, at)


def _unfold(x, kh, kw, stride=1, padding=0, at=-2, into=None):
    """unfold's forward, writing into `into` (an array of its output's shape) if given."""
    lead = _window_lead(x.ndim, at)
    if padding:
        x = _pad(x, padding)
    H, W = x.shape[-2:]
    oh, ow = _out_size(H, kh, stride), _out_size(W, kw, stride)
    if oh < 1 or ow < 1:
        raise ValueError(f"unfold: a {kh}x{kw} window does not fit an input of size {H}x{W} (after padding)")
    cols = xp.empty(x.shape[:lead] + (kh, kw) + x.shape[lead:-2] + (oh, ow), dtype=x.dtype) \
        if into is None else into
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
#
# Each works on x viewed as (..., OH, k, OW*k): the k rows of a window are an
# axis of their own and each row stays contiguous, so every NumPy loop runs
# along a whole image row (a loop over an axis of length k would be many
# times slower); the k columns of a window are then strided views [..., j::k].
def _rows(x, k, oh, ow):
    """x cropped to whole windows (floor mode), viewed as (..., OH, k, OW*k)."""
    return x[..., :oh * k, :ow * k].reshape(x.shape[:-2] + (oh, k, ow * k))


def _window_cols(a, k):
    """Sum over the last axis's k-long windows: (..., OW*k) -> (..., OW)."""
    total = a[..., 0::k].copy()
    for j in range(1, k):
        total += a[..., j::k]
    return total


@primitive
def pool_max(x, k):
    oh, ow = x.shape[-2] // k, x.shape[-1] // k
    rows = _rows(x, k, oh, ow)
    m = rows[..., 0, :]
    for i in range(1, k):
        m = xp.maximum(m, rows[..., i, :])                           # max over a window's rows
    out = m[..., 0::k].copy()
    for j in range(1, k):
        xp.maximum(out, m[..., j::k], out=out)                        # then over its columns
    return out


@pool_max.vjp
def _pool_max_vjp(g, out, x, k):
    return (pool_route(g, x, out, k=k),)


def _shares(x, out, k):
    """(..., OH, k, OW*k): 1 at each window's maximum, 1/m for an m-way tie, else 0."""
    oh, ow = out.shape[-2:]
    hits = _rows(x, k, oh, ow) == xp.repeat(out, k, axis=-1)[..., :, None, :]
    if int(xp.count_nonzero(hits)) == out.size:        # one maximum in every window: no ties
        return hits
    count = _window_cols(hits.sum(axis=-2, dtype=xp.int8), k)          # maxima per window
    return hits / xp.repeat(count, k, axis=-1)[..., :, None, :]


@primitive
def pool_route(g, x, out, k):
    """g (..., OH, OW) placed at each window's maximum of x; zeros elsewhere."""
    oh, ow = out.shape[-2:]
    routed = _shares(x, out, k) * xp.repeat(g, k, axis=-1)[..., :, None, :]
    routed = routed.reshape(routed.shape[:-3] + (oh * k, ow * k))
    if routed.shape != x.shape:                     # rows and columns cropped off the edge
        full = xp.zeros(routed.shape[:-2] + x.shape[-2:], dtype=routed.dtype)
        full[..., :oh * k, :ow * k] = routed
        routed = full
    return routed


@pool_route.vjp
def _pool_route_vjp(g, out, g_in, x, pooled, k):
    return (pool_pick(g, x, pooled, k=k), None, None)


@primitive
def pool_pick(gx, x, out, k):
    """The adjoint of pool_route: each window's (tie-shared) value at its maximum."""
    oh, ow = out.shape[-2:]
    picked = (_rows(gx, k, oh, ow) * _shares(x, out, k)).sum(axis=-2)   # (..., OH, OW*k)
    return _window_cols(picked, k)


@pool_pick.vjp
def _pool_pick_vjp(g, out, gx, x, pooled, k):
    return (pool_route(g, x, pooled, k=k), None, None)


# -- convolution as three bilinear primitives, layout (..., C, N, H, W) ---------------
# With U(x) the im2col matrix (C*kh*kw, N*OH*OW) of x (see unfold, at=-3):
#     conv:              y     = W U(x)           (..., O, N, OH, OW)
#     conv_transpose:    x_bar = U^T(W^T y_bar)   the adjoint of conv in x
#     conv_weight_grad:  W_bar = y_bar U(x)^T     the adjoint of conv in W
# Each one's VJPs are the other two, so every order of derivative stays within
# the three, and no node keeps a U(x) alive between the forward and backward passes.
def _im2col(x, kh, kw, stride, padding, ones_row=False):
    """The im2col matrix (..., C*kh*kw, N*OH*OW) of x (..., C, N, H, W), and (N, OH, OW).

    ones_row=True appends a row of ones, so that a weight matrix with the bias
    as its last column adds the bias in the same matrix product.
    """
    if not ones_row:
        cols = _unfold(x, kh, kw, stride, padding, at=-3)           # (..., C, kh, kw, N, OH, OW)
        n, oh, ow = cols.shape[-3:]
        return cols.reshape(cols.shape[:-6] + (cols.shape[-6] * kh * kw, n * oh * ow)), (n, oh, ow)
    c, n, (h, w) = x.shape[-4], x.shape[-3], x.shape[-2:]
    oh, ow = _out_size(h + 2 * padding, kh, stride), _out_size(w + 2 * padding, kw, stride)
    cols = xp.empty(x.shape[:-4] + (c * kh * kw + 1, n * oh * ow), dtype=x.dtype)
    _unfold(x, kh, kw, stride, padding, at=-3,
            into=cols[..., :-1, :].reshape(x.shape[:-4] + (c, kh, kw, n, oh, ow)))
    cols[..., -1, :] = 1
    return cols, (n, oh, ow)


def _flat(y):
    """(..., O, N, OH, OW) -> (..., O, N*OH*OW), a view (also of a slice along N)."""
    return y.reshape(y.shape[:-3] + (y.shape[-3] * y.shape[-2] * y.shape[-1],))


# An im2col matrix is kh*kw times the size of its input: for a large batch the
# three primitives below build it a slice of the batch axis N at a time, each
# slice at most this many values (8 MiB in float64), so that the peak memory
# stays near that of the activations themselves.
COLS_BUDGET = 1 << 20


def _batch_slices(lead_shape, rows, n, cols_per_item):
    """Slices of the batch axis (length n) whose im2col block fits COLS_BUDGET."""
    per_item = max(1, rows * cols_per_item * math.prod(lead_shape))
    step = max(1, COLS_BUDGET // per_item)
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _product_into(a, b, out):
    """out[...] = a @ b. NumPy's matmul writes straight into `out`, a strided
    view (a slice of the batch axis); other backends get an explicit copy."""
    if backend.get_backend() == "numpy":
        xp.matmul(a, b, out=out)
    else:
        out[...] = a @ b


def _lead(a, b):
    """The broadcast of two arrays' leading (task) axes: all but their last two."""
    a, b = a[:-2], b[:-2]
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    return tuple(max(i, j) for i, j in zip(a, b))


@primitive
def conv(x, w, stride=1, padding=0):
    return _conv(x, w, stride, padding)


def _conv(x, w, stride, padding, bias=None):
    """W U(x) (+ bias, of shape (..., O) with w's leading axes, as a last column of W)."""
    out_c, in_c, kh, kw = w.shape[-4:]
    wm = w.reshape(w.shape[:-3] + (in_c * kh * kw,))                   # (..., O, C*kh*kw)
    if bias is not None:
        wm = xp.concatenate([wm, bias[..., None]], axis=-1)            # (..., O, C*kh*kw + 1)
    n, (h, wd) = x.shape[-3], x.shape[-2:]
    oh, ow = _out_size(h + 2 * padding, kh, stride), _out_size(wd + 2 * padding, kw, stride)
    lead = _lead(wm.shape, x.shape[:-4] + (1, 1))
    slices = _batch_slices(x.shape[:-4], wm.shape[-1], n, oh * ow)
    if len(slices) == 1:
        cols, _ = _im2col(x, kh, kw, stride, padding, ones_row=bias is not None)
        return (wm @ cols).reshape(lead + (out_c, n, oh, ow))         # one product per task
    y = xp.empty(lead + (out_c, n, oh, ow), dtype=xp.result_type(w.dtype, x.dtype))
    for part in slices:
        cols, _ = _im2col(x[..., part, :, :], kh, kw, stride, padding, ones_row=bias is not None)
        _product_into(wm, cols, _flat(y[..., part, :, :]))
    return y


@conv.vjp
def _conv_vjp(g, out, x, w, stride=1, padding=0):
    if (x.requires_grad and w.requires_grad and not is_grad_enabled()
            and _flips(w.shape, stride, padding)):
        gx, gw = _conv_grads_arrays(g.data, x.data, w.data, padding)
        return unbroadcast(Tensor(gx), x.shape), unbroadcast(Tensor(gw), w.shape)
    gx = gw = None
    if x.requires_grad:
        gx = unbroadcast(conv_transpose(g, w, size=x.shape[-2:], stride=stride, padding=padding),
                         x.shape)
    if w.requires_grad:
        gw = unbroadcast(conv_weight_grad(x, g, kernel=w.shape[-2:], stride=stride,
                                          padding=padding), w.shape)
    return gx, gw


def _flips(w_shape, stride, padding):
    """Whether conv's adjoint in x is a convolution with the flipped kernel (below)."""
    kh, kw = w_shape[-2:]
    return stride == 1 and kh == kw and padding <= kh - 1


def _flip(w):
    """(..., O, C, k, k) -> (..., C, O, k, k), reversed in both spatial axes."""
    return xp.swapaxes(w, -4, -3)[..., ::-1, ::-1]


def _conv_grads_arrays(g, x, w, padding):
    """Both halves of conv's VJP from ONE im2col matrix, that of g (stride 1).

    With G = U_q(g), the im2col of g padded by q = k - 1 - padding (rows
    indexed by (o, i', j'), columns by the pixels of x), and x_flat the
    matrix (C, N*H*W) that x already is in this layout:

        x_bar = flip(W) G                        (conv_transpose, as below)
        W_bar[o, c, i, j] = (x_flat G^T)[c, (o, k-1-i, k-1-j)]

    the second because g's value that pairs x[c, n, r, s] with W[o, c, i, j]
    sits in G at row (o, k-1-i, k-1-j), column (n, r, s). A plain backward
    pass needs both, so this saves conv_weight_grad's im2col of x. Raw
    arrays, first-order only; a recorded backward uses the two primitives.
    """
    out_c, in_c, k = w.shape[-4], w.shape[-3], w.shape[-1]
    n = x.shape[-3]
    wf = _flip(w).reshape(w.shape[:-4] + (in_c, out_c * k * k))
    lead = _lead(wf.shape, g.shape[:-4] + (1, 1))
    gx = xp.empty(lead + x.shape[-4:], dtype=xp.result_type(g.dtype, w.dtype))
    gwf = None
    for part in _batch_slices(lead, out_c * k * k, n, x.shape[-2] * x.shape[-1]):
        cols, _ = _im2col(g[..., part, :, :], k, k, 1, k - 1 - padding)   # (..., O*k*k, m*H*W)
        _product_into(wf, cols, _flat(gx[..., part, :, :]))
        term = _flat(x[..., part, :, :]) @ xp.swapaxes(cols, -1, -2)      # (..., C, O*k*k)
        gwf = term if gwf is None else xp.add(gwf, term, out=gwf)
    gw = _flip(gwf.reshape(gwf.shape[:-1] + (out_c, k, k)))               # back to (..., O, C, k, k)
    return gx, xp.ascontiguousarray(gw)


@primitive
def conv_transpose(g, w, size, stride=1, padding=0):
    out_c, in_c, kh, kw = w.shape[-4:]
    n, oh, ow = g.shape[-3:]
    if _flips(w.shape, stride, padding):
        # the adjoint of a stride-1 correlation is the correlation with the kernel
        # flipped in space and transposed in channels, padded by kh - 1 - padding:
        # an im2col of g (reads every gradient kh*kw times) instead of a fold
        # (which adds kh*kw partial images into x_bar)
        return _conv(g, _flip(w), 1, kh - 1 - padding)
    wt = xp.swapaxes(w.reshape(w.shape[:-3] + (in_c * kh * kw,)), -1, -2)   # (..., C*kh*kw, O)
    slices = _batch_slices(_lead(wt.shape, g.shape[:-3] + (1, 1)), in_c * kh * kw, n, oh * ow)
    x = None
    for part in slices:
        gp = g[..., part, :, :]
        cols = wt @ _flat(gp)
        cols = cols.reshape(cols.shape[:-2] + (in_c, kh, kw) + gp.shape[-3:])
        xs = fold.forward(cols, size, stride, padding, at=-3)
        if len(slices) == 1:
            return xs
        if x is None:
            x = xp.empty(xs.shape[:-3] + (n,) + xs.shape[-2:], dtype=xs.dtype)
        x[..., part, :, :] = xs
    return x


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
    n, oh, ow = g.shape[-3:]
    in_c = x.shape[-4]
    wb = None
    for part in _batch_slices(x.shape[:-4], in_c * kh * kw, n, oh * ow):
        cols, _ = _im2col(x[..., part, :, :], kh, kw, stride, padding)      # (..., C*kh*kw, n*OH*OW)
        term = _flat(g[..., part, :, :]) @ xp.swapaxes(cols, -1, -2)        # (..., O, C*kh*kw)
        wb = term if wb is None else xp.add(wb, term, out=wb)
    return wb.reshape(wb.shape[:-1] + (in_c, kh, kw))


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


@primitive
def conv_bias(x, w, b, stride=1, padding=0):
    """conv(x, w) + b, with b of shape (..., O, 1, 1, 1): the bias rides in the
    matrix product (W's last column against a row of ones), so no extra pass."""
    bias = b.reshape(b.shape[:-3])                                      # (..., O)
    if bias.shape[:-1] == w.shape[:-4]:
        return _conv(x, w, stride, padding, bias=bias)
    return conv.forward(x, w, stride, padding) + b                      # leading axes differ


@conv_bias.vjp
def _conv_bias_vjp(g, out, x, w, b, stride=1, padding=0):
    gx, gw = _conv_vjp(g, out, x, w, stride=stride, padding=padding)
    return gx, gw, (unbroadcast(g, b.shape) if b.requires_grad else None)
