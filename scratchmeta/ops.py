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
from .tensor import Tensor, astype, primitive


def fits(shape, into):
    """Whether an array of `shape` broadcasts into `into` without enlarging it."""
    return len(shape) <= len(into) and all(s in (1, d) for s, d in zip(shape[::-1], into[::-1]))


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
    # d(x^y)/dx = y x^(y-1); d(x^y)/dy = x^y log x (only when y needs it).
    # Where a constant y is 0 the derivative in x is 0: masking it (as PyTorch
    # does) keeps 0 * x^(-1) = 0 * inf = NaN out of the derivatives of x^n at
    # x = 0 from order n + 1 on (the exponent drops by one per order).
    gx = gy = None
    if x.requires_grad:
        if y.requires_grad:
            gx = g * y * x ** (y - 1)
        else:
            zero = _const(y.data == 0)
            gx = g * y * x ** where(zero, _const(xp.ones((), dtype=y.dtype)), y - 1)
            gx = where(zero, _const(xp.zeros((), dtype=gx.dtype)), gx)
        gx = unbroadcast(gx, x.shape)
    if y.requires_grad:
        gy = unbroadcast(g * out * log(x), y.shape)
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
    # C = A B:  dL/dA = G B^T,  dL/dB = A^T G  (batched, with broadcasting); a vector
    # a is a row (1, k), a vector b a column (k, 1), and g gets back the axes they lack
    a2 = a.reshape(1, a.shape[0]) if a.ndim == 1 else a
    b2 = b.reshape(b.shape[0], 1) if b.ndim == 1 else b
    g2 = g.reshape(g.shape[:g.ndim - (a.ndim > 1) - (b.ndim > 1)] + (a2.shape[-2], b2.shape[-1]))
    return (unbroadcast(g2 @ b2.mT, a2.shape).reshape(a.shape) if a.requires_grad else None,
            unbroadcast(a2.mT @ g2, b2.shape).reshape(b.shape) if b.requires_grad else None)


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


@primitive
def concatenate(*xs, axis=0):
    try:
        return xp.concatenate(xs, axis=axis)
    except ValueError:
        shapes = ", ".join(str(x.shape) for x in xs)
        raise ValueError(f"concatenate: shapes {shapes} do not fit together along axis {axis}") from None


@concatenate.vjp
def _concatenate_vjp(g, out, *xs, axis=0):
    grads, start = [], 0
    for x in xs:                       # each input gets back its own slice along `axis`
        index = [slice(None)] * g.ndim
        index[axis] = slice(start, start + x.shape[axis])
        grads.append(g[tuple(index)] if x.requires_grad else None)
        start += x.shape[axis]
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


# -- more elementwise functions ------------------------------------------------------
@primitive
def log1p(x):
    return xp.log1p(x)


@log1p.vjp
def _log1p_vjp(g, out, x):
    return (g / (1 + x),)                    # d log(1 + x)/dx = 1/(1 + x)


@primitive
def expm1(x):
    return xp.expm1(x)


@expm1.vjp
def _expm1_vjp(g, out, x):
    return (g * (out + 1),)                  # d (e^x - 1)/dx = e^x


@primitive
def softplus(x):
    # log(1 + e^x) = max(x, 0) + log1p(e^-|x|), without overflow
    return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))


@softplus.vjp
def _softplus_vjp(g, out, x):
    return (g * sigmoid(x),)                 # d softplus/dx = sigmoid(x)


@primitive
def sin(x):
    return xp.sin(x)


@sin.vjp
def _sin_vjp(g, out, x):
    return (g * cos(x),)                     # d sin/dx = cos


@primitive
def cos(x):
    return xp.cos(x)


@cos.vjp
def _cos_vjp(g, out, x):
    return (-g * sin(x),)                    # d cos/dx = -sin


@primitive
def maximum(x, y):
    try:
        return xp.maximum(x, y)
    except ValueError:
        raise _shape_error('maximum', x, y) from None


@maximum.vjp
def _maximum_vjp(g, out, x, y):
    # the gradient goes to the larger input, split evenly on ties (as torch.maximum)
    return _pick_vjp(g, x, y, x.data > y.data)


@primitive
def minimum(x, y):
    try:
        return xp.minimum(x, y)
    except ValueError:
        raise _shape_error('minimum', x, y) from None


@minimum.vjp
def _minimum_vjp(g, out, x, y):
    return _pick_vjp(g, x, y, x.data < y.data)


def _pick_vjp(g, x, y, x_wins):
    """g routed to x where x_wins, to y where y wins, half to each on ties."""
    tie = x.data == y.data
    share = _const((x_wins + 0.5 * tie).astype(g.dtype))      # x's share, locally flat
    return (unbroadcast(g * share, x.shape) if x.requires_grad else None,
            unbroadcast(g * (1 - share), y.shape) if y.requires_grad else None)


@primitive
def clip(x, lo, hi):
    return xp.clip(x, lo, hi)


@clip.vjp
def _clip_vjp(g, out, x, lo, hi):
    # the gradient passes where lo <= x <= hi (PyTorch's clamp: the bounds included)
    inside = _const(((x.data >= lo.data) & (x.data <= hi.data)).astype(g.dtype))
    below, above = _const((x.data < lo.data).astype(g.dtype)), _const((x.data > hi.data).astype(g.dtype))
    return (unbroadcast(g * inside, x.shape) if x.requires_grad else None,
            unbroadcast(g * below, lo.shape) if lo.requires_grad else None,
            unbroadcast(g * above, hi.shape) if hi.requires_grad else None)
