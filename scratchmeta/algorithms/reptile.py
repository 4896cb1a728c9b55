"""Reptile: move the initialisation towards each task's adapted weights.

Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms",
arXiv:1803.02999v3, Algorithm 1 (one task) and Algorithm 2 (a batch of n):

    for each task i:  W_i = SGD(L_tau_i, theta, k)        k inner steps of Eq. 1
    theta <- theta + eps * (1/n) sum_i (W_i - theta)

meta_step returns grads = theta - mean_i W_i, so the outer optimiser
SGD(lr=eps) performs exactly theta <- theta + eps * (mean_i W_i - theta).
Nichol et al. (Sec. 3) note that theta - W can also be fed to Adam; the
config's optimizer entry chooses. No second derivatives anywhere: the inner
gradients are constants (first_order=True), and nothing is differentiated
through the inner loop.

The inner steps run on each task's support set, all tasks at once with
batched parameters (maml.adapt).
"""
from collections import OrderedDict

from ..tensor import Tensor, enable_grad, no_grad
from .base import MetaLearner
from .maml import (MAML, LOSSES, adapt, check_batch, check_finite, evaluate_adapted, model_and_loss,
                   base_config, task_losses, _select_support)


def reptile_direction(model, theta, batch, inner_lr, inner_steps, loss="mse"):
    """theta - mean_i W_i, and W (batched (T, ...)): Algorithm 2's update, negated."""
    with enable_grad():
        W = adapt(model, theta, batch["support_x"], batch["support_y"], inner_lr, inner_steps,
                  first_order=True, loss=loss)
    with no_grad():
        direction = OrderedDict((k, Tensor((theta[k] - W[k].mean(axis=0)).data)) for k in theta)
    return direction, W


class Reptile(MetaLearner):
    """Reptile with k inner SGD steps of size inner_lr on the support set."""

    name = "reptile"

    def __init__(self, model, inner_lr=0.02, inner_steps=5, loss="mse", eval_inner_steps=None):
        if loss not in LOSSES:
            raise ValueError(f"reptile: unknown loss {loss!r}; choose one of {LOSSES}")
        if int(inner_steps) < 1:
            raise ValueError(f"reptile: inner_steps must be >= 1, got {inner_steps}")
        if not float(inner_lr) > 0:
            raise ValueError(f"reptile: inner_lr must be > 0, got {inner_lr}")
        self.model, self.loss = model, loss
        self.inner_lr, self.inner_steps = float(inner_lr), int(inner_steps)
        self.eval_inner_steps = int(eval_inner_steps if eval_inner_steps is not None
                                    else inner_steps)
        self.metric = "mse" if loss == "mse" else "accuracy"
        self.higher_is_better = loss != "mse"

    def config(self):
        return {"model": self.model.config(), "inner_lr": self.inner_lr,
                "inner_steps": self.inner_steps, "loss": self.loss,
                "eval_inner_steps": self.eval_inner_steps}

    def init(self, seed):
        return self.model.init(seed)

    def meta_step(self, theta, batch):
        check_batch(batch, self.name)
        direction, W = reptile_direction(self.model, theta, batch, self.inner_lr,
                                         self.inner_steps, self.loss)
        with no_grad():                 # query loss after adaptation: reported, not used
            query = task_losses(self.model(W, batch["query_x"]), batch["query_y"], self.loss).mean()
        check_finite(query, "query loss after the inner steps", self.name)
        return query, direction, {"query_loss": query}

    def evaluate(self, theta, batch, inner_steps=None, k_support=None, **options):
        check_batch(batch, self.name)
        batch = _select_support(batch, k_support, self.name)
        steps = self.eval_inner_steps if inner_steps is None else inner_steps
        return evaluate_adapted(self.model, theta, batch, self.inner_lr, steps, self.loss,
                                who=self.name)


Reptile.predict_adapted = MAML.predict_adapted
Reptile._inner_rates = MAML._inner_rates
Reptile.adapt_names = None


def make_learner(config):
    model, loss = model_and_loss(config)
    algo = dict(config.get("algo", {}))
    return Reptile(model, loss=algo.pop("loss", loss), **algo)


def default_config(task_name):
    """Outer step: SGD with lr = eps, so the update is Algorithm 2's literally.

    Sinusoid: inner_lr 0.02 and 5 steps (one epoch of 10-point minibatches
    over 50 points) follow the sine-wave demo published with the paper
    (gist joschu/f503500cda64f2ce87c8288906b09e2d, linked from
    openai.com/research/reptile); it uses one task per step and eps = 0.1
    annealed to 0. Here 25 tasks a step, averaged, and a fixed eps = 1
    (theta <- mean_i W_i): after 2,000 steps it reached a lower 10-step MSE
    than eps = 0.1 or Adam(1e-3) on theta - W (measured; see docs/reptile.md).
    Classification (Nichol et al. Table 3, Omniglot): inner Adam there; plain
    SGD here with inner_lr 0.4 as MAML, 5 steps, eps = 1.
    """
    cfg = base_config(task_name)
    if task_name == "sinusoid":
        cfg["algo"] = {"inner_lr": 0.02, "inner_steps": 5, "eval_inner_steps": 10}
        cfg["optimizer"] = {"name": "sgd", "lr": 1.0}
    else:
        cfg["algo"] = {"inner_lr": 0.4, "inner_steps": 5, "eval_inner_steps": 5}
        cfg["optimizer"] = {"name": "sgd", "lr": 1.0}
    return cfg
