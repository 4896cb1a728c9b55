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

`reptile_direction_loop` is Algorithm 2 one task at a time;
`reptile_direction` runs the inner steps on every task's support set at once
with batched parameters (inner_loop.adapt). They give the same direction.
"""
from collections import OrderedDict

from ..tensor import Tensor, enable_grad, no_grad
from .common import check_batch, check_finite, fresh, one_task_loss, task_losses
from .inner_loop import AdaptingLearner, adapt, inner_update, make_adapting_learner


def reptile_direction_loop(model, theta, batch, inner_lr, inner_steps, loss="mse"):
    """theta - (1/n) sum_i W_i, one task i at a time (Algorithm 2 as printed; slow)."""
    T = check_batch(batch, "reptile")
    total = OrderedDict((k, 0.0) for k in theta)
    for t in range(T):
        x, y = batch["support_x"][t], batch["support_y"][t]
        with enable_grad():
            W = fresh(theta)
            for _ in range(inner_steps):         # W_i = SGD(L_tau_i, theta, k)
                W = inner_update(W, lambda p: one_task_loss(model, p, x, y, loss), inner_lr,
                                 first_order=True)
        with no_grad():
            for k in theta:
                total[k] = total[k] + (theta[k] - W[k]) * (1.0 / T)
    return OrderedDict((k, Tensor(v.data)) for k, v in total.items())


def reptile_direction(model, theta, batch, inner_lr, inner_steps, loss="mse"):
    """theta - mean_i W_i, and W (batched (T, ...)): Algorithm 2's update, negated, all tasks at once."""
    with enable_grad():
        W = adapt(model, theta, batch["support_x"], batch["support_y"], inner_lr, inner_steps,
                  first_order=True, loss=loss)
    with no_grad():
        direction = OrderedDict((k, Tensor((theta[k] - W[k].mean(axis=0)).data)) for k in theta)
    return direction, W


class Reptile(AdaptingLearner):
    """Reptile with k inner SGD steps of size inner_lr on the support set."""

    name = "reptile"
    zero_inner_lr_ok = False      # alpha = 0 would leave W = theta: no update at all

    def __init__(self, model, inner_lr=0.02, inner_steps=5, loss="mse", eval_inner_steps=None):
        super().__init__(model, inner_lr, inner_steps, loss, eval_inner_steps)

    def meta_step(self, theta, batch):
        check_batch(batch, self.name)
        direction, W = reptile_direction(self.model, theta, batch, self.inner_lr,
                                         self.inner_steps, self.loss)
        with no_grad():                 # query loss after adaptation: reported, not used
            query = task_losses(self.model(W, batch["query_x"]), batch["query_y"], self.loss).mean()
        check_finite(query, "query loss after the inner steps", self.name)
        return query, direction, {"query_loss": query}


def make_learner(config):
    return make_adapting_learner(Reptile, config)
