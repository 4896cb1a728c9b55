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

Fast attention: replaces the composite transformer.attention,
softmax(q k^T / sqrt(d) + M) v, by one fast-only node (`fused_attention`)
whose forward keeps the probabilities P (Saved). Its plain backward, on raw
arrays, is the chain rule written out (S the scaled scores, G = dL/dout):

    dL/dv = P^T G,    dL/dP = G v^T,    dL/dS = P * (dL/dP - rowsum(dL/dP * P)),
    dL/dq = dL/dS k / sqrt(d),          dL/dk = (dL/dS)^T q / sqrt(d)

four batched products and one softmax VJP, where the reference's graph has
five nodes (matmul, transpose, scale, masked softmax, matmul) each with its
VJP in Tensor operations. A recorded backward (create_graph=True) computes the
same formulas in Tensor operations from q, k and v, so every order works.
"""
import math

from .. import activations, ops, transformer
from .. import functional as F
from ..backend import xp
from ..tensor import Tensor, as_tensor, is_grad_enabled, primitive
from .activations import softmax_vjp_arrays
from .overlay import Entry, Saved, replace_composite
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


def _scores(q, k):
    """S = q k^T / sqrt(d), (..., L, L)."""
    p = q @ xp.swapaxes(k, -1, -2)
    p *= 1.0 / math.sqrt(q.shape[-1])
    return p


def _fused_attention_forward(q, k, v, causal=True):
    """softmax(q k^T / sqrt(d) + M) v on raw arrays; the probabilities saved.

    A softmax is unchanged by the number subtracted from its row before the
    exp, so one number serves every row: the largest score of all, one fast
    reduction, where a maximum per row of 30 runs at NumPy's short-row speed
    (0.63 against 0.02 ms on the ICL step's (64, 4, 30, 30) scores). The
    causal mask then zeroes the masked probabilities (a product with the
    boolean mask) instead of writing MASKED scores first. A row whose
    largest score lies so far below the top that its sum of exps nears
    underflow (below sqrt of the dtype's smallest normal number) would lose
    precision: then every row is shifted by its own maximum (_row_shifted).
    """
    p = _scores(q, k)
    if p.size == 0:
        return _row_shifted(q, k, v, causal)
    p -= p.max()
    xp.exp(p, out=p)
    if causal:
        p *= transformer.causal_mask(p.shape[-1])                   # masked: exactly 0
    total = trailing_sum(p, (-1,))
    if bool((total < math.sqrt(xp.finfo(p.dtype).tiny)).any()):
        return _row_shifted(q, k, v, causal)
    p /= total
    return Saved(p @ v, p=p)


def _row_shifted(q, k, v, causal=True):
    """The same with each row shifted by its own maximum, the masked scores MASKED."""
    p = _scores(q, k)
    if causal:                                                      # masked_fill
        p = xp.where(transformer.causal_mask(p.shape[-1]), p, xp.asarray(F.MASKED, dtype=p.dtype))
    p -= last_max(p)
    xp.exp(p, out=p)
    p /= trailing_sum(p, (-1,))
    return Saved(p @ v, p=p)


def _fused_attention_vjp(g, out, q, k, v, causal=True, saved=None):
    scale = 1.0 / math.sqrt(q.shape[-1])
    if is_grad_enabled():                                           # recorded: Tensor operations
        mask = transformer.causal_mask(q.shape[-2]) if causal else None
        p = F.softmax((q @ k.mT) * scale, axis=-1, mask=mask)
        gp = g @ v.mT
        gs = p * (gp - (gp * p).sum(axis=-1, keepdims=True))
        return (gs @ k) * scale, (gs.mT @ q) * scale, p.mT @ g
    p, ga = saved["p"], g.data
    gv = xp.swapaxes(p, -1, -2) @ ga
    gs = softmax_vjp_arrays(ga @ xp.swapaxes(v.data, -1, -2), p, -1)   # dL/dS
    gs *= scale
    return (Tensor(gs @ k.data), Tensor(xp.swapaxes(gs, -1, -2) @ q.data), Tensor(gv))


_node = primitive(_fused_attention_forward)
_node.name = "fused_attention"                                      # as graphs and errors show it
fused_attention = Entry(_node, forward=_fused_attention_forward, vjp=_fused_attention_vjp,
                        why="attention as one node")


def _attention(q, k, v, causal=True):
    q, k, v = (as_tensor(a) for a in (q, k, v))
    if (q.ndim < 2 or q.shape != k.shape or q.shape != v.shape
            or (causal and q.shape[-2] != k.shape[-2]) or len({q.dtype, k.dtype, v.dtype}) != 1):
        return transformer.attention.reference(q, k, v, causal=causal)
    return fused_attention(q, k, v, causal=bool(causal))


replace_composite(transformer.attention, _attention,
                  why="one node whose forward keeps the probabilities: a plain backward is four "
                      "products and a softmax VJP on raw arrays, not five nodes' VJPs")
