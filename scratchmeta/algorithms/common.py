"""What every meta-learner shares: the meta-batch check, labels, losses and accuracy.

A meta-batch is a dict with a leading task axis T on every array:
support_x (T, K, ...), support_y (T, K, ...), query_x (T, Q, ...),
query_y (T, Q, ...). Losses and metrics return one value per task, (T,),
so that evaluation can report a mean and a confidence interval over tasks.
"""
from collections import OrderedDict
import math

from .. import backend, nn
from .. import functional as F
from ..tasks.registry import CLASSIFICATION     # every image-classification task
from ..tensor import Tensor, as_tensor

BATCH_KEYS = ("support_x", "support_y", "query_x", "query_y")
LOSSES = ("mse", "cross_entropy")


# -- the meta-batch ------------------------------------------------------------------
def check_batch(batch, who="maml", labels=False):
    """Check a meta-batch's keys and shapes; return T, its number of tasks.

    Every array shares the task axis; x and y agree on (T, points).
    labels=True (classification): the y arrays are (T, points) class indices
    and support and query images have the same shape.
    """
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"{who}: the meta-batch lacks {missing}; expected keys {BATCH_KEYS} "
                         f"(it has {sorted(batch)})")
    sx, sy, qx, qy = (batch[k] for k in BATCH_KEYS)
    if sx.ndim < 2 or qx.ndim < 2:
        raise ValueError(f"{who}: support_x {tuple(sx.shape)} and query_x {tuple(qx.shape)} "
                         f"need a task axis and a point axis (T, n, ...)")
    if sx.shape[0] != qx.shape[0]:
        raise ValueError(f"{who}: support_x has shape {tuple(sx.shape)} and query_x has shape "
                         f"{tuple(qx.shape)}: their task axes ({sx.shape[0]} vs {qx.shape[0]}) differ")
    for name, x, y in (("support", sx, sy), ("query", qx, qy)):
        if tuple(x.shape[:2]) != tuple(y.shape[:2]):
            raise ValueError(f"{who}: {name}_x has shape {tuple(x.shape)} but {name}_y has shape "
                             f"{tuple(y.shape)}: tasks and points must match")
    if labels:
        if sy.ndim != 2 or qy.ndim != 2 or sx.ndim < 3:
            raise ValueError(f"{who}: expected support_x (T, n, ...) with support_y (T, n) and "
                             f"query_x (T, M, ...) with query_y (T, M); got {tuple(sx.shape)}, "
                             f"{tuple(sy.shape)}, {tuple(qx.shape)}, {tuple(qy.shape)}")
        if tuple(sx.shape[2:]) != tuple(qx.shape[2:]):
            raise ValueError(f"{who}: support_x {tuple(sx.shape)} and query_x {tuple(qx.shape)} "
                             f"disagree on the image shape")
    return sx.shape[0]


def check_finite(value, what, who="maml"):
    """Raise FloatingPointError if a 0-d Tensor is NaN or inf (reads one number back)."""
    v = value.item()
    if not math.isfinite(v):
        raise FloatingPointError(f"{who}: the {what} is {v} (diverged: try a smaller inner_lr "
                                 f"or outer lr)")


def select_support(batch, k_support, who):
    """The first k support points of each task (regression evaluation at smaller K)."""
    if k_support is None:
        return batch
    have = batch["support_x"].shape[1]
    if not 1 <= int(k_support) <= have:
        raise ValueError(f"{who}: k_support={k_support} but the tasks hold only {have} "
                         f"support points each (sample them with a larger k_support)")
    out = dict(batch)
    out["support_x"] = batch["support_x"][:, :int(k_support)]
    out["support_y"] = batch["support_y"][:, :int(k_support)]
    return out


def fresh(theta):
    """Leaf copies, so evaluation never attaches graphs to the caller's theta."""
    return OrderedDict((k, Tensor(v.data, requires_grad=True)) for k, v in theta.items())


# -- labels --------------------------------------------------------------------------
def host_labels(labels, who):
    """Integer labels as a host array (raises on a float dtype)."""
    raw = labels.data if isinstance(labels, Tensor) else labels
    array = backend.to_numpy(backend.asarray(raw))
    if array.dtype.kind not in "iu":
        raise ValueError(f"{who}: labels must be integer class indices, got dtype {array.dtype}")
    return array


def one_hot(labels, n_classes, dtype=None):
    """(..., n) integer labels in 0..n_classes-1 -> (..., n, n_classes) float one-hot Y (a constant)."""
    found = host_labels(labels, "one_hot")
    if found.size and (found.min() < 0 or found.max() >= n_classes):
        raise ValueError(f"one_hot: labels must lie in [0, {n_classes}), got values in "
                         f"[{int(found.min())}, {int(found.max())}]")
    raw = labels.data if isinstance(labels, Tensor) else backend.asarray(labels)
    classes = backend.asarray(backend.host.arange(n_classes))
    hit = Tensor(raw).reshape(tuple(raw.shape) + (1,)) == classes      # (..., n, C) bool
    return hit.astype(backend.resolve_dtype(dtype))


# -- losses and metrics, one value per task ----------------------------------------------
def task_losses(pred, y, loss="mse"):
    """Per-task mean loss over the points, shape (T,).

    "mse":           pred, y (T, n, d)  ->  mean_n,d (pred - y)^2
    "cross_entropy": logits (T, n, C), integer labels (T, n)
                     -> mean_n -log softmax(logits)[label];
                     their sum over tasks is T * F.cross_entropy(logits, labels).
    A callable loss(pred, y) -> (T,) is used as given.
    """
    if callable(loss):
        return loss(pred, y)
    T = pred.shape[0]
    if loss == "mse":
        d = pred - y
        return (d * d).reshape(T, -1).mean(axis=1)
    if loss == "cross_entropy":
        return nll(F.log_softmax(pred, axis=-1), y)
    raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES} or pass a callable")


def one_task_loss(model, params, x, y, loss="mse"):
    """One task's loss, a 0-d Tensor: unbatched params, x (n, ...), y (n, ...).

    The per-task loops of the papers' pseudo-code call the model on one task;
    this is task_losses with a task axis of length 1.
    """
    pred = model(params, x)
    return task_losses(pred.reshape((1,) + pred.shape), y.reshape((1,) + y.shape), loss)[0]


def nll(logp, y):
    """-1/M sum_q log p(y_q | x_q), one value per task: (..., M, C), (..., M) -> (...)."""
    onehot = one_hot(y, logp.shape[-1], logp.dtype)
    return -(logp * onehot).sum(axis=-1).mean(axis=-1)


def accuracy(scores, y):
    """Per-task fraction of queries classified right: (..., M, C), (..., M) -> (...).

    Tie rule: a query is right only when its true class scores STRICTLY above
    every other class; a tie for the top counts as wrong. So a network whose
    scores are all equal (e.g. a zero head) scores 0, never 1. Works on
    logits, log-probabilities or probabilities alike (any increasing score).
    """
    scores = as_tensor(scores)
    onehot = one_hot(y, scores.shape[-1], scores.dtype)
    true = (scores * onehot).sum(axis=-1)                             # (..., M)
    other = F.where(onehot.data > 0, float("-inf"), scores).max(axis=-1)   # best wrong class
    return (true > other).astype(scores.dtype).mean(axis=-1)


# -- building a learner from a config ------------------------------------------------
def check_algo(algo, allowed, who):
    """Refuse algo keys the learner does not know (a typo would otherwise be ignored)."""
    unknown = sorted(set(algo) - set(allowed))
    if unknown:
        raise ValueError(f"{who}: unknown algo keys {unknown}; allowed: {sorted(allowed)}")


def model_and_loss(config):
    """The model of config["model"] and the loss its task needs."""
    model = nn.build_model(config["model"])
    task = config.get("task", {}).get("name", "sinusoid")
    return model, ("cross_entropy" if task in CLASSIFICATION else "mse")
