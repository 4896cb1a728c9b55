"""The inner loop: adaptation by gradient steps on a task's support set.

Finn, Abbeel & Levine 2017, arXiv:1703.03400v3, Eq. 1:

    phi = theta - alpha * grad_theta L_support(theta)

MAML, FOMAML, Meta-SGD and ANIL differentiate through it (maml.py), Reptile
moves theta towards its result (reptile.py), and every gradient-based
learner, the pretrained baseline included, adapts with it at test time
(evaluate_adapted).

Batching: theta is copied once per task, nn.batched(theta, T) -> (T, ...),
and the per-task losses are summed. Task t's loss depends only on its own
copy, so ONE sm.grad of the sum gives every task's own inner gradient.
"""
from collections import OrderedDict

from .. import nn
from ..tensor import Tensor, enable_grad, grad, no_grad
from .base import MetaLearner
from .common import (LOSSES, accuracy, check_batch, fresh, model_and_loss, select_support,
                     task_losses)

REDUCTIONS = ("mean", "sum/k")


def support_losses(pred, y, loss="mse", reduction="mean"):
    """The inner loop's loss on each task's support set, shape (T,).

    "mean":  mean over the support points (task_losses).
    "sum/k": Finn et al.'s code for classification: the cross-entropy summed
             over the N*K support points and divided by K (cbfinn/maml
             utils.py xent, summed by tf.gradients in maml.py), which is
             N times the mean. Its inner step is N times the "mean" one at
             the same alpha: alpha = 0.4 there is alpha = 0.4 * N here.
    """
    losses = task_losses(pred, y, loss)
    if reduction == "mean":
        return losses
    if reduction == "sum/k":
        if loss != "cross_entropy":
            raise ValueError(f"inner reduction 'sum/k' is cross-entropy's (Finn et al.'s "
                             f"classifier); loss {loss!r} takes 'mean'")
        return losses * pred.shape[-1]          # sum_i CE_i / K = N * mean_i CE_i (N*K points)
    raise ValueError(f"unknown inner reduction {reduction!r}; choose one of {REDUCTIONS}")


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


def adapt(model, theta, x, y, alpha, steps, first_order=False, loss="mse", names=None,
          reduction="mean"):
    """`steps` inner updates (Eq. 1) for every task at once -> phi, batched (T, ...).

    x, y: support set with a leading task axis. The support loss summed over
    tasks has block-diagonal structure, so its gradient w.r.t. the batched
    parameters is every task's own gradient.
    """
    phi = nn.batched(theta, x.shape[0])

    def support_loss(params):                  # sum over tasks of each task's support loss
        return support_losses(model(params, x), y, loss, reduction).sum()

    for _ in range(steps):
        phi = inner_update(phi, support_loss, alpha, first_order, names)
    return phi


def evaluate_adapted(model, theta, batch, alpha, inner_steps, loss, names=None, who="maml",
                     reduction="mean"):
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
        phi = nn.batched(fresh(theta), x.shape[0])

        def support_loss(params):
            return support_losses(model(params, x), y, loss, reduction).sum()

        for j in range(record[-1] + 1):
            if j:
                phi = inner_update(phi, support_loss, alpha, first_order=True, names=names)
            if j in record:
                with no_grad():
                    pred = model(phi, xq)
                    if regression:
                        out[f"mse_step{j}"] = task_losses(pred, yq, "mse").data
                    else:
                        acc = accuracy(pred, yq).data
                        out["accuracy_step0" if j == 0 else "accuracy"] = acc
                        if j == inner_steps:
                            out["loss"] = task_losses(pred, yq, loss).data
                            out["accuracy"] = acc
    if regression:
        out["mse"] = out[f"mse_step{inner_steps}"]
        yq_t = Tensor(yq)
        out["baseline/zero"] = (yq_t * yq_t).reshape(yq.shape[0], -1).mean(axis=1).data
    return out


def predict_adapted(model, theta, batch, x, alpha, steps, loss="mse", names=None,
                    reduction="mean"):
    """Predictions at x after `steps` first-order SGD steps on each task's support set.

    For figures (Finn et al. 2017, Fig. 2): x (T, M, d) -> (T, M, d_out).
    """
    with enable_grad():
        theta = fresh(theta)
        if steps:
            phi = adapt(model, theta, batch["support_x"], batch["support_y"], alpha, steps,
                        first_order=True, loss=loss, names=names, reduction=reduction)
        else:
            phi = nn.batched(theta, x.shape[0])
    with no_grad():
        return model(phi, x)


class AdaptingLearner(MetaLearner):
    """What MAML, its variants and Reptile share: a model adapted by `inner_steps` of Eq. 1.

    Subclasses write meta_step (how theta learns from the adapted phi).
    loss "mse" (regression: metric mse) or "cross_entropy" (classification:
    metric accuracy). eval_inner_steps: steps at test time (default inner_steps).
    inner_reduction: the support loss's scale in Eq. 1, "mean" or "sum/k"
    (support_losses). A model with `inner_names()` (nn.MAMLConv4: every
    parameter but batch norm's offsets) has only those adapted.
    """

    adapt_names = None            # None: adapt every parameter (ANIL: the head)
    zero_inner_lr_ok = True       # alpha = 0 allowed (MAML with alpha = 0 is FOMAML is pretraining)

    def __init__(self, model, inner_lr, inner_steps, loss="mse", eval_inner_steps=None,
                 inner_reduction="mean"):
        if loss not in LOSSES:
            raise ValueError(f"{self.name}: unknown loss {loss!r}; choose one of {LOSSES}")
        if inner_reduction not in REDUCTIONS:
            raise ValueError(f"{self.name}: unknown inner_reduction {inner_reduction!r}; "
                             f"choose one of {REDUCTIONS}")
        if inner_reduction == "sum/k" and loss != "cross_entropy":
            raise ValueError(f"{self.name}: inner_reduction 'sum/k' is for classification "
                             f"(cross-entropy), not loss {loss!r}")
        if int(inner_steps) < 1:
            raise ValueError(f"{self.name}: inner_steps must be >= 1, got {inner_steps}")
        lr = float(inner_lr)
        if not (lr > 0 or (lr == 0 and self.zero_inner_lr_ok)):          # NaN fails both
            raise ValueError(f"{self.name}: inner_lr must be "
                             f"{'>= 0' if self.zero_inner_lr_ok else '> 0'}, got {inner_lr}")
        self.model, self.loss = model, loss
        self.inner_lr, self.inner_steps = float(inner_lr), int(inner_steps)
        self.eval_inner_steps = int(eval_inner_steps if eval_inner_steps is not None
                                    else inner_steps)
        self.metric = "mse" if loss == "mse" else "accuracy"
        self.higher_is_better = loss != "mse"
        self.inner_reduction = inner_reduction
        if hasattr(model, "inner_names"):         # parameters the inner loop may adapt
            self.adapt_names = tuple(model.inner_names())

    def config(self):
        return {"model": self.model.config(), "inner_lr": self.inner_lr,
                "inner_steps": self.inner_steps, "loss": self.loss,
                "eval_inner_steps": self.eval_inner_steps,
                "inner_reduction": self.inner_reduction}

    def init(self, seed):
        return self.model.init(seed)

    def inner_rates(self, params):
        """(theta, alpha) of Eq. 1 from the meta-parameters: here alpha is one number."""
        return params, self.inner_lr

    def evaluate(self, params, batch, inner_steps=None, k_support=None, **options):
        check_batch(batch, self.name)
        batch = select_support(batch, k_support, self.name)
        theta, alpha = self.inner_rates(params)
        steps = self.eval_inner_steps if inner_steps is None else inner_steps
        return evaluate_adapted(self.model, theta, batch, alpha, steps, self.loss,
                                self.adapt_names, who=self.name, reduction=self.inner_reduction)

    def predict_adapted(self, params, batch, x, steps):
        """Predictions at x (T, M, d) after `steps` first-order SGD steps on each support set."""
        theta, alpha = self.inner_rates(params)
        return predict_adapted(self.model, theta, batch, x, alpha, steps, self.loss,
                               self.adapt_names, self.inner_reduction)


def make_adapting_learner(cls, config, **fixed):
    """cls(model, loss=..., **config["algo"], **fixed): the loss follows the task unless set."""
    model, loss = model_and_loss(config)
    algo = dict(config.get("algo", {}), **fixed)
    return cls(model, loss=algo.pop("loss", loss), **algo)
