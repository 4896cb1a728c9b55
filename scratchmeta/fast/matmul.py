"""Fast matmul: replaces the forward and the VJP of ops.matmul for one matrix
shared by a batch.

For x @ W with x (..., n, k) and W (k, m), NumPy's batched matmul calls one
small matrix product per batch entry. Here the batch is stacked into rows and
multiplied once, (T*n, k) @ (k, m), in the forward and in both products of the
VJP: dL/dx = G W^T as (T*n, m) @ (m, k), and dL/dW = X^T G as one
(k, T*n) @ (T*n, m) product instead of a batch of (k, m) partial results summed
afterwards (unbroadcast). The VJP is Tensor operations, so every order still
works; a plain backward (grad mode off) does the same two products on raw
arrays. Any other operand shapes run the core.

The composite functional.linear, x @ W^T + b, is replaced by one fast-only
primitive, linear_bias (PyTorch's addmm): the bias is added into the
product's output in place, so there is no add primitive (a full-size output
forward, an unbroadcast sum backward) and the VJP's three products and one
sum run on the stacked rows. With one weight per task (w (T, out, in), MAML's
adapted weights) it is task_linear_bias (PyTorch's baddbmm): one node instead
of the reference's transpose, matmul, reshape and add, and a VJP of two
products and a sum instead of nine primitives, which matters most where the
arrays are small and each primitive's overhead is the cost (the sinusoid).
"""
from .. import functional as F
from .. import ops
from ..backend import xp
from ..tensor import Tensor, is_grad_enabled, lift, primitive
from .overlay import replace, replace_composite
from .reductions import sum_to


def _shared_matrix(a, b):
    """True for x (..., n, k) @ W (k, m): a batch that shares one matrix."""
    return a.ndim > 2 and b.ndim == 2 and a.shape[-1] == b.shape[0]


def _matmul_forward(a, b):
    if not _shared_matrix(a, b):
        return ops.matmul.forward(a, b)
    return (a.reshape(-1, a.shape[-1]) @ b).reshape(a.shape[:-1] + (b.shape[-1],))


def _matmul_vjp(g, out, a, b):
    if not _shared_matrix(a, b):
        return ops.matmul.vjp_fn(g, out, a, b)
    if not is_grad_enabled():                                       # raw arrays: nothing records
        rows, x = g.data.reshape(-1, g.shape[-1]), a.data
        ga = Tensor((rows @ b.data.T).reshape(a.shape)) if a.requires_grad else None
        gb = Tensor(x.reshape(-1, x.shape[-1]).T @ rows) if b.requires_grad else None
        return ga, gb
    rows = g.reshape(-1, g.shape[-1])                               # (T*n, m)
    ga = (rows @ b.mT).reshape(a.shape) if a.requires_grad else None
    gb = a.reshape(-1, a.shape[-1]).mT @ rows if b.requires_grad else None
    return ga, gb


replace(ops.matmul, forward=_matmul_forward, vjp=_matmul_vjp,
        why="x @ W with W shared by a batch: the batch stacked into rows, one matrix product "
            "in the forward and in each VJP product instead of one per batch entry")


@primitive
def linear_bias(x, w, b):
    """x @ w^T + b for x (..., n, in), w (out, in), b (out,): the bias added in place."""
    y = x.reshape(-1, x.shape[-1]) @ w.T                            # (T*n, out)
    y += b
    return y.reshape(x.shape[:-1] + (w.shape[0],))


@linear_bias.vjp
def _linear_bias_vjp(g, out, x, w, b):
    if not is_grad_enabled():                                       # raw arrays: nothing records
        rows, xs = g.data.reshape(-1, g.shape[-1]), x.data.reshape(-1, x.shape[-1])
        return (Tensor((rows @ w.data).reshape(x.shape)) if x.requires_grad else None,
                Tensor(rows.T @ xs) if w.requires_grad else None,
                Tensor(sum_to(rows, b.shape)) if b.requires_grad else None)
    rows, xs = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])  # (T*n, out), (T*n, in)
    return ((rows @ w).reshape(x.shape) if x.requires_grad else None,
            rows.mT @ xs if w.requires_grad else None,
            rows.sum(axis=0) if b.requires_grad else None)


@primitive
def task_linear_bias(x, w, b):
    """x @ w^T + b per task: x (T, n, in), w (T, out, in), b (T, out), the bias added in place."""
    y = x @ xp.swapaxes(w, -1, -2)                                  # (T, n, out)
    y += b[:, None, :]
    return y


@task_linear_bias.vjp
def _task_linear_bias_vjp(g, out, x, w, b):
    if not is_grad_enabled():                                       # raw arrays: nothing records
        ga = g.data
        return (Tensor(ga @ w.data) if x.requires_grad else None,
                Tensor(xp.swapaxes(ga, -1, -2) @ x.data) if w.requires_grad else None,
                Tensor(ga.sum(axis=-2)) if b.requires_grad else None)
    return (g @ w if x.requires_grad else None,                     # (T, n, in)
            g.mT @ x if w.requires_grad else None,                  # (T, out, in)
            g.sum(axis=-2) if b.requires_grad else None)            # (T, out)


def _linear(x, w, b=None):
    x, w = lift((x, w))
    if b is None or x.ndim < 2 or x.shape[-1] != w.shape[-1]:
        return F.linear.reference(x, w, b)                          # other shapes, and the errors
    (b,) = lift((b,))
    if len({x.dtype, w.dtype, b.dtype}) != 1:
        return F.linear.reference(x, w, b)
    if w.ndim == 2 and b.shape == w.shape[:1]:
        return linear_bias(x, w, b)
    if (w.ndim == 3 and x.ndim == 3 and b.shape == w.shape[:2]
            and x.shape[0] == w.shape[0]):                          # one weight per task
        return task_linear_bias(x, w, b)
    return F.linear.reference(x, w, b)


replace_composite(F.linear, _linear,
                  why="the bias added into the product's output in place (addmm, or baddbmm "
                      "with per-task weights): one node instead of four, no add primitive "
                      "forward or backward; shared weights' products on the stacked rows")
