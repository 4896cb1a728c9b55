"""Prototypical Networks (Snell, Swersky & Zemel 2017, arXiv:1703.05175v2).

An embedding f_theta (Conv4 without a head) maps images to points z; a
class is the mean of its support embeddings, and a query is classified by a
softmax over negative distances to those means:

    c_k = 1/|S_k| sum_{i in S_k} z_i                                  (Eq. 1)
    p(y = k | x) = exp(-d(z, c_k)) / sum_k' exp(-d(z, c_k'))           (Eq. 2)
    J = -1/M sum_q log p(y_q | x_q)                   (Algorithm 1, M queries)

with d the squared Euclidean distance (or 1 - cosine). Every function takes
a leading episode axis (T, ...) or none; nothing loops over episodes.
docs/protonet.md derives the gradient of J by hand;
`protonet_loss_grad_closed_form` is that derivation as code, and the
primitive `protonet_loss` uses it as its VJP.
"""
from .. import backend
from .. import functional as F
from .. import nn
from ..backend import host
from ..tensor import Tensor, as_tensor, enable_grad, grad, no_grad, primitive
from .base import MetaLearner
from .common import (BATCH_KEYS, accuracy, check_algo, check_batch, host_labels, nll,  # noqa: F401
                     one_hot)
from .embeddings import DISTANCES, cosine, distances, norm, sq_dist   # noqa: F401 (Sec. 2.2)
from .running_bn import TestBatchNorm, running_statistics

ALGO_KEYS = ("distance", "train_ways", "train_queries", "fused_loss", "test_batch_norm")



# -- Eq. 1: prototypes --------------------------------------------------------------
def prototypes(z_support, y_support, n_way):
    """Class means c_k = 1/|S_k| sum_{i: y_i = k} z_i (Eq. 1), as one matrix product.

    z_support (..., n, d), y_support (..., n) ints -> (..., n_way, d).
    With Y the (n, n_way) one-hot matrix: C = diag(1 / Y^T 1) Y^T Z.
    """
    z_support = as_tensor(z_support)
    y = one_hot(y_support, n_way, z_support.dtype)                  # (..., n, N)
    if y.shape[:-1] != z_support.shape[:-1]:
        raise ValueError(f"prototypes: y_support of shape {y.shape[:-1]} does not label "
                         f"z_support of shape {z_support.shape}")
    counts = y.sum(axis=-2)                                         # (..., N): |S_k|
    if bool(backend.to_numpy((counts.data == 0).any())):
        raise ValueError(f"prototypes: some of the {n_way} classes have no support example")
    return (y.mT @ z_support) / counts.reshape(counts.shape + (1,))


# -- Eq. 2 and the episode loss ---------------------------------------------------------
def log_probs(z_query, c, distance="euclidean"):
    """log p(y = k | x_q) = log softmax_k(-d(z_q, c_k)) (Eq. 2): (..., M, N)."""
    return F.log_softmax(-distances(z_query, c, distance), axis=-1)


def episode_loss(z_support, y_support, z_query, y_query, n_way, distance="euclidean"):
    """J per episode (Algorithm 1): prototypes, then the distance softmax, then the NLL."""
    c = prototypes(z_support, y_support, n_way)
    return nll(log_probs(z_query, c, distance), y_query)


# -- Sec. 2.4: the equivalent linear classifier -------------------------------------------
def as_linear_classifier(c):
    """(W, b) with W_k = 2 c_k and b_k = -||c_k||^2 (Snell et al. Sec. 2.4).

    -||z - c_k||^2 = -||z||^2 + 2 c_k.z - ||c_k||^2; the first term is the
    same for every k, so softmax(z W^T + b) = softmax(-||z - c||^2).
    c (..., N, d) -> W (..., N, d), b (..., N).
    """
    c = as_tensor(c)
    return 2 * c, -(c * c).sum(axis=-1)


# -- the gradient by hand (docs/protonet.md) ------------------------------------------------
def protonet_loss_grad_closed_form(z_support, y_support, z_query, y_query, n_way,
                                   distance="euclidean"):
    """(J, dJ/dz_query, dJ/dz_support) of the per-episode loss, derived by hand.

    With P the (M, N) query probabilities, Y_q, Y_s the one-hot label
    matrices, A = (Y_q - P) / M = dJ/dD and counts n_k = |S_k|:
      euclidean, D = ||z_q - c_k||^2:
        dJ/dz_q = 2/M (P C - Y_q C)            (expected minus true prototype)
        dJ/dc_k = 2/M sum_q (p_qk - y_qk)(z_q - c_k)
      cosine, D = 1 - u_q.v_k with u = z/||z||, v = c/||c||, S = U V^T:
        dJ/dz_q = -(A V - rowsum(A * S) u_q) / ||z_q||
        dJ/dc_k = -(A^T U - colsum(A * S) v_k) / ||c_k||
      and every support point gets its class's share: dJ/dz_i = dJ/dc_{y_i} / n_{y_i}.
    Tensor operations only, so the result is itself differentiable.
    Shapes: z_support (..., n, d), z_query (..., M, d); J (...).
    """
    z_support, z_query = as_tensor(z_support), as_tensor(z_query)
    y_s = one_hot(y_support, n_way, z_support.dtype)                 # (..., n, N)
    y_q = one_hot(y_query, n_way, z_query.dtype)                     # (..., M, N)
    m = z_query.shape[-2]
    counts = y_s.sum(axis=-2)                                        # (..., N)
    c = (y_s.mT @ z_support) / counts.reshape(counts.shape + (1,))   # Eq. 1
    logp = log_probs(z_query, c, distance)
    p = logp.exp()                                                   # (..., M, N)
    a = (y_q - p) * (1.0 / m)                                        # dJ/dD
    if distance == "euclidean":
        # dD_qk/dz_q = 2 (z_q - c_k); rows of A sum to 0, so the z_q term cancels
        g_query = -2 * (a @ c)
        # dD_qk/dc_k = -2 (z_q - c_k)
        g_c = -2 * (a.mT @ z_query - a.sum(axis=-2).reshape(counts.shape + (1,)) * c)
    elif distance == "cosine":
        nq, nc = norm(z_query), norm(c)                            # (..., M, 1), (..., N, 1)
        u, v = z_query / nq, c / nc
        s = u @ v.mT                                                 # (..., M, N)
        # ds/dz = (v - s u) / ||z||, ds/dc = (u - s v) / ||c||, and dJ/ds = -A
        g_query = -(a @ v - (a * s).sum(axis=-1, keepdims=True) * u) / nq
        g_c = -(a.mT @ u - (a * s).sum(axis=-2).reshape(counts.shape + (1,)) * v) / nc
    else:
        raise ValueError(f"unknown distance {distance!r}; choose one of {DISTANCES}")
    # c_k = 1/n_k sum_{i in S_k} z_i: each support point receives dJ/dc_k / n_k
    g_support = y_s @ (g_c / counts.reshape(counts.shape + (1,)))
    loss = -(logp * y_q).sum(axis=-1).mean(axis=-1)
    return loss, g_query, g_support


@primitive
def protonet_loss(z_support, z_query, y_support=None, y_query=None, n_way=None,
                  distance="euclidean"):
    """J per episode as one fused op whose VJP is the hand-derived gradient.

    Forward: the composite `episode_loss` on constants. z_support (..., n, d),
    z_query (..., M, d) raw arrays; labels and n_way are static arguments.
    """
    with no_grad():
        return episode_loss(Tensor(z_support), y_support, Tensor(z_query), y_query,
                            n_way, distance).data


@protonet_loss.vjp
def _protonet_loss_vjp(g, out, z_support, z_query, y_support=None, y_query=None,
                       n_way=None, distance="euclidean"):
    _, g_query, g_support = protonet_loss_grad_closed_form(
        z_support, y_support, z_query, y_query, n_way, distance)
    g = g.reshape(g.shape + (1, 1))                                  # one scale per episode
    return g * g_support, g * g_query


# -- Algorithm 1, one episode at a time ---------------------------------------------------------
def meta_gradient_loop(learner, theta, batch):
    """(mean J, dJ/dtheta) over the episodes, one episode at a time (the paper's loop; slow).

    Each episode's images go through learner.model with theta as it is
    (unbatched), then Eq. 1, Eq. 2 and the NLL. learner.meta_step gives the
    same numbers with every episode embedded in one batched call.
    """
    T = check_batch(batch, "meta_gradient_loop", labels=True)
    n_way, names = episode_ways(batch), list(theta)
    n_support = batch["support_x"].shape[1]
    total = 0.0
    with enable_grad():
        for t in range(T):
            x = F.concatenate([as_tensor(batch["support_x"][t]),
                               as_tensor(batch["query_x"][t])], axis=0)   # (n + M, C, H, W)
            z = learner.model(theta, x)                                    # (n + M, d)
            logp = learner.log_probs(z[:n_support], batch["support_y"][t], z[n_support:], n_way)
            total = total + nll(logp, batch["query_y"][t]) * (1.0 / T)
        grads = grad(total, [theta[k] for k in names])
    return total.detach(), dict(zip(names, grads))


# -- the meta-learner: every episode at once ----------------------------------------------------
def episode_ways(batch):
    """N of the episodes in a meta-batch: from `classes` (T, N) if present, else the labels."""
    if "classes" in batch:
        return int(batch["classes"].shape[-1])
    return int(host_labels(batch["support_y"], "episode_ways").max()) + 1


class ProtoNet(TestBatchNorm, MetaLearner):
    """Prototypical Networks over an embedding model (default Conv4 without a head).

    Every episode of a meta-batch is embedded in one call, support and query
    together, in the batched layout (T, n, C, H, W) with parameters given a
    task axis (nn.batched): batch norm then uses each episode's own
    statistics, as Snell et al.'s code does in training. At test time it
    does too (test_batch_norm="transductive", as MAML's code does); Snell et
    al.'s code uses running averages instead, "running" (running_bn.py).
    train_ways: the N of training episodes (Snell et al. train 60-way for a
    5-way test on Omniglot); None keeps the task's n_way. The loop that
    builds the training sampler reads it; the learner infers N per batch.
    fused_loss=True computes J with the `protonet_loss` primitive, whose
    backward is the hand-derived gradient (same numbers as the composite).
    """

    name = "protonet"
    metric = "accuracy"
    higher_is_better = True
    max_images = 1600         # per embedding pass in evaluate
    transduction = None       # evaluate: an episode's queries classified together (transductive.py)

    def __init__(self, model, distance="euclidean", train_ways=None, fused_loss=False,
                 test_batch_norm="transductive"):
        self.running = running_statistics(model, test_batch_norm)
        if distance not in DISTANCES:
            raise ValueError(f"unknown distance {distance!r}; choose one of {DISTANCES}")
        if train_ways is not None and (isinstance(train_ways, bool) or int(train_ways) != train_ways
                                       or train_ways < 2):
            raise ValueError(f"train_ways must be an integer >= 2 or None, got {train_ways!r}")
        self.model, self.distance = model, distance
        self.train_ways = None if train_ways is None else int(train_ways)
        self.fused_loss = bool(fused_loss)

    def config(self):
        return {"model": self.model.config(),
                "algo": {"distance": self.distance, "train_ways": self.train_ways,
                         "fused_loss": self.fused_loss, "test_batch_norm": self.test_batch_norm}}

    def init(self, seed):
        return self.model.init(seed)

    def embed(self, theta, batch):
        """(z_support (T, n, d), z_query (T, M, d)): one forward pass over every image."""
        support_x, query_x = as_tensor(batch["support_x"]), as_tensor(batch["query_x"])
        n_tasks, n_support = support_x.shape[:2]
        x = F.concatenate([support_x, query_x], axis=1)              # (T, n + M, C, H, W)
        z = self.model(nn.batched(theta, n_tasks), x)                # (T, n + M, d)
        return z[:, :n_support], z[:, n_support:]

    def log_probs(self, z_support, y_support, z_query, n_way):
        """log p(y = k | x_q) (Eq. 2) for every query: (T, M, N)."""
        return log_probs(z_query, prototypes(z_support, y_support, n_way), self.distance)

    def _losses(self, z_support, z_query, batch, n_way):
        """(per-episode J (T,), log-probabilities (T, M, N))."""
        logp = self.log_probs(z_support, batch["support_y"], z_query, n_way)
        if self.fused_loss:
            loss = protonet_loss(z_support, z_query, y_support=batch["support_y"],
                                 y_query=batch["query_y"], n_way=n_way, distance=self.distance)
        else:
            loss = nll(logp, batch["query_y"])
        return loss, logp

    def meta_step(self, theta, batch):
        """Mean J over the meta-batch, and its gradient with respect to theta."""
        check_batch(batch, f"{self.name}.meta_step", labels=True)
        n_way = episode_ways(batch)
        names = list(theta)
        with enable_grad():
            z_support, z_query = self.embed(theta, batch)
            losses, logp = self._losses(z_support, z_query, batch, n_way)
            loss = losses.mean()
            grads = grad(loss, [theta[k] for k in names], retain_graph=False)
        self.update_running(theta, batch)
        with no_grad():
            acc = accuracy(logp.detach(), batch["query_y"]).mean()
        return loss.detach(), dict(zip(names, grads)), {"accuracy": acc}

    @no_grad()
    def evaluate(self, theta, batch, baselines=True, **options):
        """Per-episode accuracy and loss, with chance and a raw-pixel baseline (T,) each.

        baseline/pixels: the same classifier on flattened raw pixels, untrained
        (skipped with baselines=False). Episodes are embedded a few at a time
        (at most `max_images` images a pass) so that memory stays bounded.
        """
        unknown = sorted(k for k, v in options.items() if v is not None)
        if unknown:
            raise ValueError(f"{self.name}.evaluate: unknown options {unknown} "
                             f"(a metric learner takes no gradient steps at test time)")
        check_batch(batch, f"{self.name}.evaluate", labels=True)
        n_way = episode_ways(batch)
        n_tasks = batch["support_x"].shape[0]
        per_pass = max(1, self.max_images // (batch["support_x"].shape[1] + batch["query_x"].shape[1]))
        parts = {"accuracy": [], "loss": [], "baseline/pixels": []}
        for start in range(0, n_tasks, per_pass):          # chunks of episodes, not single ones
            chunk = {k: batch[k][start:start + per_pass] for k in BATCH_KEYS}
            z_support, z_query = self.test_embed(theta, chunk)
            if self.transduction is None:
                losses, scores = self._losses(z_support, z_query, chunk, n_way)
            else:                               # all the episode's queries at once (transductive.py)
                logp, scores = self.transduction(self, z_support, chunk["support_y"], z_query, n_way)
                losses = nll(logp, chunk["query_y"])
            parts["accuracy"].append(accuracy(scores, chunk["query_y"]))
            parts["loss"].append(losses)
            if baselines:
                sx, qx = as_tensor(chunk["support_x"]), as_tensor(chunk["query_x"])
                pix_s = sx.reshape(sx.shape[:2] + (-1,))                # (T, n, C*H*W)
                pix_q = qx.reshape(qx.shape[:2] + (-1,))
                parts["baseline/pixels"].append(accuracy(
                    self.log_probs(pix_s, chunk["support_y"], pix_q, n_way), chunk["query_y"]))
        out = {k: F.concatenate(v, axis=0).data for k, v in parts.items() if v}
        out["baseline/chance"] = backend.asarray(host.full(n_tasks, 1.0 / n_way),
                                                 dtype=out["loss"].dtype)
        return out


# -- building the learner from a config -------------------------------------------------------
def make_learner(config):
    """A ProtoNet from config["model"] (an nn.build_model dict) and config["algo"]."""
    if not config.get("model"):
        raise ValueError("protonet: the config has no model (see scratchmeta.recipes)")
    model = nn.build_model(config["model"])
    algo = dict(config.get("algo") or {})
    check_algo(algo, ALGO_KEYS, "protonet")
    algo.pop("train_queries", None)              # the training sampler's, not the learner's
    return ProtoNet(model, **algo)
