"""Softmax and GELU as primitives, each its equation.

softmax (axis):  s = exp(x - m) / sum(exp(x - m)),  m = max(x) (any constant m
                 gives the same s; the max keeps exp from overflowing)
                 VJP: dL/dx = s * (g - sum(g * s))
GELU, tanh form (Hendrycks & Gimpel 2016):
                 y = x (1 + t) / 2,  t = tanh(c (x + a x^3)),  c = sqrt(2/pi), a = 0.044715
                 VJP: dL/dx = g ((1 + t) / 2 + x (1 - t^2) c (1 + 3 a x^2) / 2)

Both VJPs are Tensor operations, so they differentiate like any other.
"""
from .backend import xp
from .tensor import primitive

_C = 0.7978845608028654          # sqrt(2 / pi)
_A = 0.044715


@primitive
def softmax(x, axis=-1):
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@softmax.vjp
def _softmax_vjp(g, out, x, axis=-1):
    return (out * (g - (g * out).sum(axis=axis, keepdims=True)),)


@primitive
def gelu(x):
    return 0.5 * x * (1 + xp.tanh(_C * (x + _A * x ** 3)))


@gelu.vjp
def _gelu_vjp(g, out, x):
    t = (_C * (x + _A * x * x * x)).tanh()
    return (g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _C * (1 + 3 * _A * x * x)),)
