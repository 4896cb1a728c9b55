"""Fused convolution + batch norm: replaces the composite functional.conv_batch_norm_cnhw.

Where the im2col matrix U(x) is thin (C*kh*kw <= O/2 rows: a network's first
layer, C = 1, k = 3, O = 64) and x is data (no gradient wanted), batch norm's
statistics of the convolution's output z = W U come from the columns:

    Uc = U - mean(U)  (centred columns, each row's mean over N*OH*OW),
    Sigma = Uc Uc^T / M  (C*kh*kw x C*kh*kw),
    z - mean(z) = W Uc,   var(z)_o = W_o Sigma W_o^T,

so the normalised output is ONE matrix product,

    y = [gamma W / sqrt(var + eps), beta] [Uc; 1],

and the conv bias, which batch norm cancels, drops out (it stays in the graph
with a gradient of exactly 0). Written in Tensor operations, so every order
of derivative comes from the engine: dL/d[W, beta] is g [Uc; 1]^T, one
product, and the rest is O x (C*kh*kw) arithmetic. Faster because nothing of
the size of z is made or kept besides the output itself: no pass to take the
mean and variance, none to normalise, and a backward (plain or recorded) with
no full-size dL/dz; the graph keeps Uc (C*kh*kw + 1 rows) instead of z (O rows).
Anything else (x wanting a gradient, a wide U(x), unusual shapes) runs the
reference composite, i.e. the overlay's conv2d_cnhw and batch_norm entries.
NumPy and CuPy alike.
"""
from .. import functional as F
from ..backend import xp
from ..tensor import Tensor, lift
from .overlay import replace_composite
from .windows import _im2col


def _out_lead(x, w):
    """The broadcast of x's and w's task axes (all before the last four)."""
    a, b = x.shape[:-4], w.shape[:-4]
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    if any(i != j and 1 not in (i, j) for i, j in zip(a, b)):
        return None
    return tuple(max(i, j) for i, j in zip(a, b))


def _fuses(x, w, params, stride, padding):
    """Whether the fused form applies (else the reference runs, with its errors)."""
    if x.requires_grad or x.ndim < 4 or w.ndim < 4 or x.shape[-4] != w.shape[-3]:
        return False
    out_c, in_c, kh, kw = w.shape[-4:]
    if 2 * in_c * kh * kw > out_c:
        return False
    lead = _out_lead(x, w)
    if lead is None or len(lead) > 1:
        return False
    if any(x.shape[-2 + i] + 2 * padding < (kh, kw)[i] for i in (0, 1)):
        return False
    dtype = w.dtype
    if x.dtype != dtype or dtype.kind != "f":
        return False
    for p in params:
        if p is not None and (p.dtype != dtype or p.shape not in ((out_c,), lead + (out_c,))):
            return False
    return True


def _centred_columns(x, kh, kw, stride, padding):
    """[Uc; 1] (..., C*kh*kw + 1, M) and Sigma = Uc Uc^T / M (..., C*kh*kw, C*kh*kw)."""
    cols, image = _im2col(x, kh, kw, stride, padding, ones_row=True)
    u = cols[..., :-1, :]
    m = u.shape[-1]
    u -= u.mean(axis=-1, keepdims=True)                  # in place: Uc
    sigma = u @ xp.swapaxes(u, -1, -2)
    sigma /= m
    return cols, sigma, image


def _conv_batch_norm_cnhw(x, w, b, bn_w, bn_b, stride=1, padding=0, eps=1e-5):
    x, w = lift((x, w))
    b, bn_w, bn_b = (None if p is None else lift((p,))[0] for p in (b, bn_w, bn_b))
    if not _fuses(x, w, (b, bn_w, bn_b), stride, padding):
        return F.conv_batch_norm_cnhw.reference(x, w, b, bn_w, bn_b, stride, padding, eps)
    out_c, in_c, kh, kw = w.shape[-4:]
    cols, sigma, (n, oh, ow) = _centred_columns(x.data, kh, kw, stride, padding)
    lead = _out_lead(x, w)
    wm = w.reshape(w.shape[:-3] + (in_c * kh * kw,))                 # (..., O, K)
    var = ((wm @ Tensor(sigma)) * wm).sum(axis=-1)                    # (..., O): var(z)
    scale = (var + eps).sqrt() ** -1
    if bn_w is not None:
        scale = scale * bn_w
    shift = bn_b if bn_b is not None else Tensor(xp.zeros((out_c,), dtype=w.dtype))
    if b is not None:
        shift = shift + b * 0.0                           # cancelled by batch norm: gradient 0
    rows = lead + (out_c,)
    w_aug = F.concatenate([(wm * scale.reshape(scale.shape + (1,))).broadcast_to(rows + (in_c * kh * kw,)),
                           shift.broadcast_to(rows).reshape(rows + (1,))], axis=-1)
    y = w_aug @ Tensor(cols)                                          # (..., O, M)
    return y.reshape(rows + (n, oh, ow))


replace_composite(F.conv_batch_norm_cnhw, _conv_batch_norm_cnhw,
                  why="where U(x) is thin and x is data: batch norm's statistics from the "
                      "columns' covariance, the normalisation folded into W, one product; "
                      "no full-size pass for the statistics or dL/dz, the graph keeps U(x) not z")
