"""Fast GELU and softmax: replace activations.gelu (forward and VJP) and
activations.softmax (forward).

- GELU in place: the forward builds t = tanh(c (x + a x^3)) and y in two
  buffers instead of the ten temporaries of the one-line formula, and saves t;
  a plain backward (grad mode off) computes the derivative from t on raw
  arrays, in place, instead of recomputing the tanh in Tensor operations.
- Softmax in place: exp and the division write into one buffer.
A recorded backward runs the core VJP, which differentiates.
"""
from .. import activations
from ..backend import xp
from ..tensor import Tensor, is_grad_enabled
from .overlay import Saved, replace

_C, _A = activations._C, activations._A


def _gelu_forward(x):
    t = xp.asarray(x * x)                 # an array also when x is 0-d
    t *= _A
    t += 1
    t *= x
    t *= _C
    xp.tanh(t, out=t)                     # t = tanh(c (x + a x^3))
    y = xp.asarray(t + 1)
    y *= x
    y *= 0.5
    return Saved(y, t=t)


def _gelu_vjp(g, out, x, saved=None):
    if is_grad_enabled():
        return activations.gelu.vjp_fn(g, out, x)
    x, t = x.data, saved["t"]
    d = xp.asarray(x * x)                 # raw arrays, nothing differentiates this
    d *= 3 * _A
    d += 1
    d *= x
    d *= 1 - t * t
    d *= 0.5 * _C
    d += 0.5 * (1 + t)
    d *= g.data
    return (Tensor(d),)


def _softmax_forward(x, axis=-1):
    e = xp.asarray(x - x.max(axis=axis, keepdims=True))     # an array also when 0-d
    xp.exp(e, out=e)
    e /= e.sum(axis=axis, keepdims=True)
    return e


replace(activations.gelu, forward=_gelu_forward, vjp=_gelu_vjp,
        why="two in-place buffers instead of ten temporaries; a plain backward from the saved "
            "tanh on raw arrays")
replace(activations.softmax, forward=_softmax_forward,
        why="exp and the normalisation in place in one buffer")
