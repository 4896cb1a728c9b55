"""Fast matmul VJP: replaces the VJP of ops.matmul for one matrix shared by a batch.

For x @ W with x (..., n, k) and W (k, m), the core VJP forms dL/dW as a batch
of products A_t^T G_t and then sums it over the batch (unbroadcast). Here it is
one product of the batch stacked into rows, (k, T*n) @ (T*n, m): no batch of
(k, m) partial results. Tensor operations, so every order still works.
"""
from .. import ops
from .overlay import replace


def _matmul_vjp(g, out, a, b):
    if not (b.requires_grad and b.ndim == 2 and a.ndim > 2):
        return ops.matmul.vjp_fn(g, out, a, b)
    ga = g @ b.mT if a.requires_grad else None                   # already a's shape
    gb = a.reshape(-1, a.shape[-1]).mT @ g.reshape(-1, g.shape[-1])
    return ga, gb


replace(ops.matmul, vjp=_matmul_vjp,
        why="x @ W with W shared by a batch: dL/dW as one product of the stacked rows, "
            "not a batch of products summed afterwards")
