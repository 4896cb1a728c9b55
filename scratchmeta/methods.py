"""Tensor's operators and array methods, bound onto the class here.

tensor.py defines Tensor and the graph walk without importing any primitive;
ops.py defines the primitives on top of it. This module, one floor up, gives
Tensor its Python surface: x + y is ops.add(x, y), x.sum() is ops.sum(x),
x.exp() is ops.exp(x), and so on (PyTorch's names). Comparisons give boolean
tensors that carry no gradient.
"""
from .ops import (abs, add, broadcast_to, clip, cos, div, exp, expm1, getitem, log, log1p,
                  matmul, max, mul, neg, pow, relu, reshape, sigmoid, sin, sqrt, sub, sum,
                  tanh, transpose, _kept_shape)
from .tensor import Tensor


def _raw(x):
    return x.data if isinstance(x, Tensor) else x


def _raw_index(index):
    """Indices may hold integer Tensors: use their arrays."""
    if isinstance(index, tuple):
        return tuple(_raw(i) for i in index)
    return _raw(index)


def _axis(axis):
    return tuple(axis) if isinstance(axis, list) else axis


def _dims(args):
    """f(2, 3) and f((2, 3)) alike."""
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else tuple(args)


def _mean(self, axis=None, keepdims=False):
    ax = _axis(axis)
    n = 1
    for size, kept in zip(self.shape, _kept_shape(self.shape, ax)):
        n *= size if kept == 1 else 1     # the sizes of the averaged axes
    if n == 0:
        raise ValueError(f"mean: no values to average (a tensor of shape {self.shape}, axis={axis})")
    return sum(self, axis=ax, keepdims=keepdims) * (1.0 / n)


def _var(self, axis=None, keepdims=False):
    """Biased variance (divides by n), as batch norm uses it."""
    centred = self - self.mean(axis, keepdims=True)
    return (centred * centred).mean(axis, keepdims=keepdims)


def _transpose(self, *axes):
    return transpose(self, axes=_dims(axes) or tuple(reversed(range(self.ndim))))


def _swapaxes(self, a, b):
    axes = list(range(self.ndim))
    axes[a], axes[b] = axes[b], axes[a]
    return transpose(self, axes=tuple(axes))


def _compare(fn):
    return lambda self, other: Tensor(fn(self.data, _raw(other)))   # no gradient


_METHODS = dict(
    __add__=lambda s, o: add(s, o), __radd__=lambda s, o: add(o, s),
    __sub__=lambda s, o: sub(s, o), __rsub__=lambda s, o: sub(o, s),
    __mul__=lambda s, o: mul(s, o), __rmul__=lambda s, o: mul(o, s),
    __truediv__=lambda s, o: div(s, o), __rtruediv__=lambda s, o: div(o, s),
    __pow__=lambda s, o: pow(s, o), __rpow__=lambda s, o: pow(o, s),
    __matmul__=lambda s, o: matmul(s, o), __rmatmul__=lambda s, o: matmul(o, s),
    __neg__=lambda s: neg(s), __pos__=lambda s: s,
    __getitem__=lambda s, index: getitem(s, index=_raw_index(index)),
    __lt__=_compare(lambda a, b: a < b), __le__=_compare(lambda a, b: a <= b),
    __gt__=_compare(lambda a, b: a > b), __ge__=_compare(lambda a, b: a >= b),
    __eq__=_compare(lambda a, b: a == b), __ne__=_compare(lambda a, b: a != b),
    sum=lambda s, axis=None, keepdims=False: sum(s, axis=_axis(axis), keepdims=keepdims),
    mean=_mean, var=_var,
    max=lambda s, axis=None, keepdims=False: max(s, axis=_axis(axis), keepdims=keepdims),
    min=lambda s, axis=None, keepdims=False: -max(-s, axis=_axis(axis), keepdims=keepdims),
    reshape=lambda s, *shape: reshape(s, shape=_dims(shape)),
    transpose=_transpose, swapaxes=_swapaxes,
    broadcast_to=lambda s, shape: broadcast_to(s, shape=tuple(shape)),
    clip=lambda s, min=None, max=None: clip(s, -float("inf") if min is None else min,
                                            float("inf") if max is None else max),
)
for _op in (exp, log, sqrt, abs, tanh, sigmoid, relu, log1p, expm1, sin, cos):
    _METHODS[_op.name] = (lambda op: lambda self: op(self))(_op)      # x.exp() -> exp(x)
for _name, _fn in _METHODS.items():
    setattr(Tensor, _name, _fn)
Tensor.__hash__ = object.__hash__        # __eq__ above would otherwise unset it
