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

The reference code (openai/supervised-reptile) adapts differently from
Eq. 1: `inner_optimizer="adam"` runs Adam with beta1 = 0 (models.py
DEFAULT_OPTIMIZER) on minibatches of `inner_batch` support points, each
task's points reshuffled every epoch (reptile.py _mini_batches), and
`adapt_adam` does it for every task at once. Adam's moments start at zero
for each task; the reference keeps them across tasks (docs/recipes.md).
"""
from collections import OrderedDict

from .. import backend, nn
from ..tensor import Tensor, enable_grad, grad, no_grad
from .common import (accuracy, check_batch, check_finite, fresh, one_task_loss, select_support,
                     task_losses)
from .inner_loop import AdaptingLearner, adapt, inner_update, make_adapting_learner

INNER_OPTIMIZERS = ("sgd", "adam")
ADAM_BETA2, ADAM_EPS = 0.999, 1e-8          # TensorFlow's AdamOptimizer defaults; beta1 = 0


def minibatch_indices(rng, n_tasks, n_points, batch_size, iters):
    """(iters, T, batch_size) support indices: each task's points in a fresh random order
    every epoch, consecutive batches, a batch running on into the next epoch
    (supervised-reptile reptile.py _mini_batches, replacement=False)."""
    epochs = max(1, -(-iters * batch_size // n_points))
    order = [backend.host.concatenate([rng.permutation(n_points) for _ in range(epochs)])
             for _ in range(n_tasks)]
    stream = backend.host.stack(order)[:, :iters * batch_size]        # (T, iters * B)
    return stream.reshape(n_tasks, iters, batch_size).transpose(1, 0, 2)


def adapt_adam(model, theta, x, y, lr, indices, loss="mse"):
    """W_i after len(indices) Adam steps (beta1 = 0) on minibatches of each task's support set.

    indices (iters, T, B) from minibatch_indices. With beta1 = 0, m = g, and
    W <- W - lr * g / (sqrt(v / (1 - beta2^t)) + eps),  v <- beta2 v + (1 - beta2) g^2.
    First order throughout: nothing is differentiated through these steps.
    """
    T = x.shape[0]
    rows = backend.asarray(backend.host.arange(T)[:, None])
    W = nn.batched(theta, T)
    W = OrderedDict((k, Tensor(v.data.copy(), requires_grad=True)) for k, v in W.items())
    v = {k: 0.0 for k in W}
    for t, idx in enumerate(indices, start=1):
        idx = backend.asarray(idx)
        xb, yb = x[rows, idx], y[rows, idx]                            # (T, B, ...)
        with enable_grad():
            g = grad(task_losses(model(W, xb), yb, loss).sum(), list(W.values()))
        with no_grad():
            new = OrderedDict()
            for (k, w), gk in zip(W.items(), g):
                v[k] = v[k] * ADAM_BETA2 + gk * gk * (1 - ADAM_BETA2)
                step = gk / ((v[k] * (1 / (1 - ADAM_BETA2 ** t))).sqrt() + ADAM_EPS)
                new[k] = Tensor((w - lr * step).data, requires_grad=True)
        W = new
    return W


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
    """Reptile with k inner steps of size inner_lr on the support set.

    inner_optimizer "sgd": full-batch SGD steps (Eq. 1); "adam": the reference
    code's Adam (beta1 = 0) on minibatches of inner_batch points (None: the
    whole support set), eval_inner_batch at test time. seed: the host RNG
    of the minibatch order (saved in checkpoints).
    """

    name = "reptile"
    zero_inner_lr_ok = False      # alpha = 0 would leave W = theta: no update at all

    def __init__(self, model, inner_lr=0.02, inner_steps=5, loss="mse", eval_inner_steps=None,
                 inner_optimizer="sgd", inner_batch=None, eval_inner_batch=None, seed=0):
        super().__init__(model, inner_lr, inner_steps, loss, eval_inner_steps)
        if inner_optimizer not in INNER_OPTIMIZERS:
            raise ValueError(f"reptile: unknown inner_optimizer {inner_optimizer!r}; "
                             f"choose one of {INNER_OPTIMIZERS}")
        for name, b in (("inner_batch", inner_batch), ("eval_inner_batch", eval_inner_batch)):
            if b is not None and (isinstance(b, bool) or int(b) != b or b < 1):
                raise ValueError(f"reptile: {name} must be a positive integer or None, got {b!r}")
        if inner_optimizer == "sgd" and (inner_batch, eval_inner_batch) != (None, None):
            raise ValueError("reptile: inner_batch and eval_inner_batch go with "
                             "inner_optimizer='adam' (SGD steps use the whole support set)")
        self.inner_optimizer = inner_optimizer
        self.inner_batch = None if inner_batch is None else int(inner_batch)
        self.eval_inner_batch = None if eval_inner_batch is None else int(eval_inner_batch)
        self.seed = int(seed)
        self._rng = backend.host.random.default_rng(self.seed)

    def config(self):
        return dict(super().config(), inner_optimizer=self.inner_optimizer,
                    inner_batch=self.inner_batch, eval_inner_batch=self.eval_inner_batch,
                    seed=self.seed)

    def state_dict(self):
        """The minibatch-order generator's state: checkpoints save it, so runs resume exactly."""
        return {"rng": self._rng.bit_generator.state}

    def load_state_dict(self, state):
        self._rng.bit_generator.state = state["rng"]

    def _adapt_adam(self, theta, x, y, steps, batch_size, rng):
        T, n = x.shape[:2]
        size = n if batch_size is None else batch_size
        if size > n:
            raise ValueError(f"reptile: minibatches of {size} points but the support sets hold "
                             f"only {n}")
        return adapt_adam(self.model, theta, x, y, self.inner_lr,
                          minibatch_indices(rng, T, n, size, steps), self.loss)

    def meta_step(self, theta, batch):
        check_batch(batch, self.name)
        if self.inner_optimizer == "sgd":
            direction, W = reptile_direction(self.model, theta, batch, self.inner_lr,
                                             self.inner_steps, self.loss)
        else:
            W = self._adapt_adam(theta, batch["support_x"], batch["support_y"],
                                 self.inner_steps, self.inner_batch, self._rng)
            with no_grad():
                direction = OrderedDict((k, Tensor((theta[k] - W[k].mean(axis=0)).data))
                                        for k in theta)
        with no_grad():                 # query loss after adaptation: reported, not used
            query = task_losses(self.model(W, batch["query_x"]), batch["query_y"], self.loss).mean()
        check_finite(query, "query loss after the inner steps", self.name)
        return query, direction, {"query_loss": query}

    def evaluate(self, params, batch, inner_steps=None, k_support=None, **options):
        if self.inner_optimizer == "sgd":
            return super().evaluate(params, batch, inner_steps, k_support, **options)
        check_batch(batch, self.name)
        batch = select_support(batch, k_support, self.name)
        steps = self.eval_inner_steps if inner_steps is None else int(inner_steps)
        if steps < 0:
            raise ValueError(f"reptile: inner_steps must be >= 0, got {steps}")
        theta = fresh(params)
        rng = backend.host.random.default_rng(self.seed + 1)     # test-time order: its own stream
        W = self._adapt_adam(theta, batch["support_x"], batch["support_y"], steps,
                             self.eval_inner_batch, rng)
        out = {}
        with no_grad():
            pred = self.model(W, batch["query_x"])
            losses = task_losses(pred, batch["query_y"], self.loss)
            if self.loss == "mse":
                out["mse"] = losses.data
            else:
                out["accuracy"] = accuracy(pred, batch["query_y"]).data
                out["loss"] = losses.data
                pred0 = self.model(nn.batched(theta, batch["query_x"].shape[0]), batch["query_x"])
                out["accuracy_step0"] = accuracy(pred0, batch["query_y"]).data
        return out


def make_learner(config):
    """Reptile from a config; algo's train_shots/train_queries are the sampler's, not the learner's."""
    algo = {k: v for k, v in config.get("algo", {}).items() if k not in ("train_shots", "train_queries")}
    return make_adapting_learner(Reptile, dict(config, algo=algo))
