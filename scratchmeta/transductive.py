"""Transductive inference over a held-out episode's unlabeled queries (ProtoNet; off by default).

Not part of Prototypical Networks (Snell, Swersky & Zemel 2017,
arXiv:1703.05175v2), whose queries are classified one at a time: these
methods look at all the queries of an episode together, at evaluation only.

"softkmeans": one or more steps of soft k-means refinement of the
prototypes with the episode's queries as unlabeled points (Ren et al. 2018,
"Meta-Learning for Semi-Supervised Few-Shot Classification",
arXiv:1803.00676, Eq. 4). Starting from the prototypes c_k of Eq. 1,

    w_jk = exp(-d(z_j, c_k)) / sum_k' exp(-d(z_j, c_k'))        (soft assignments)
    c~_k = (sum_{i in S_k} z_i + sum_j w_jk z_j) / (|S_k| + sum_j w_jk)      (Eq. 4)

with z_j the query embeddings and d the learner's distance (squared
Euclidean by default); each further step recomputes w from c~ and applies
Eq. 4 again to the support and the queries (the support keeps weight 1).
The queries are then classified by Eq. 2 against c~, and the reported loss
is computed from c~ too.

"assignment": the one-to-one assignment of queries to classes. In Lake et
al.'s 20-way one-shot runs each class has exactly one query (and in the
sampler's episodes each class has the same number q of queries), so the
predictions can be constrained to use each class exactly q times: the
assignment minimising the total distance sum_j d(z_j, c_{k(j)}) over such
balanced assignments (scipy.optimize.linear_sum_assignment on the distances,
each class's column repeated q times). This EXPLOITS THE PROTOCOL's
knowledge that the queries are balanced over the classes; it is not a
per-query classifier. Only the accuracy changes: the reported loss stays
that of the plain prototypes.
"""
import numbers

from scipy.optimize import linear_sum_assignment

from . import backend
from . import functional as F
from .algorithms.common import one_hot
from .algorithms.embeddings import distances
from .algorithms.protonet import prototypes
from .tensor import Tensor, as_tensor

METHODS = ("softkmeans", "assignment")


def check_method(method):
    """method as one of METHODS, None (off) as None, or a ValueError naming the value."""
    if method is None:
        return None
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"transductive must be one of {METHODS} or None (off), got {method!r}")
    return method


def check_steps(steps):
    """The refinement steps as an int >= 1, or a ValueError naming the value."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"refine_steps must be an integer >= 1 (soft k-means refinement steps), "
                         f"got {steps!r}")
    return int(steps)


def soft_kmeans_prototypes(z_support, y_support, z_query, n_way, steps=1, distance="euclidean"):
    """The prototypes after `steps` soft k-means steps with the queries (Ren et al. Eq. 4).

    z_support (..., n, d), y_support (..., n) ints, z_query (..., M, d) -> (..., n_way, d).
    A query whose weights are all 0 leaves the prototypes of Eq. 1 unchanged.
    """
    steps = check_steps(steps)
    z_support, z_query = as_tensor(z_support), as_tensor(z_query)
    y = one_hot(y_support, n_way, z_support.dtype)                  # (..., n, N)
    support_sum = y.mT @ z_support                                  # (..., N, d)
    counts = y.sum(axis=-2)                                         # (..., N): |S_k|
    c = support_sum / counts.reshape(counts.shape + (1,))           # Eq. 1
    for _ in range(steps):
        w = F.softmax(-distances(z_query, c, distance), axis=-1)     # (..., M, N)
        mass = counts + w.sum(axis=-2)
        c = (support_sum + w.mT @ z_query) / mass.reshape(mass.shape + (1,))
    return c


def balanced_assignment(cost):
    """(..., M, N) costs -> (..., M) class indices using each class M / N times, at least total cost.

    A ValueError when M is not a multiple of N (the queries cannot be balanced over the classes).
    """
    host = backend.host
    cost = backend.to_numpy(cost.data if isinstance(cost, Tensor) else cost)
    m, n = cost.shape[-2:]
    if m % n:
        raise ValueError(f"transductive='assignment' needs the same number of queries in every "
                         f"class: {m} queries do not divide among {n} classes")
    per_class = m // n
    flat = cost.reshape((-1, m, n))
    out = host.empty(flat.shape[:2], dtype=host.int64)
    for t, episode in enumerate(flat):
        rows, cols = linear_sum_assignment(host.repeat(episode, per_class, axis=1))  # q slots a class
        out[t, rows] = cols // per_class
    return out.reshape(cost.shape[:-1])


class Transduction:
    """learner.transduction: (learner, z_support, y_support, z_query, n_way) -> (log p, scores).

    log p (..., M, N) gives the loss; scores (..., M, N) the accuracy (any increasing score).
    method: "softkmeans" or "assignment" (module docstring); steps: soft k-means steps (>= 1).
    """

    def __init__(self, method, steps=None):
        self.method = check_method(method)
        if self.method is None:
            raise ValueError("Transduction needs a method: one of " + ", ".join(METHODS))
        if steps is not None and self.method != "softkmeans":
            raise ValueError(f"refine_steps applies to transductive='softkmeans' only, "
                             f"not {self.method!r}")
        self.steps = check_steps(1 if steps is None else steps) if self.method == "softkmeans" else None

    def config(self):
        out = {"method": self.method}
        if self.steps is not None:
            out["refine_steps"] = self.steps
        return out

    def __call__(self, learner, z_support, y_support, z_query, n_way):
        if self.method == "softkmeans":
            c = soft_kmeans_prototypes(z_support, y_support, z_query, n_way, self.steps,
                                       learner.distance)
            logp = F.log_softmax(-distances(z_query, c, learner.distance), axis=-1)
            return logp, logp
        c = prototypes(z_support, y_support, n_way)                         # Eq. 1, unrefined
        d = distances(z_query, c, learner.distance)
        logp = F.log_softmax(-d, axis=-1)
        chosen = balanced_assignment(d)
        return logp, one_hot(backend.asarray(chosen), n_way, logp.dtype)


def make(method, steps=None):
    """The Transduction for `method` and `steps`, or None for method None (off).

    A ValueError names a bad method or step count, or steps given without "softkmeans".
    """
    if check_method(method) is None:
        if steps is not None:
            raise ValueError(f"refine_steps={steps!r} needs transductive='softkmeans'")
        return None
    return Transduction(method, steps)


def install(learner, transduction):
    """Give `learner` the Transduction `transduction` at evaluation (None leaves it unchanged);
    a ValueError for a learner without prototypes (only protonet has them)."""
    if transduction is None:
        return learner
    if learner.name != "protonet":
        raise ValueError(f"transductive={transduction.method!r}: {learner.name} has no prototypes; "
                         f"transductive inference applies to protonet")
    learner.transduction = transduction
    return learner
