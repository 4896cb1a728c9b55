"""Distances between embeddings, batched over any leading axes.

Prototypical Networks (Snell, Swersky & Zemel 2017, arXiv:1703.05175v2,
Sec. 2.2) classify by the squared Euclidean distance to each prototype, or
by 1 - cosine; Matching Networks (Vinyals et al. 2016, arXiv:1606.04080v2,
Eq. 2) attend with the cosine. Shapes: a (..., n, d), b (..., m, d) ->
(..., n, m).
"""
from .. import functional as F
from ..tensor import as_tensor

DISTANCES = ("euclidean", "cosine")
COSINE_EPS = 1e-8         # ||z|| is taken as sqrt(z.z + eps): finite at z = 0


def sq_dist(a, b):
    """||a_i - b_j||^2, (..., n, d), (..., m, d) -> (..., n, m) (functional.sq_dist)."""
    return F.sq_dist(a, b)


def norm(z):
    """sqrt(z.z + eps) over the last axis, kept: (..., n, 1)."""
    return ((z * z).sum(axis=-1, keepdims=True) + COSINE_EPS).sqrt()


def cosine(a, b):
    """Cosine similarities a_i.b_j / (||a_i|| ||b_j||), (..., n, d), (..., m, d) -> (..., n, m)."""
    a, b = as_tensor(a), as_tensor(b)
    return (a / norm(a)) @ (b / norm(b)).mT


def distances(z_query, c, distance="euclidean"):
    """d(z_q, c_k) for every query and class: (..., M, d), (..., N, d) -> (..., M, N)."""
    if distance == "euclidean":
        return sq_dist(z_query, c)
    if distance == "cosine":
        return 1 - cosine(z_query, c)
    raise ValueError(f"unknown distance {distance!r}; choose one of {DISTANCES}")
