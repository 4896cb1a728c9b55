"""Softmax and GELU as primitives: one forward each instead of a chain of
elementwise primitives, the graph keeping one array instead of six to ten.

softmax (axis):  s = exp(x - m) / sum(exp(x - m)),  m = max(x) (any constant m
                 gives the same s; the max keeps exp from overflowing)
                 VJP: dL/dx = s * (g - sum(g * s))
                 With a boolean mask, entries where it is False score MASKED
                 first: their s is 0 and so is every derivative through them
                 (attention's causal mask, transformer.py).
GELU, tanh form (Hendrycks & Gimpel 2016):
                 y = x (1 + t) / 2,  t = tanh(c (x + a x^3)),  c = sqrt(2/pi), a = 0.044715
                 VJP: dL/dx = g ((1 + t) / 2 + x (1 - t^2) c (1 + 3 a x^2) / 2)

Softmax's VJP is written in Tensor operations of its own output s, so it
differentiates like any other. GELU's has the two forms batch norm has
(normalization.py): Tensor operations for a recorded backward, and raw arrays
with the forward's t (tensor.Saved) for a plain one.
"""
from .backend import xp
from .tensor import Saved, Tensor, is_grad_enabled, primitive

_C = 0.7978845608028654          # sqrt(2 / pi)
_A = 0.044715


MASKED = -1e9    # a masked score: exp(-1e9 - m) == 0 in float32 and float64


@primitive
def softmax(x, axis=-1, mask=None):
    if mask is None:
        e = xp.asarray(x - x.max(axis=axis, keepdims=True))     # an array also when 0-d
    else:                                # masked entries score MASKED: probability 0
        e = xp.where(mask, x, xp.asarray(MASKED, dtype=x.dtype))
        e -= e.max(axis=axis, keepdims=True)
    xp.exp(e, out=e)
    e /= e.sum(axis=axis, keepdims=True)
    return e


@softmax.vjp
def _softmax_vjp(g, out, x, axis=-1, mask=None):
    # masked entries have s = 0, so no gradient of any order reaches them
    return (out * (g - (g * out).sum(axis=axis, keepdims=True)),)


@primitive
def gelu(x):
    t = xp.asarray(x * x)                 # an array also when x is 0-d
    t *= _A
    t += 1
    t *= x
    t *= _C
    xp.tanh(t, out=t)                    # t = tanh(c (x + a x^3))
    y = xp.asarray(t + 1)
    y *= x
    y *= 0.5
    return Saved(y, t=t)


@gelu.vjp
def _gelu_vjp(g, out, x, saved=None):
    if is_grad_enabled():                # differentiable: t recomputed as a Tensor
        t = (_C * (x + _A * x * x * x)).tanh()
        return (g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _C * (1 + 3 * _A * x * x)),)
    x, t = x.data, saved["t"]
    d = xp.asarray(x * x)                # raw arrays, nothing differentiates this
    d *= 3 * _A
    d += 1
    d *= x
    d *= 1 - t * t
    d *= 0.5 * _C
    d += 0.5 * (1 + t)
    d *= g.data
    return (Tensor(d),)
