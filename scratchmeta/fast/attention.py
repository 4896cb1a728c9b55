"""Fast masked softmax: replaces the composite functional.softmax.

The core masks the scores first (masked_fill: a `where` primitive, a full-size
copy forward and a full-size `where` backward) and then takes the softmax
primitive. Causal attention does this once per block and step. Here one
fast-only primitive, masked_softmax, writes the masked scores, subtracts the
row max, exponentiates and normalises in one buffer.

Its VJP is the softmax's, s * (g - sum(g * s)), in Tensor operations (so it
differentiates to any order), or on raw arrays for a plain backward: a masked
position has s = exp(MASKED - m) = 0 exactly, so its gradient is 0 there, as
the `where` gives. Row max and row sum as in fast/activations.py.
"""
from .. import activations, ops
from .. import functional as F
from ..backend import xp
from ..tensor import Tensor, is_grad_enabled, primitive
from .activations import softmax_vjp_arrays
from .overlay import replace_composite
from .reductions import last_max, trailing_sum


@primitive
def masked_softmax(x, mask, axis=-1):
    """softmax(where(mask, x, MASKED)) along `axis`; mask a boolean array broadcastable to x."""
    e = xp.where(mask, x, xp.asarray(F.MASKED, dtype=x.dtype))
    e -= last_max(e, axis)
    xp.exp(e, out=e)
    e /= trailing_sum(e, (axis,))
    return e


@masked_softmax.vjp
def _masked_softmax_vjp(g, out, x, mask, axis=-1):
    if is_grad_enabled():
        return activations.softmax.vjp_fn(g, out, x, axis=axis)
    return (Tensor(softmax_vjp_arrays(g.data, out.data, axis)),)


def _softmax(x, axis=-1, mask=None):
    x = F._t(x)
    if mask is None:
        return activations.softmax(x, axis=axis)
    mask = xp.asarray(mask.data if isinstance(mask, Tensor) else mask, dtype=bool)
    if not ops.fits(mask.shape, x.shape):
        raise ValueError(f"masked_fill: mask of shape {mask.shape} does not broadcast to "
                         f"the input's {x.shape}")
    return masked_softmax(x, mask=mask, axis=axis)


replace_composite(F.softmax, _softmax,
                  why="the mask written into the softmax's own buffer: no where primitive "
                      "forward or backward")
