"""Fast matmul: replaces the forward and the VJP of ops.matmul for one matrix
shared by a batch.

For x @ W with x (..., n, k) and W (k, m), NumPy's batched matmul calls one
small matrix product per batch entry. Here the batch is stacked into rows and
multiplied once, (T*n, k) @ (k, m), in the forward and in both products of the
VJP: dL/dx = G W^T as (T*n, m) @ (m, k), and dL/dW = X^T G as one
(k, T*n) @ (T*n, m) product instead of a batch of (k, m) partial results summed
afterwards (unbroadcast). The VJP is Tensor operations, so every order still
works. Any other operand shapes run the core.
"""
from .. import ops
from .overlay import replace


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
    rows = g.reshape(-1, g.shape[-1])                               # (T*n, m)
    ga = (rows @ b.mT).reshape(a.shape) if a.requires_grad else None
    gb = a.reshape(-1, a.shape[-1]).mT @ rows if b.requires_grad else None
    return ga, gb


replace(ops.matmul, forward=_matmul_forward, vjp=_matmul_vjp,
        why="x @ W with W shared by a batch: the batch stacked into rows, one matrix product "
            "in the forward and in each VJP product instead of one per batch entry")
