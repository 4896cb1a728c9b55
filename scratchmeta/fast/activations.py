"""Fast GELU and softmax: replace activations.gelu (forward and VJP) and
activations.softmax (forward).

- GELU in place: the forward builds s = (1 + tanh(z)) / 2, z = c (x + a x^3),
  and y = x s in two buffers instead of the ten temporaries of the one-line
  formula, and saves s; a plain backward (grad mode off) computes the
  derivative from s on raw arrays, in place, instead of recomputing the tanh
  in Tensor operations. s is computed as the logistic function of 2z,
  (1 + tanh(z)) / 2 = 1 / (1 + exp(-2z)), because NumPy's exp is 1.7 times
  faster than its tanh in float32 and 3 times in float64 (0.63 against 1.09 ms
  and 1.6 against 4.8 ms on the ICL step's (64, 30, 128) activations); -2z is
  capped at 80, where s < 2e-35 and y is 0 to float precision either way, so
  that exp stays finite. With 1 - tanh(z)^2 = 4 s (1 - s), the derivative is

      dy/dx = s + 2 x s (1 - s) c (1 + 3 a x^2).
- Softmax in place: exp and the division write into one buffer; the row max
  and the row sum over a short last axis by reductions.last_max and
  trailing_sum (NumPy reduces such an axis one row at a time). A plain
  backward computes s * (g - sum(g * s)) on raw arrays the same way.
- ReLU's plain backward: g times the mask x > 0 in one product of g with the
  boolean mask, instead of the mask cast to x's dtype and a mul primitive.
A recorded backward runs the core VJP, which differentiates.
"""
from .. import activations, ops
from ..backend import xp
from ..tensor import Tensor, is_grad_enabled
from .overlay import Saved, replace
from .reductions import last_max, trailing_sum

_C, _A = activations._C, activations._A


def _gelu_forward(x):
    s = xp.asarray(x * x)                 # an array also when x is 0-d
    s *= _A
    s += 1
    s *= x
    s *= -2 * _C                          # -2z
    xp.minimum(s, 80, out=s)              # exp(80) is finite in float32
    xp.exp(s, out=s)
    s += 1
    xp.reciprocal(s, out=s)               # s = 1 / (1 + exp(-2z)) = (1 + tanh(z)) / 2
    return Saved(x * s, s=s)


def _gelu_vjp(g, out, x, saved=None):
    if is_grad_enabled():
        return activations.gelu.vjp_fn(g, out, x)
    x, s = x.data, saved["s"]
    d = xp.asarray(x * x)                 # raw arrays, nothing differentiates this
    d *= 3 * _A
    d += 1
    d *= x
    d *= s * (1 - s)
    d *= 2 * _C
    d += s                                # s + 2 x s (1 - s) c (1 + 3 a x^2)
    d *= g.data
    return (Tensor(d),)


def _softmax_forward(x, axis=-1):
    e = xp.asarray(x - last_max(x, axis))                   # an array also when 0-d
    xp.exp(e, out=e)
    e /= trailing_sum(e, (axis,))
    return e


def softmax_vjp_arrays(g, s, axis):
    """s * (g - sum(g * s)) on raw arrays: the softmax's VJP for a plain backward."""
    gs = xp.asarray(g * s)
    gs -= s * trailing_sum(gs, (axis,))
    return gs


def _softmax_vjp(g, out, x, axis=-1):
    if is_grad_enabled() or out.ndim == 0:
        return activations.softmax.vjp_fn(g, out, x, axis=axis)
    return (Tensor(softmax_vjp_arrays(g.data, out.data, axis)),)


def _relu_vjp(g, out, x):
    if is_grad_enabled():
        return ops.relu.vjp_fn(g, out, x)
    return (Tensor(xp.multiply(g.data, x.data > 0, dtype=g.dtype)),)   # step function, flat a.e.


replace(ops.relu, vjp=_relu_vjp,
        why="a plain backward: g times the boolean mask in one product, no cast of the mask "
            "and no mul primitive")
replace(activations.gelu, forward=_gelu_forward, vjp=_gelu_vjp,
        why="two in-place buffers instead of ten temporaries; a plain backward from the saved "
            "tanh on raw arrays")
replace(activations.softmax, forward=_softmax_forward, vjp=_softmax_vjp,
        why="exp and the normalisation in place in one buffer; row max and sum over a short "
            "last axis by a column loop and a product with ones; a plain backward on raw arrays")
