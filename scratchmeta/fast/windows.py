"""Fast convolution: replaces windows.conv, conv_transpose, conv_weight_grad and
the composite functional.conv2d_cnhw.

- Sliced im2col (conv, conv_transpose, conv_weight_grad forwards). An im2col
  matrix is kh*kw times the size of its input; for a large batch each forward
  builds it a slice of the batch axis N at a time, at most COLS_BUDGET values
  (8 MiB in float64), writing each slice's product straight into the output.
  Faster because the working set stays in cache and the peak memory near that
  of the activations.
- Bias in the product (conv2d_cnhw -> the fast-only primitive conv_bias): the
  bias rides as a last column of W against a row of ones appended to U(x), so
  adding it costs no pass over the output.
- Flipped-kernel conv_transpose: for stride 1 and a square kernel the adjoint
  of a correlation is the correlation of g with the kernel flipped in space and
  transposed in channels, padded by k - 1 - padding: an im2col of g (reads
  every gradient kh*kw times) instead of a fold (which adds kh*kw partial
  images into x_bar).
- One-im2col conv VJP: a plain backward pass (grad mode off) needing both
  x_bar and W_bar builds one im2col matrix, that of g, for both (see
  _conv_grads_arrays) instead of one of g and one of x.

All of it runs under CuPy too (NumPy's matmul(out=) is used only on NumPy).
"""
import math

from .. import backend, windows
from .. import functional as F
from ..backend import xp
from ..ops import unbroadcast
from ..tensor import Tensor, is_grad_enabled, lift, primitive
from .overlay import replace, replace_composite

COLS_BUDGET = 1 << 20


def _out_size(n, k, stride):
    return (n - k) // stride + 1


def _unfold_into(x, kh, kw, stride, padding, into):
    """windows.unfold's forward (at=-3), written into `into` (..., C, kh, kw, N, OH, OW)."""
    if padding:
        x = windows._pad(x, padding)
    oh, ow = into.shape[-2:]
    for i in range(kh):
        for j in range(kw):
            into[..., :, i, j, :, :, :] = x[..., i:i + stride * oh:stride, j:j + stride * ow:stride]


def _im2col(x, kh, kw, stride, padding, ones_row=False):
    """The im2col matrix (..., C*kh*kw [+ 1], N*OH*OW) of x (..., C, N, H, W), and (N, OH, OW).

    ones_row=True appends a row of ones, so that a weight matrix with the bias
    as its last column adds the bias in the same matrix product.
    """
    if not ones_row:
        return windows._im2col(x, kh, kw, stride, padding)
    c, n, (h, w) = x.shape[-4], x.shape[-3], x.shape[-2:]
    oh, ow = _out_size(h + 2 * padding, kh, stride), _out_size(w + 2 * padding, kw, stride)
    cols = xp.empty(x.shape[:-4] + (c * kh * kw + 1, n * oh * ow), dtype=x.dtype)
    _unfold_into(x, kh, kw, stride, padding,
                 cols[..., :-1, :].reshape(x.shape[:-4] + (c, kh, kw, n, oh, ow)))
    cols[..., -1, :] = 1
    return cols, (n, oh, ow)


def _flat(y):
    """(..., O, N, OH, OW) -> (..., O, N*OH*OW), a view (also of a slice along N)."""
    return y.reshape(y.shape[:-3] + (y.shape[-3] * y.shape[-2] * y.shape[-1],))


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


def _product_nt(a, cols):
    """a @ cols^T for a (..., P, K) and cols (..., Q, K), both long in K (pixels).

    Computed as (cols @ a^T)^T, a transposed view, when cols has more rows:
    OpenBLAS's sgemm ran that order 10-20% faster on the weight gradients'
    shapes (Q = 576 rows of im2col against P = 64 channels), and the slower
    one when cols has fewer rows (a first layer's 9).
    """
    if cols.shape[-2] > a.shape[-2]:
        return xp.swapaxes(cols @ xp.swapaxes(a, -1, -2), -1, -2)
    return a @ xp.swapaxes(cols, -1, -2)


def _lead(a, b):
    """The broadcast of two arrays' leading (task) axes: all but their last two."""
    a, b = a[:-2], b[:-2]
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    return tuple(max(i, j) for i, j in zip(a, b))


def _conv(x, w, stride, padding, bias=None):
    """W U(x) (+ bias, of shape (..., O) with w's leading axes, as a last column of W)."""
    out_c, in_c, kh, kw = w.shape[-4:]
    wm = w.reshape(w.shape[:-3] + (in_c * kh * kw,))                   # (..., O, C*kh*kw)
    if bias is not None:
        wm = xp.concatenate([wm, bias[..., None]], axis=-1)            # (..., O, C*kh*kw + 1)
    n, (h, wd) = x.shape[-3], x.shape[-2:]
    oh, ow = _out_size(h + 2 * padding, kh, stride), _out_size(wd + 2 * padding, kw, stride)
    if oh < 1 or ow < 1:
        raise ValueError(f"unfold: a {kh}x{kw} window does not fit an input of size "
                         f"{h + 2 * padding}x{wd + 2 * padding} (after padding)")
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


def _flips(w_shape, stride, padding):
    """Whether conv's adjoint in x is a convolution with the flipped kernel."""
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

        x_bar = flip(W) G                        (the flipped-kernel conv_transpose)
        W_bar[o, c, i, j] = (x_flat G^T)[c, (o, k-1-i, k-1-j)]

    the second because g's value that pairs x[c, n, r, s] with W[o, c, i, j]
    sits in G at row (o, k-1-i, k-1-j), column (n, r, s).
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
        term = _product_nt(_flat(x[..., part, :, :]), cols)               # (..., C, O*k*k)
        gwf = term if gwf is None else xp.add(gwf, term, out=gwf)
    gw = _flip(gwf.reshape(gwf.shape[:-1] + (out_c, k, k)))               # back to (..., O, C, k, k)
    return gx, xp.ascontiguousarray(gw)


def _conv_vjp(g, out, x, w, stride=1, padding=0):
    if (x.requires_grad and w.requires_grad and not is_grad_enabled()
            and _flips(w.shape, stride, padding)):
        gx, gw = _conv_grads_arrays(g.data, x.data, w.data, padding)
        return unbroadcast(Tensor(gx), x.shape), unbroadcast(Tensor(gw), w.shape)
    return windows.conv.vjp_fn(g, out, x, w, stride=stride, padding=padding)


def _conv_transpose_forward(g, w, size, stride=1, padding=0):
    out_c, in_c, kh, kw = w.shape[-4:]
    n, oh, ow = g.shape[-3:]
    if _flips(w.shape, stride, padding) and tuple(size) == (oh - 1 + kh - 2 * padding,
                                                             ow - 1 + kw - 2 * padding):
        return _conv(g, _flip(w), 1, kh - 1 - padding)
    wt = xp.swapaxes(w.reshape(w.shape[:-3] + (in_c * kh * kw,)), -1, -2)   # (..., C*kh*kw, O)
    slices = _batch_slices(_lead(wt.shape, g.shape[:-3] + (1, 1)), in_c * kh * kw, n, oh * ow)
    x = None
    for part in slices:
        gp = g[..., part, :, :]
        cols = wt @ _flat(gp)
        cols = cols.reshape(cols.shape[:-2] + (in_c, kh, kw) + gp.shape[-3:])
        xs = windows.fold.forward(cols, size, stride, padding, at=-3)
        if len(slices) == 1:
            return xs
        if x is None:
            x = xp.empty(xs.shape[:-3] + (n,) + xs.shape[-2:], dtype=xs.dtype)
        x[..., part, :, :] = xs
    return x


def _conv_weight_grad_forward(x, g, kernel, stride=1, padding=0):
    kh, kw = kernel
    n, oh, ow = g.shape[-3:]
    in_c = x.shape[-4]
    wb = None
    for part in _batch_slices(x.shape[:-4], in_c * kh * kw, n, oh * ow):
        cols, _ = _im2col(x[..., part, :, :], kh, kw, stride, padding)      # (..., C*kh*kw, n*OH*OW)
        term = _product_nt(_flat(g[..., part, :, :]), cols)                 # (..., O, C*kh*kw)
        wb = term if wb is None else xp.add(wb, term, out=wb)
    return xp.ascontiguousarray(wb).reshape(wb.shape[:-1] + (in_c, kh, kw))


def _conv_forward(x, w, stride=1, padding=0):
    return _conv(x, w, stride, padding)


@primitive
def conv_bias(x, w, b, stride=1, padding=0):
    """conv(x, w) + b, with b of shape (..., O, 1, 1, 1): the bias rides in the
    matrix product (W's last column against a row of ones), so no extra pass."""
    bias = b.reshape(b.shape[:-3])                                      # (..., O)
    if bias.shape[:-1] == w.shape[:-4]:
        return _conv(x, w, stride, padding, bias=bias)
    return _conv(x, w, stride, padding) + b                             # leading axes differ


@conv_bias.vjp
def _conv_bias_vjp(g, out, x, w, b, stride=1, padding=0):
    gx, gw = _conv_vjp(g, out, x, w, stride=stride, padding=padding)
    return gx, gw, (unbroadcast(g, b.shape) if b.requires_grad else None)


def _conv2d_cnhw(x, w, b=None, stride=1, padding=0):
    if b is None:
        return F.conv2d_cnhw.reference(x, w, None, stride, padding)
    x, w, b = lift((x, w, b))
    if w.ndim < 4 or x.ndim < 4 or x.shape[-4] != w.shape[-3]:
        return F.conv2d_cnhw.reference(x, w, b, stride, padding)       # the core's errors
    return conv_bias(x, w, b.reshape(b.shape + (1, 1, 1)), stride=stride, padding=padding)


replace(windows.conv, forward=_conv_forward, vjp=_conv_vjp,
        why="im2col a slice of the batch at a time; a plain backward builds one im2col (of g) "
            "for both halves of the VJP")
replace(windows.conv_transpose, forward=_conv_transpose_forward,
        why="stride 1: a correlation with the flipped kernel (im2col) instead of a fold; "
            "else the fold a slice of the batch at a time")
replace(windows.conv_weight_grad, forward=_conv_weight_grad_forward,
        why="im2col a slice of the batch at a time, products summed in place")
replace_composite(F.conv2d_cnhw, _conv2d_cnhw,
                  why="the bias as a last column of W against a row of ones: no pass to add it")
