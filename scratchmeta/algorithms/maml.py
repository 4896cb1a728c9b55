"""MAML and first-order MAML, vectorised over the task batch.

Finn, Abbeel & Levine 2017, "Model-Agnostic Meta-Learning for Fast
Adaptation of Deep Networks", arXiv:1703.03400v3.

    Eq. 1  (inner loop)  phi_i = theta - alpha * grad_theta L_support_i(theta)
    Eq. 2  (meta-obj.)   min_theta  sum_i L_query_i(phi_i)
    Eq. 3  (outer step)  theta <- theta - beta * grad_theta sum_i L_query_i(phi_i)

Chain rule through Eq. 1 (one inner step):

    grad_theta L_query(phi) = (I - alpha * H_support(theta)) @ grad L_query(phi)
                            =  grad L_query(phi)                        first-order part
                             - alpha * H_support(theta) @ grad L_query(phi)   Hessian term

First-order MAML (FOMAML, Finn et al. Sec. 5.2) keeps only the first part:
it treats grad L_support as a constant (first_order=True), so dphi/dtheta = I.

Batching: theta is copied once per task, nn.batched(theta, T) -> (T, ...),
and the per-task losses are summed (sum over tasks of the mean over points).
Task t's loss depends only on its own copy, so ONE sm.grad of the sum gives
every task's inner gradient at once; no loop over tasks. The meta-loss is the
mean over tasks of the query loss; the broadcast's backward pass sums the
task copies' gradients back onto theta.
"""
from collections import OrderedDict
import math

from .. import backend, nn
from .. import functional as F
from ..tasks.registry import CLASSIFICATION     # every image-classification task
from ..tensor import Tensor, enable_grad, grad, no_grad
from ..checks import hvp
from .base import MetaLearner

LOSSES = ("mse", "cross_entropy")


# ---------------------------------------------------------------------------
# Losses, one value per task
# ---------------------------------------------------------------------------
def _one_hot(labels, n_classes, dtype):
    """(T, n) integer labels -> (T, n, C) float one-hot (a constant)."""
    classes = Tensor(backend.asarray(backend.host.arange(n_classes)))
    labels = labels if isinstance(labels, Tensor) else Tensor(labels)
    return (labels.reshape(labels.shape + (1,)) == classes).astype(dtype)


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
        logp = F.log_softmax(pred, axis=-1)                       # (T, n, C)
        onehot = _one_hot(y, pred.shape[-1], pred.dtype)
        return -(logp * onehot).sum(axis=-1).mean(axis=-1)
    raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES} or pass a callable")


def task_accuracy(logits, y):
    """Per-task fraction of query points whose true class has the largest logit, (T,)."""
    onehot = _one_hot(y, logits.shape[-1], logits.dtype)
    picked = (logits * onehot).sum(axis=-1)                       # logit of the true class
    return (picked >= logits.max(axis=-1)).astype(logits.dtype).mean(axis=-1)


def check_batch(batch, who="maml"):
    """Every array of a meta-batch must share the leading task axis T."""
    for key in ("support_x", "support_y", "query_x", "query_y"):
        if key not in batch:
            raise ValueError(f"{who}: the meta-batch has no {key!r} (keys: {sorted(batch)})")
    sx, sy, qx, qy = (batch[k] for k in ("support_x", "support_y", "query_x", "query_y"))
    if sx.shape[0] != qx.shape[0]:
        raise ValueError(f"{who}: support_x has shape {tuple(sx.shape)} and query_x has shape "
                         f"{tuple(qx.shape)}: their task axes ({sx.shape[0]} vs {qx.shape[0]}) differ")
    for name, x, y in (("support", sx, sy), ("query", qx, qy)):
        if x.shape[:2] != y.shape[:2]:
            raise ValueError(f"{who}: {name}_x has shape {tuple(x.shape)} but {name}_y has shape "
                             f"{tuple(y.shape)}: tasks and points must match")
    return sx.shape[0]


def check_finite(value, what, who="maml"):
    """Raise FloatingPointError if a 0-d Tensor is NaN or inf (reads one number back)."""
    v = value.item()
    if not math.isfinite(v):
        raise FloatingPointError(f"{who}: the {what} is {v} (diverged: try a smaller inner_lr "
                                 f"or outer lr)")


# ---------------------------------------------------------------------------
# The algorithm, as the paper writes it
# ---------------------------------------------------------------------------
def inner_update(theta, loss_fn, alpha, first_order=False, names=None):
    """One adaptation step: phi = theta - alpha * grad L_support(theta).

    Finn, Abbeel & Levine 2017, arXiv:1703.03400v3, Eq. 1.
    theta: dict name -> Tensor (batched (T, ...) for a batch of tasks);
    loss_fn(theta) -> 0-d Tensor; alpha: a number, or a dict name -> Tensor
    of per-parameter rates (Meta-SGD); names: the parameters to adapt
    (default all; ANIL adapts the head only).
    first_order=True treats the gradient as a constant, which drops
    the Hessian term from the meta-gradient (FOMAML).
    """
    names = list(theta) if names is None else list(names)
    grads = grad(loss_fn(theta), [theta[k] for k in names], create_graph=not first_order)
    phi = OrderedDict(theta)
    for k, g in zip(names, grads):
        lr = alpha[k] if isinstance(alpha, dict) else alpha
        phi[k] = theta[k] - lr * g
    return phi


def adapt(model, theta, x, y, alpha, steps, first_order=False, loss="mse", names=None):
    """`steps` inner updates (Eq. 1) for every task at once -> phi, batched (T, ...).

    x, y: support set with a leading task axis. The support loss summed over
    tasks has block-diagonal structure, so its gradient w.r.t. the batched
    parameters is every task's own gradient.
    """
    phi = nn.batched(theta, x.shape[0])

    def support_loss(params):                  # sum over tasks of mean over points
        return task_losses(model(params, x), y, loss).sum()

    for _ in range(steps):
        phi = inner_update(phi, support_loss, alpha, first_order, names)
    return phi


def meta_objective(model, theta, batch, alpha, steps, first_order=False, loss="mse", names=None):
    """Eq. 2 averaged over the T tasks: mean_t L_query_t(phi_t(theta))."""
    phi = adapt(model, theta, batch["support_x"], batch["support_y"], alpha, steps,
                first_order, loss, names)
    return task_losses(model(phi, batch["query_x"]), batch["query_y"], loss).mean()


def meta_gradient(model, theta, batch, alpha, steps=1, first_order=False, loss="mse"):
    """grad_theta of the meta-objective (Eq. 3's direction), a dict name -> Tensor.

    first_order=False: exact, second order (backward through Eq. 1's gradient).
    first_order=True:  FOMAML, grad L_query evaluated at phi.
    """
    value = meta_objective(model, theta, batch, alpha, steps, first_order, loss)
    # retain_graph=False: each activation is freed as soon as the backward walk is past it
    return OrderedDict(zip(theta, grad(value, list(theta.values()), retain_graph=False)))


def meta_gradient_loop(model, theta, batch, alpha, steps=1, first_order=False, loss="mse"):
    """The same meta-gradient, one task at a time (clearest to read; slow)."""
    T = check_batch(batch)
    total = OrderedDict((k, 0.0) for k in theta)
    for t in range(T):
        xs, ys = batch["support_x"][t], batch["support_y"][t]
        xq, yq = batch["query_x"][t], batch["query_y"][t]

        def one_task_loss(params, x, y):        # unbatched params, task axis of length 1
            pred = model(params, x)
            return task_losses(pred.reshape((1,) + pred.shape), y.reshape((1,) + y.shape), loss)[0]

        phi = theta
        for _ in range(steps):
            phi = inner_update(phi, lambda p: one_task_loss(p, xs, ys), alpha, first_order)
        g = grad(one_task_loss(phi, xq, yq), list(theta.values()))
        for k, gk in zip(theta, g):
            total[k] = total[k] + gk * (1.0 / T)
    return total


def meta_gradient_split(model, theta, batch, alpha, steps=1, loss="mse"):
    """The meta-gradient as (first_order_part, hessian_part), whose sum is exact.

    Reverse mode through k steps of Eq. 1, written out. With phi_0 = theta,
    phi_{j+1} = phi_j - alpha * g_support(phi_j), each step's Jacobian is
    I - alpha * H_support(phi_j), so the meta-gradient is

        (I - alpha H_0) (I - alpha H_1) ... (I - alpha H_{k-1}) g,  g = grad L_query(phi_k).

    first_order_part = g                        (what FOMAML uses)
    hessian_part     = the rest, accumulated as sum_j -alpha * H_j @ v_{j+1},
                       v_k = g, v_j = v_{j+1} - alpha * H_j @ v_{j+1}.
    For k = 1 the Hessian part is exactly -alpha * H_support(theta) @ g; for
    k > 1 it is by definition full - first_order (the products of Hessians
    included). Every H @ v is a Hessian-vector product by double backward
    (sm.hvp), per task, averaged over tasks. Scalar alpha only.
    """
    T = check_batch(batch)
    x, y = batch["support_x"], batch["support_y"]
    names = list(theta)

    def support_loss(*params):                 # sum over tasks of mean over points
        return task_losses(model(OrderedDict(zip(names, params)), x), y, loss).sum()

    # forward: the inner trajectory phi_0..phi_k (values only)
    with enable_grad():
        phis = [nn.batched(OrderedDict((k, Tensor(v.data, requires_grad=True))
                                       for k, v in theta.items()), T)]
        for _ in range(steps):
            phis.append(inner_update(phis[-1], lambda p: support_loss(*p.values()), alpha,
                                     first_order=True))
        phis = [[Tensor(p.data, requires_grad=True) for p in phi.values()] for phi in phis]
        query = task_losses(model(OrderedDict(zip(names, phis[-1])), batch["query_x"]),
                            batch["query_y"], loss).mean()
        g = grad(query, phis[-1])                     # (T, ...) each: (1/T) grad L_query_t
    # backward: v_j = (I - alpha H_j) v_{j+1}, the Hessian terms collected on the side
    v, hess = list(g), [0.0] * len(names)
    for j in reversed(range(steps)):
        _, Hv = hvp(support_loss, phis[j], v)          # per task: H_support_t(phi_j) @ v_t
        hess = [h - alpha * hv for h, hv in zip(hess, Hv)]
        v = [vi - alpha * hv for vi, hv in zip(v, Hv)]
    # the task copies share theta: sum their gradients (the 1/T is already in g)
    first = OrderedDict((k, gi.sum(axis=0)) for k, gi in zip(names, g))
    second = OrderedDict((k, (h if isinstance(h, Tensor) else gi * 0.0).sum(axis=0))
                         for k, h, gi in zip(names, hess, g))
    return first, second


# ---------------------------------------------------------------------------
# The learner the training loop drives
# ---------------------------------------------------------------------------
def _fresh(theta):
    """Leaf copies, so evaluation never attaches graphs to the caller's theta."""
    return OrderedDict((k, Tensor(v.data, requires_grad=True)) for k, v in theta.items())


def _select_support(batch, k_support, who):
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


def evaluate_adapted(model, theta, batch, alpha, inner_steps, loss, names=None, who="maml"):
    """Adapt every task with `inner_steps` SGD steps, then score its query set.

    Returns dict name -> (T,) backend array. Regression: "mse" after
    inner_steps, plus "mse_step<j>" for j in {0, 1, inner_steps, 10}, and
    "baseline/zero" (predict 0). Classification: "accuracy", "loss" and
    "accuracy_step0". The gradients here are first order: adaptation at
    test time needs no meta-gradient, and phi's values are the same.
    """
    inner_steps = int(inner_steps)
    if inner_steps < 0:
        raise ValueError(f"{who}: inner_steps must be >= 0, got {inner_steps}")
    regression = loss == "mse"
    record = sorted({0, 1, inner_steps, 10}) if regression else sorted({0, inner_steps})
    record = [j for j in record if j <= max(inner_steps, 10 if regression else 0)]
    x, y = batch["support_x"], batch["support_y"]
    xq, yq = batch["query_x"], batch["query_y"]
    out = {}
    with enable_grad():
        phi = nn.batched(_fresh(theta), x.shape[0])

        def support_loss(params):
            return task_losses(model(params, x), y, loss).sum()

        for j in range(record[-1] + 1):
            if j:
                phi = inner_update(phi, support_loss, alpha, first_order=True, names=names)
            if j in record:
                with no_grad():
                    pred = model(phi, xq)
                    if regression:
                        out[f"mse_step{j}"] = task_losses(pred, yq, "mse").data
                    else:
                        acc = task_accuracy(pred, yq).data
                        out["accuracy_step0" if j == 0 else "accuracy"] = acc
                        if j == inner_steps:
                            out["loss"] = task_losses(pred, yq, loss).data
                            out["accuracy"] = acc
    if regression:
        out["mse"] = out[f"mse_step{inner_steps}"]
        yq_t = Tensor(yq)
        out["baseline/zero"] = (yq_t * yq_t).reshape(yq.shape[0], -1).mean(axis=1).data
    return out


class MAML(MetaLearner):
    """MAML (first_order=False) or FOMAML (first_order=True) for any functional model.

    loss "mse" (regression: metric mse) or "cross_entropy" (classification:
    metric accuracy).
    """

    name = "maml"

    def __init__(self, model, inner_lr=0.01, inner_steps=1, first_order=False, loss="mse",
                 eval_inner_steps=None):
        if loss not in LOSSES:
            raise ValueError(f"maml: unknown loss {loss!r}; choose one of {LOSSES}")
        if int(inner_steps) < 1:
            raise ValueError(f"maml: inner_steps must be >= 1, got {inner_steps}")
        if not float(inner_lr) >= 0:
            raise ValueError(f"maml: inner_lr must be >= 0, got {inner_lr}")
        self.model, self.loss = model, loss
        self.inner_lr, self.inner_steps = float(inner_lr), int(inner_steps)
        self.first_order = bool(first_order)
        self.eval_inner_steps = int(eval_inner_steps if eval_inner_steps is not None
                                    else inner_steps)
        self.name = "fomaml" if self.first_order else "maml"
        self.metric = "mse" if loss == "mse" else "accuracy"
        self.higher_is_better = loss != "mse"
        self.adapt_names = None            # None: adapt every parameter (ANIL: the head)

    def config(self):
        return {"model": self.model.config(), "inner_lr": self.inner_lr,
                "inner_steps": self.inner_steps, "first_order": self.first_order,
                "loss": self.loss, "eval_inner_steps": self.eval_inner_steps}

    def init(self, seed):
        return self.model.init(seed)

    def meta_step(self, theta, batch):
        check_batch(batch, self.name)
        with enable_grad():
            value = meta_objective(self.model, theta, batch, self.inner_lr, self.inner_steps,
                                   self.first_order, self.loss, self.adapt_names)
            check_finite(value, "meta-loss (mean query loss after adaptation)", self.name)
            grads = OrderedDict(zip(theta, grad(value, list(theta.values()))))
        loss = Tensor(value.data)
        return loss, grads, {"query_loss": loss}

    def evaluate(self, theta, batch, inner_steps=None, k_support=None, **options):
        check_batch(batch, self.name)
        batch = _select_support(batch, k_support, self.name)
        steps = self.eval_inner_steps if inner_steps is None else inner_steps
        return evaluate_adapted(self.model, theta, batch, self.inner_lr, steps, self.loss,
                                self.adapt_names, who=self.name)

    def _inner_rates(self, theta):
        """(theta, alpha): MAML's alpha is one number; Meta-SGD overrides this."""
        return theta, self.inner_lr

    def predict_adapted(self, theta, batch, x, steps):
        """Predictions at x after `steps` first-order SGD steps on each task's support set.

        For figures (Finn et al. 2017, Fig. 2): x (T, M, d) -> (T, M, d_out).
        """
        theta, alpha = self._inner_rates(theta)
        with enable_grad():
            theta = _fresh(theta)
            if steps:
                phi = adapt(self.model, theta, batch["support_x"], batch["support_y"], alpha,
                            steps, first_order=True, loss=self.loss, names=self.adapt_names)
            else:
                phi = nn.batched(theta, x.shape[0])
        with no_grad():
            return self.model(phi, x)


# ---------------------------------------------------------------------------
# Registry hooks
# ---------------------------------------------------------------------------
def model_and_loss(config):
    """The model of config["model"] and the loss its task needs."""
    model = nn.build_model(config["model"])
    task = config.get("task", {}).get("name", "sinusoid")
    return model, ("cross_entropy" if task in CLASSIFICATION else "mse")


def make_learner(config):
    """MAML for config["algorithm"] == "maml", FOMAML for "fomaml"."""
    algo = dict(config.get("algo", {}))
    if config.get("algorithm") == "fomaml":
        algo["first_order"] = True
    model, loss = model_and_loss(config)
    return MAML(model, loss=algo.pop("loss", loss), **algo)


def base_config(task_name):
    """Task, model and outer-loop settings shared by MAML, FOMAML, Meta-SGD and ANIL."""
    if task_name == "sinusoid":
        # Finn et al. Sec. 5.1: MLP 1-40-40-1 ReLU, K = 10, alpha = 0.01, one step,
        # 25 tasks per meta-batch, Adam. The paper ran 70,000 meta-steps; 15,000
        # fit a few CPU minutes here (about 4-10 ms a step on 2 cores).
        return {"task": {"name": "sinusoid", "k_support": 10, "k_query": 10},
                "model": {"model": "mlp", "sizes": [1, 40, 40, 1], "activation": "relu"},
                "algo": {"inner_lr": 0.01, "inner_steps": 1, "eval_inner_steps": 10},
                "optimizer": {"name": "adam", "lr": 1e-3},
                "steps": 15000, "meta_batch": 25, "eval_every": 1000}
    if task_name in CLASSIFICATION:
        # Finn et al. Sec. 5.2 (5-way Omniglot): alpha = 0.4, one inner step when
        # training, 32 tasks a meta-batch; here 4 tasks, to fit a CPU. Three steps
        # at evaluation is our default (change it with eval's inner-steps option).
        return {"task": {"name": task_name, "n_way": 5, "k_shot": 1, "n_query": 15},
                "model": {"model": "conv4", "in_channels": 1, "hidden": 64, "n_classes": 5,
                          "image_size": 28, "blocks": 4},
                "algo": {"inner_lr": 0.4, "inner_steps": 1, "eval_inner_steps": 3},
                "optimizer": {"name": "adam", "lr": 1e-3},
                "steps": 2000, "meta_batch": 4, "eval_every": 500}
    raise ValueError(f"no default config for task {task_name!r}; choose 'sinusoid' or one "
                     f"of {CLASSIFICATION}")


def default_config(task_name):
    cfg = base_config(task_name)
    cfg["algo"]["first_order"] = False
    return cfg


def extra_baselines(config, learner, sampler, **options):
    """`scratchmeta eval` hook: Finn et al.'s pretrained baseline (sinusoid only)."""
    from .pretrained import extra_baselines as pretrained_baselines
    return pretrained_baselines(config, learner, sampler, **options)
