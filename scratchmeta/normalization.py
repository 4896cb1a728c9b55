"""Batch normalisation as one primitive (Ioffe & Szegedy 2015, Algorithm 1).

    mu = mean(x),  var = mean((x - mu)^2),  xhat = (x - mu) / sqrt(var + eps)
    y  = w * xhat + b

with the means taken over `axes` (batch norm: the batch axis and the spatial
axes; layer norm: the features). With n the number of values each mean is
taken over and g = dL/dy, the VJP (Ioffe & Szegedy, Sec. 3, the chain rule
through mu and var collected):

    dL/db = sum(g),   dL/dw = sum(g * xhat)
    dL/dx = (gxhat - mean(gxhat) - xhat * mean(gxhat * xhat)) / sqrt(var + eps),  gxhat = g * w

Composed of elementwise primitives the same formula would be correct too; as
one primitive the graph keeps only x, and the derivative reads as the paper's.
The VJP is in Tensor operations, so it differentiates again (MAML's inner
step through batch norm).
"""
from .backend import xp
from .ops import unbroadcast
from .tensor import primitive


@primitive
def batch_norm(x, w, b, axes, eps=1e-5):
    """y = w * (x - mean) / sqrt(var + eps) + b, statistics over `axes` (kept as size 1).

    w and b already have the statistics' shape (or broadcast to it).
    """
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)        # biased, as in the paper
    return w * ((x - mean) / xp.sqrt(var + eps)) + b


@batch_norm.vjp
def _batch_norm_vjp(g, out, x, w, b, axes, eps=1e-5):
    centred = x - x.mean(axis=axes, keepdims=True)
    inv_std = ((centred * centred).mean(axis=axes, keepdims=True) + eps).sqrt() ** -1
    xhat = centred * inv_std
    gx = gw = gb = None
    if x.requires_grad:
        gxhat = g * w                                              # dL/dxhat
        gx = unbroadcast(inv_std * (gxhat - gxhat.mean(axis=axes, keepdims=True)
                                    - xhat * (gxhat * xhat).mean(axis=axes, keepdims=True)),
                         x.shape)
    if w.requires_grad:
        gw = unbroadcast(g * xhat, w.shape)
    if b.requires_grad:
        gb = unbroadcast(g, b.shape)
    return gx, gw, gb
