"""The primitives: a forward on raw `xp` arrays beside a VJP in Tensor ops.

Each VJP receives the upstream gradient `g`, the output `out` and the inputs
as Tensors (plus the primitive's static keyword arguments) and returns one
Tensor per input, or None where an input needs no gradient. Because VJPs use
only Tensor operations, differentiating them again needs no extra code.

Where a VJP reads `.data` it builds a constant that is locally flat in the
inputs (the mask of relu, the sign of abs, the argmax of max): the derivative
of such a constant is zero almost everywhere, so nothing is cut that should
be kept.
"""
import builtins

from .backend import xp
from .tensor import Tensor, primitive


def unbroadcast(g, shape):
    """Sum `g` back to `shape` over the axes broadcasting added or stretched.

    Composed of `sum` and `reshape`, so it stays differentiable.
    """
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        i + lead for i, s in enumerate(shape) if s == 1 and g.shape[i + lead] != 1)
    return g.sum(axis=axes, keepdims=True).reshape(shape)


def _shape_error(op, x, y):
    return ValueError(f"{op}: shapes {x.shape} and {y.shape} do not broadcast")


def _const(array):
    """A Tensor that carries no gradient (masks, signs, indices)."""
    return Tensor(array)


# -- arithmetic ---------------------------------------------------------------
@primitive
def add(x, y):
    try:
        return x + y
    except ValueError:
        raise _shape_error('add', x, y) from None


@add.vjp
def _add_vjp(g, out, x, y):
    # d(x + y)/dx = d(x + y)/dy = 1
    return (unbroadcast(g, x.shape) if x.requires_grad else None,
            unbroadcast(g, y.shape) if y.requires_grad else None)


@primitive
def sub(x, y):
    try:
        return x - y
    except ValueError:
        raise _shape_error('sub', x, y) from None


@sub.vjp
def _sub_vjp(g, out, x, y):
    return (unbroadcast(g, x.shape) if x.requires_grad else None,
            -unbroadcast(g, y.shape) if y.requires_grad else None)   # negate after reducing


@primitive
def mul(x, y):
    try:
        return x * y
    except ValueError:
        raise _shape_error('mul', x, y) from None


@mul.vjp
def _mul_vjp(g, out, x, y):
    # d(xy)/dx = y, d(xy)/dy = x
    if x is y:                                   # x * x: one product serves both slots
        gx = g * x
        return gx, gx
    return (unbroadcast(g * y, x.shape) if x.requires_grad else None,
            unbroadcast(g * x, y.shape) if y.requires_grad else None)


@primitive
def div(x, y):
    try:
        return x / y
    except ValueError:
        raise _shape_error('div', x, y) from None


@div.vjp
def _div_vjp(g, out, x, y):
    # d(x/y)/dx = 1/y, d(x/y)/dy = -x/y^2 = -out/y
    gx = g / y
    return (unbroadcast(gx, x.shape) if x.requires_grad else None,
            unbroadcast(-gx * out, y.shape) if y.requires_grad else None)


@primitive
def neg(x):
    return -x


@neg.vjp
def _neg_vjp(g, out, x):
    return (-g,)


@primitive
def pow(x, y):
    try:
        return x ** y
    except ValueError:
        raise _shape_error('pow', x, y) from None


@pow.vjp
def _pow_vjp(g, out, x, y):
    # d(x^y)/dx = y x^(y-1); d(x^y)/dy = x^y log x (only when y needs it)
    gx = unbroadcast(g * y * x ** (y - 1), x.shape) if x.requires_grad else None
    gy = unbroadcast(g * out * log(x), y.shape) if y.requires_grad else None
    return gx, gy


@primitive
def matmul(a, b):
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: operands must have at least 1 dimension, got shapes {a.shape} and {b.shape}")
    try:
        return a @ b
    except ValueError:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not multiply") from None


@matmul.vjp
def _matmul_vjp(g, out, a, b):
    # C = A B:  dL/dA = G B^T,  dL/dB = A^T G  (batched, with broadcasting)
    a2 = a.reshape(1, a.shape[0]) if a.ndim == 1 else a      # vector as a row
    b2 = b.reshape(b.shape[0], 1) if b.ndim == 1 else b      # vector as a column
    if a.ndim == 1 and b.ndim == 1:
        g2 = g.reshape(1, 1)
    elif a.ndim == 1:
        g2 = g.reshape(g.shape[:-1] + (1, g.shape[-1]))
    elif b.ndim == 1:
        g2 = g.reshape(g.shape + (1,))
    else:
        g2 = g
    ga = unbroadcast(g2 @ b2.mT, a2.shape).reshape(a.shape) if a.requires_grad else None
    gb = unbroadcast(a2.mT @ g2, b2.shape).reshape(b.shape) if b.requires_grad else None
    return ga, gb


# -- elementwise functions ------------------------------------------------------
@primitive
def exp(x):
    return xp.exp(x)


@exp.vjp
def _exp_vjp(g, out, x):
    return (g * out,)                       # d e^x/dx = e^x


@primitive
def log(x):
    return xp.log(x)


@log.vjp
def _log_vjp(g, out, x):
    return (g / x,)                         # d log x/dx = 1/x


@primitive
def sqrt(x):
    return xp.sqrt(x)


@sqrt.vjp
def _sqrt_vjp(g, out, x):
    return (g * 0.5 / out,)                 # d sqrt(x)/dx = 1/(2 sqrt x)


@primitive
def abs(x):
    return xp.abs(x)


@abs.vjp
def _abs_vjp(g, out, x):
    return (g * _const(xp.sign(x.data)),)   # d|x|/dx = sign(x), flat a.e.


@primitive
def tanh(x):
    return xp.tanh(x)


@tanh.vjp
def _tanh_vjp(g, out, x):
    return (g * (1 - out * out),)           # d tanh/dx = 1 - tanh^2


@primitive
def sigmoid(x):
    # 1/(1+e^-x), evaluated without overflow for large |x|
    z = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + z), z / (1 + z))


@sigmoid.vjp
def _sigmoid_vjp(g, out, x):
    return (g * out * (1 - out),)           # d s/dx = s (1 - s)


@primitive
def relu(x):
    return xp.maximum(x, 0)


@relu.vjp
def _relu_vjp(g, out, x):
    return (g * _const((x.data > 0).astype(x.dtype)),)   # step function, flat a.e.


@primitive
def astype(x, dtype):
    return x.astype(dtype)


@astype.vjp
def _astype_vjp(g, out, x, dtype):
    return (astype(g, dtype=x.dtype),)


# -- reductions and shape -------------------------------------------------------
@primitive
def sum(x, axis=None, keepdims=False):
    return xp.sum(x, axis=axis, keepdims=keepdims)


@sum.vjp
def _sum_vjp(g, out, x, axis=None, keepdims=False):
    # every summand receives the upstream gradient: broadcast it back
    return (broadcast_to(g.reshape(_kept_shape(x.shape, axis)), shape=x.shape),)


def _kept_shape(shape, axis):
    """The shape a reduction over `axis` has with keepdims=True."""
    if axis is None:
        return (1,) * len(shape)
    axes = axis if isinstance(axis, tuple) else (axis,)
    axes = {a % len(shape) for a in axes}
    return tuple(1 if i in axes else s for i, s in enumerate(shape))


@primitive
def broadcast_to(x, shape):
    try:
        return xp.broadcast_to(x, shape)
    except ValueError:
        raise ValueError(f"broadcast_to: shape {x.shape} does not broadcast to {shape}") from None


@broadcast_to.vjp
def _broadcast_to_vjp(g, out, x, shape):
    return (unbroadcast(g, x.shape),)


@primitive
def max(x, axis=None, keepdims=False):
    if x.size == 0:
        raise ValueError(f"max: empty input of shape {x.shape}")
    return xp.max(x, axis=axis, keepdims=keepdims)


@max.vjp
def _max_vjp(g, out, x, axis=None, keepdims=False):
    # The gradient goes to the maximal entries, split evenly between ties.
    kept = _kept_shape(x.shape, axis)
    mask = (x.data == out.data.reshape(kept)).astype(x.dtype)
    share = _const(mask / mask.sum(axis=axis, keepdims=True))
    return (g.reshape(kept) * share,)


@primitive
def reshape(x, shape):
    try:
        return x.reshape(shape)
    except ValueError:
        raise ValueError(f"reshape: cannot reshape an array of shape {x.shape} into {shape}") from None


@reshape.vjp
def _reshape_vjp(g, out, x, shape):
    return (g.reshape(x.shape),)


@primitive
def transpose(x, axes):
    try:
        return xp.transpose(x, axes)
    except ValueError:
        raise ValueError(f"transpose: axes {axes} do not fit shape {x.shape}") from None


@transpose.vjp
def _transpose_vjp(g, out, x, axes):
    inverse = [0] * len(axes)
    for i, a in enumerate(axes):
        inverse[a % len(axes)] = i
    return (g.transpose(*inverse),)


def _has_array_index(index):
    """Integer or boolean array indices can repeat positions: scatter-add then."""
    items = index if isinstance(index, tuple) else (index,)
    return builtins.any(hasattr(i, "shape") or isinstance(i, list) for i in items)


@primitive
def getitem(x, index):
    return x[index]


@getitem.vjp
def _getitem_vjp(g, out, x, index):
    return (scatter_add(g, index=index, shape=x.shape),)


@primitive
def scatter_add(g, index, shape):
    """zeros(shape) with g added at `index`: the adjoint of indexing."""
    z = xp.zeros(shape, dtype=g.dtype)
    if _has_array_index(index):
        _add_at(z, index, g)               # repeated positions accumulate
    else:
        z[index] = g                       # basic slices never repeat
    return z


@scatter_add.vjp
def _scatter_add_vjp(g, out, x, index, shape):
    return (g[index],)                     # the adjoint of scatter-add is gather


def _add_at(z, index, values):
    if hasattr(xp, "add") and hasattr(xp.add, "at"):
        xp.add.at(z, index, values)
    else:  # older CuPy
        import cupyx  # noqa: F401  (only reached on the cupy backend)
        cupyx.scatter_add(z, index, values)


def _split_sizes(sizes, axis):
    bounds, start = [], 0
    for s in sizes:
        bounds.append((start, start + s))
        start += s
    return bounds


@primitive
def concatenate(*xs, axis=0):
    try:
        return xp.concatenate(xs, axis=axis)
    except ValueError:
        shapes = ", ".join(str(x.shape) for x in xs)
        raise ValueError(f"concatenate: shapes {shapes} do not fit together along axis {axis}") from None


@concatenate.vjp
def _concatenate_vjp(g, out, *xs, axis=0):
    grads = []
    for x, (lo, hi) in zip(xs, _split_sizes([x.shape[axis] for x in xs], axis)):
        index = [slice(None)] * g.ndim
        index[axis] = slice(lo, hi)
        grads.append(g[tuple(index)] if x.requires_grad else None)
    return tuple(grads)


@primitive
def stack(*xs, axis=0):
    try:
        return xp.stack(xs, axis=axis)
    except ValueError:
        shapes = ", ".join(str(x.shape) for x in xs)
        raise ValueError(f"stack: shapes {shapes} differ; stack needs equal shapes") from None


@stack.vjp
def _stack_vjp(g, out, *xs, axis=0):
    grads = []
    for i, x in enumerate(xs):
        index = [slice(None)] * g.ndim
        index[axis] = i
        grads.append(g[tuple(index)] if x.requires_grad else None)
    return tuple(grads)


@primitive
def where(cond, x, y):
    try:
        return xp.where(cond, x, y)
    except ValueError:
        raise ValueError(f"where: shapes {cond.shape} (condition), {x.shape} and {y.shape} "
                         f"do not broadcast") from None


@where.vjp
def _where_vjp(g, out, cond, x, y):
    zero = _const(xp.zeros((), dtype=g.dtype))
    return (None,
            unbroadcast(where(cond, g, zero), x.shape) if x.requires_grad else None,
            unbroadcast(where(cond, zero, g), y.shape) if y.requires_grad else None)


# -- sliding windows (convolution and pooling) ------------------------------------
def _out_size(n, k, stride):
    return (n - k) // stride + 1


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
        x = xp.pad(x, [(0, 0)] * (x.ndim - 2) + [(padding, padding)] * 2)
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
def _crop(x, k):
    """x cropped to whole windows (floor mode), viewed as (..., OH, k, OW, k)."""
    oh, ow = x.shape[-2] // k, x.shape[-1] // k
    x = x[..., :oh * k, :ow * k]
    return x.reshape(x.shape[:-2] + (oh, k, ow, k))


@primitive
def pool_max(x, k):
    # the max of the k*k strided views x[..., i::k, j::k]: elementwise, no reduction
    oh, ow = x.shape[-2] // k, x.shape[-1] // k
    out = None
    for i in range(k):
        for j in range(k):
            view = x[..., i:i + k * oh:k, j:j + k * ow:k]
            out = view.copy() if out is None else xp.maximum(out, view, out=out)
    return out


@pool_max.vjp
def _pool_max_vjp(g, out, x, k):
    return (pool_route(g, x, out, k=k),)


def _share(x, out, k):
    """(..., OH, k, OW, k): 1 at each window's maximum, 1/m for an m-way tie, else 0."""
    mask = _crop(x, k) == out[..., :, None, :, None]
    count = _window_sum(mask, k, dtype=xp.int8)[..., :, None, :, None]
    if bool((count > 1).any()):
        return mask / count
    return mask


def _window_sum(a, k, dtype=None):
    """Sum over the window axes of (..., OH, k, OW, k) as k*k elementwise adds
    (a reduction over two strided axes is many times slower in NumPy)."""
    total = a[..., :, 0, :, 0].astype(dtype or a.dtype)
    for i in range(k):
        for j in range(k):
            if i or j:
                total += a[..., :, i, :, j]
    return total


@primitive
def pool_route(g, x, out, k):
    """g (..., OH, OW) placed at each window's maximum of x; zeros elsewhere."""
    routed = (g[..., :, None, :, None] * _share(x, out, k)).reshape(
        x.shape[:-2] + (out.shape[-2] * k, out.shape[-1] * k))
    if routed.shape != x.shape:                     # windows cropped off the edge get nothing
        pad = [(0, 0)] * (x.ndim - 2) + [(0, x.shape[-2] - routed.shape[-2]),
                                         (0, x.shape[-1] - routed.shape[-1])]
        routed = xp.pad(routed, pad)
    return routed


@pool_route.vjp
def _pool_route_vjp(g, out, g_in, x, pooled, k):
    return (pool_pick(g, x, pooled, k=k), None, None)


@primitive
def pool_pick(gx, x, out, k):
    """The adjoint of pool_route: each window's (tie-shared) value at its maximum."""
    return _window_sum(_crop(gx, k) * _share(x, out, k), k)


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
def _im2col(x, kh, kw, stride, padding):
    cols = unfold.forward(x, kh, kw, stride, padding, at=-3)       # (..., C, kh, kw, N, OH, OW)
    n, oh, ow = cols.shape[-3:]
    return cols.reshape(cols.shape[:-6] + (cols.shape[-6] * kh * kw, n * oh * ow)), (n, oh, ow)


def _flat(y):
    """(..., O, N, OH, OW) -> (..., O, N*OH*OW)."""
    return y.reshape(y.shape[:-3] + (y.shape[-3] * y.shape[-2] * y.shape[-1],))


@primitive
def conv(x, w, stride=1, padding=0):
    out_c, in_c, kh, kw = w.shape[-4:]
    cols, (n, oh, ow) = _im2col(x, kh, kw, stride, padding)
    y = w.reshape(w.shape[:-3] + (in_c * kh * kw,)) @ cols            # one product per task
    return y.reshape(y.shape[:-1] + (n, oh, ow))


@conv.vjp
def _conv_vjp(g, out, x, w, stride=1, padding=0):
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
    n, oh, ow = g.shape[-3:]
    cols = xp.swapaxes(w.reshape(w.shape[:-3] + (in_c * kh * kw,)), -1, -2) @ _flat(g)
    cols = cols.reshape(cols.shape[:-2] + (in_c, kh, kw, n, oh, ow))
    return fold.forward(cols, size, stride, padding, at=-3)


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
    cols, _ = _im2col(x, kh, kw, stride, padding)                      # (..., C*kh*kw, N*OH*OW)
    wb = _flat(g) @ xp.swapaxes(cols, -1, -2)                          # (..., O, C*kh*kw)
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
