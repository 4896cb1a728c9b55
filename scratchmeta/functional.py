"""Composite functions built from the primitives: no VJPs of their own.

Every derivative, of every order, comes from the primitives they call.
Shapes follow PyTorch: batch first, channels before space (NCHW).
"""
from .backend import xp
from . import activations, normalization, ops, windows
from .tensor import Tensor, as_tensor, composite

MASKED = -1e9    # a masked score: exp(-1e9 - m) == 0 in float32 and float64


def _t(x):
    return as_tensor(x)


@composite    # the speed overlay adds the bias into the product's output (scratchmeta/fast/matmul.py)
def linear(x, w, b=None):
    """x @ w.T + b, with w of shape (out, in) as in PyTorch.

    Also batched over tasks: w of shape (T, out, in) with x of shape
    (T, n, in) and b of shape (T, out) gives (T, n, out).
    """
    x, w = _t(x), _t(w)
    if x.shape[-1] != w.shape[-1]:
        raise ValueError(f"linear: input has {x.shape[-1]} features (shape {x.shape}) "
                         f"but the weight expects {w.shape[-1]} (shape {w.shape})")
    y = x @ w.mT
    if b is not None:
        b = _t(b)
        if w.ndim == 3 and b.ndim == 2:          # per-task bias (T, out) -> (T, 1, out)
            b = b.reshape(b.shape[0], 1, b.shape[1])
        y = y + b
    return y


def logsumexp(x, axis=-1, keepdims=False):
    """log sum_i exp(x_i), shifted by the (constant) max so nothing overflows.

    log sum exp(x) = m + log sum exp(x - m) for any constant m; taking m as the
    detached max changes no derivative, since the identity holds for every m.
    """
    x = _t(x)
    m = Tensor(xp.max(x.data, axis=axis, keepdims=True))
    m = Tensor(xp.where(xp.isfinite(m.data), m.data, 0))     # all -inf rows stay -inf
    out = (x - m).exp().sum(axis=axis, keepdims=True).log() + m
    return out if keepdims else out.reshape(_drop(out.shape, axis))


def _drop(shape, axis):
    axis = axis % len(shape)
    return shape[:axis] + shape[axis + 1:]


def log_softmax(x, axis=-1):
    """x_i - log sum_j exp(x_j): stable for logits of any size."""
    x = _t(x)
    return x - logsumexp(x, axis=axis, keepdims=True)


@composite    # the speed overlay fuses the mask into the primitive (scratchmeta/fast/attention.py)
def softmax(x, axis=-1, mask=None):
    """exp(x_i - m) / sum_j exp(x_j - m) with m the max: one primitive
    (activations.py), whose VJP is s * (g - sum(g * s)).

    mask: None, or a boolean array broadcastable to x; where it is False the
    score is replaced by MASKED first (masked_fill), so the probability is 0
    and no gradient reaches x there. Every slice along `axis` needs at least
    one True.
    """
    x = _t(x)
    if mask is not None:
        x = masked_fill(x, mask, MASKED)
    return activations.softmax(x, axis=axis)


def masked_fill(x, mask, value):
    """x where mask is True, `value` where it is False (PyTorch's
    x.masked_fill(~mask, value)); no gradient reaches x where mask is False."""
    x = _t(x)
    mask = xp.asarray(mask.data if isinstance(mask, Tensor) else mask, dtype=bool)
    if not ops.fits(mask.shape, x.shape):
        raise ValueError(f"masked_fill: mask of shape {mask.shape} does not broadcast to "
                         f"the input's {x.shape}")
    return ops.where(Tensor(mask), x, Tensor(xp.asarray(value, dtype=x.dtype)))


def _labels(labels):
    """Integer class indices as a raw backend array."""
    raw = labels.data if isinstance(labels, Tensor) else labels
    raw = xp.asarray(raw)
    if raw.dtype.kind not in "iu":
        raise ValueError(f"cross_entropy: labels must be integer class indices, got dtype {raw.dtype}")
    return raw


def cross_entropy(logits, labels):
    """Mean over rows of -log softmax(logits)[label].

    logits (..., C) and integer labels (...); every leading axis counts as a row.
    """
    logits = _t(logits)
    labels = _labels(labels)
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"cross_entropy: logits of shape {logits.shape} need labels of shape "
                         f"{logits.shape[:-1]}, got {labels.shape}")
    n_classes = logits.shape[-1]
    if labels.size == 0:
        raise ValueError(f"cross_entropy: no rows (logits of shape {logits.shape})")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(f"cross_entropy: labels must lie in [0, {n_classes}), "
                         f"got values in [{int(labels.min())}, {int(labels.max())}]")
    logp = log_softmax(logits, axis=-1).reshape(-1, n_classes)
    rows = xp.arange(logp.shape[0])
    return -logp[rows, labels.reshape(-1)].mean()


def mse_loss(pred, target):
    """mean((pred - target)^2). pred and target must have the same shape, or one
    of them be a scalar: no other broadcasting, since (3, 1) against (3,) would
    silently average a 3 x 3 table (PyTorch only warns)."""
    pred, target = _t(pred), _t(target)
    if pred.shape != target.shape and pred.ndim and target.ndim:
        raise ValueError(f"mse_loss: shapes {pred.shape} (prediction) and {target.shape} "
                         f"(target) differ; reshape one to match the other")
    d = pred - target
    return (d * d).mean()


def conv2d(x, w, b=None, stride=1, padding=0):
    """2-D cross-correlation, NCHW, w of shape (out, in, kh, kw) as in PyTorch.

    Also batched over tasks: x (T, N, C, H, W) with w (T, out, in, kh, kw)
    and b (T, out) convolves each task's images with that task's weights.
    The work happens in conv2d_cnhw, on the batch moved behind the channels.
    """
    x, w = _t(x), _t(w)
    batched = w.ndim == 5
    if x.ndim != (5 if batched else 4) or w.ndim not in (4, 5):
        raise ValueError(f"conv2d: expected x (N, C, H, W) and w (O, C, kh, kw) "
                         f"(or batched (T, N, C, H, W) and (T, O, C, kh, kw)), "
                         f"got shapes {x.shape} and {w.shape}")
    if x.shape[-3] != w.shape[-3]:
        raise ValueError(f"conv2d: input has {x.shape[-3]} channels (shape {x.shape}) "
                         f"but the weight expects {w.shape[-3]} (shape {w.shape})")
    swap = (0, 2, 1, 3, 4) if batched else (1, 0, 2, 3)       # N <-> C, an involution
    return conv2d_cnhw(x.transpose(*swap), w, b, stride, padding).transpose(*swap)


@composite    # the speed overlay replaces it whole (scratchmeta/fast/windows.py: bias in the product)
def conv2d_cnhw(x, w, b=None, stride=1, padding=0):
    """conv2d on the layout (..., C, N, H, W): channels before the batch.

    im2col: the windows form a (C*kh*kw, N*OH*OW) matrix U(x), so the whole
    batch is ONE matrix product with w reshaped to (O, C*kh*kw), and the result
    (..., O, N, OH, OW) is already in this layout for the next layer. The
    primitive windows.conv keeps only x and w for its VJP, whose two halves are
    themselves convolutions (windows.conv_transpose, windows.conv_weight_grad).
    Leading axes (tasks) batch the product: w (T, O, C, kh, kw), b (T, O).
    """
    x, w = _t(x), _t(w)
    out_c, in_c, kh, kw = w.shape[-4:]
    if x.shape[-4] != in_c:
        raise ValueError(f"conv2d: input has {x.shape[-4]} channels but the weight expects "
                         f"{in_c} (shape {w.shape})")
    y = windows.conv(x, w, stride=stride, padding=padding)              # (..., O, N, OH, OW)
    if b is None:
        return y
    b = _t(b)
    return y + b.reshape(b.shape + (1, 1, 1))                           # one bias per channel


@composite    # the speed overlay fuses the two where U(x) is thin (scratchmeta/fast/fusion.py)
def conv_batch_norm_cnhw(x, w, b, bn_w, bn_b, stride=1, padding=0, eps=1e-5):
    """conv2d_cnhw, then batch norm with the batch's statistics: a Conv4 block's first half.

    Layout (..., C, N, H, W) in, (..., O, N, OH, OW) out; batch norm's mean and
    variance are per channel over (N, OH, OW), per task when anything carries a
    task axis. bn_w may be None (no scale, as in MAML's TensorFlow network).
    """
    y = conv2d_cnhw(x, w, b, stride=stride, padding=padding)
    return batch_norm(y, bn_w, bn_b, eps=eps, channel_axis=-4, batch_axis=-3)


def max_pool2d(x, kernel_size, stride=None):
    """Max over kernel_size x kernel_size windows of the last two axes (floor mode)."""
    x = _t(x)
    k = kernel_size
    s = k if stride is None else stride
    H, W = x.shape[-2:]
    if H < k or W < k:
        raise ValueError(f"max_pool2d: kernel {k} is larger than the input's {H}x{W}")
    if s == k:
        # non-overlapping windows: the max of k*k strided views, and a VJP that
        # routes the gradient to each window's (first) maximum
        return windows.pool_max(x, k=k)
    cols = windows.unfold(x, kh=k, kw=k, stride=s, padding=0)            # (..., k, k, OH, OW)
    cols = cols.reshape(cols.shape[:-4] + (k * k,) + cols.shape[-2:])
    return cols.max(axis=-3)


@composite    # the speed overlay pools first, then ReLU (scratchmeta/fast/pooling.py)
def relu_max_pool2d(x, kernel_size, stride=None):
    """max_pool2d(relu(x)): a Conv4 block's second half."""
    return max_pool2d(_t(x).relu(), kernel_size, stride)


def batch_norm(x, weight=None, bias=None, eps=1e-5, channel_axis=1, batch_axis=None):
    """Normalise with the batch's own statistics (training mode, no running stats).

    y = (x - mean) / sqrt(var + eps) * weight + bias, with mean and the biased
    variance taken over the batch axis (default: the one before `channel_axis`)
    and every axis after the channels; MAML uses batch norm this way,
    transductively, at meta-test time too (Finn et al. 2017).

    Other axes before the channels are independent groups: x of shape
    (T, N, C, H, W) with channel_axis=2, or (T, C, N, H, W) with
    channel_axis=1, batch_axis=2, normalises each task on its own, and
    weight/bias may then be per task, of shape (T, C).
    """
    x = _t(x)
    c = channel_axis % x.ndim
    b = (c - 1) if batch_axis is None else batch_axis % x.ndim
    if b < 0 or b == c:
        raise ValueError(f"batch_norm: channel_axis {channel_axis} leaves no batch axis in shape {x.shape}")
    axes = tuple(sorted({b} | set(range(c + 1, x.ndim))))
    groups = [i for i in range(c) if i != b]
    shape = tuple(x.shape[c] if i == c else (x.shape[i] if i in groups else 1)
                  for i in range(x.ndim))
    params = []
    for p, fill in ((weight, 1.0), (bias, 0.0)):
        if p is None:
            p = Tensor(xp.full(tuple(n if i == c else 1 for i, n in enumerate(shape)), fill,
                               dtype=x.dtype))
        else:
            p = _t(p)
            if p.shape[-1] != x.shape[c] or p.ndim not in (1, len(groups) + 1):
                raise ValueError(f"batch_norm: {x.shape[c]} channels (input {x.shape}) but a "
                                 f"parameter of shape {p.shape}")
            p = p.reshape(tuple(1 if p.ndim == 1 and i in groups else n for i, n in enumerate(shape)))
        params.append(p)
    # one primitive (normalization.py): Ioffe & Szegedy's formula and its VJP
    return normalization.batch_norm(x, *params, axes=axes, eps=eps)


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """Normalise over the last axis (Ba et al. 2016), then scale and shift:
    y = (x - mean) / sqrt(var + eps) * weight + bias, per example.

    The same primitive as batch_norm (normalization.py) over another axis:
    layer norm normalises each example over its features, batch norm each
    feature over the batch.
    """
    x = _t(x)
    d = x.shape[-1]
    params = []
    for p, fill in ((weight, 1.0), (bias, 0.0)):
        p = Tensor(xp.full((d,), fill, dtype=x.dtype)) if p is None else _t(p)
        if p.shape[-1:] != (d,):
            raise ValueError(f"layer_norm: input has {d} features (shape {x.shape}) but a "
                             f"parameter of shape {p.shape}")
        params.append(p)
    return normalization.batch_norm(x, *params, axes=(x.ndim - 1,), eps=eps)


def softplus(x):
    """log(1 + e^x), one primitive (ops.py) whose derivative is sigmoid(x)."""
    return ops.softplus(_t(x))


def gelu(x):
    """GELU, tanh form (Hendrycks & Gimpel 2016): 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3))),
    one primitive (activations.py)."""
    return activations.gelu(_t(x))


def sq_dist(a, b):
    """Squared Euclidean distances ||a_i - b_j||^2, shapes (..., n, d), (..., m, d) -> (..., n, m).

    Expanded as ||a||^2 - 2 a.b + ||b||^2 so it is one matrix product.
    """
    a, b = _t(a), _t(b)
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-1]:
        raise ValueError(f"sq_dist: shapes {a.shape} and {b.shape} are not (..., n, d) and (..., m, d)")
    aa = (a * a).sum(axis=-1, keepdims=True)                 # (..., n, 1)
    bb = (b * b).sum(axis=-1, keepdims=True).mT              # (..., 1, m)
    return aa - 2 * (a @ b.mT) + bb


def concatenate(xs, axis=0):
    return ops.concatenate(*[_t(x) for x in xs], axis=axis)


def stack(xs, axis=0):
    return ops.stack(*[_t(x) for x in xs], axis=axis)


def where(cond, x, y):
    """x where cond else y; gradients flow to the branch taken."""
    cond = cond.data if isinstance(cond, Tensor) else cond
    return ops.where(Tensor(cond), _t(x), _t(y))
