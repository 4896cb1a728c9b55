"""Matching Networks (Vinyals et al. 2016, arXiv:1606.04080v2), without full-context embeddings.

A query x^ is labelled by attention over the support set S = {(x_i, y_i)}:

    y^ = sum_i a(x^, x_i) y_i                                            (Eq. 1)
    a(x^, x_i) = exp(c(f(x^), g(x_i))) / sum_j exp(c(f(x^), g(x_j)))      (Eq. 2)

with c the cosine similarity, y_i one-hot, and f = g = one embedding
network (Conv4 without a head): the paper's full-context embeddings (the
LSTMs of its Sec. 2.1.2) are left out. The training loss is -log y^[y], the
negative log-probability of the true class, averaged over the queries.

Compared with ProtoNets (Snell et al. 2017, Sec. 2.5): the same episode
and the same embedding, but every support point votes on its own, with a
weight from a softmax over cosines, instead of through its class mean.
Only the classifier head differs, so the learner reuses ProtoNet's loop.
"""
from .. import functional as F
from .. import nn
from ..tensor import as_tensor
from .common import check_algo, one_hot
from .embeddings import cosine
from .protonet import ProtoNet


def attention(z_query, z_support):
    """a(x^_q, x_i) = softmax_i cos(z_q, z_i) (Eq. 2): (..., M, d), (..., n, d) -> (..., M, n)."""
    return F.softmax(cosine(z_query, z_support), axis=-1)


def class_probs(z_support, y_support, z_query, n_way):
    """y^_q = sum_i a(x^_q, x_i) onehot(y_i) (Eq. 1): (..., M, n_way), rows summing to 1."""
    z_support = as_tensor(z_support)
    y = one_hot(y_support, n_way, z_support.dtype)                 # (..., n, N)
    if y.shape[:-1] != z_support.shape[:-1]:
        raise ValueError(f"class_probs: y_support of shape {y.shape[:-1]} does not label "
                         f"z_support of shape {z_support.shape}")
    return attention(z_query, z_support) @ y


def log_probs(z_support, y_support, z_query, n_way):
    """log y^_q: (..., M, n_way).

    Safe without a log-sum-exp: cosines lie in [-1, 1], so every attention
    weight is at least exp(-2) / n and no class with a support point gets 0.
    """
    return class_probs(z_support, y_support, z_query, n_way).log()


class MatchingNet(ProtoNet):
    """Matching Networks without FCE; meta_step, evaluate and batching as ProtoNet.

    The loss is -1/M sum_q log y^_q[y_q]; evaluate's baseline/pixels is the
    same attention classifier on raw pixels (cosine nearest neighbours, soft).
    """

    name = "matching"

    def __init__(self, model, train_ways=None, test_batch_norm="transductive"):
        super().__init__(model, distance="cosine", train_ways=train_ways,
                         test_batch_norm=test_batch_norm)

    def config(self):
        return {"model": self.model.config(),
                "algo": {"train_ways": self.train_ways, "test_batch_norm": self.test_batch_norm}}

    def log_probs(self, z_support, y_support, z_query, n_way):
        return log_probs(z_support, y_support, z_query, n_way)


def make_learner(config):
    """A MatchingNet from config["model"] and config["algo"] (train_ways)."""
    if not config.get("model"):
        raise ValueError("matching: the config has no model (see scratchmeta.recipes)")
    model = nn.build_model(config["model"])
    algo = dict(config.get("algo") or {})
    check_algo(algo, ("train_ways", "train_queries", "test_batch_norm"), "matching")
    return MatchingNet(model, train_ways=algo.get("train_ways"),
                       test_batch_norm=algo.get("test_batch_norm", "transductive"))


__all__ = ["attention", "class_probs", "log_probs", "MatchingNet", "make_learner"]
