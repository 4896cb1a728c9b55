"""MAML and first-order MAML: one task at a time, then vectorised over the task batch.

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

`meta_gradient_loop` is Algorithm 2 as printed, one task at a time.
`meta_gradient` is the same number with the tasks batched (inner_loop.py):
the meta-loss is the mean over tasks of the query loss, and the broadcast's
backward pass sums the task copies' gradients back onto theta. It is the one
meta-gradient routine: MAML, FOMAML, Meta-SGD and ANIL all step along it.
The model contract for the batched path is in model_contract.py and
docs/your_model.md.
"""
from collections import OrderedDict

from .. import nn
from ..checks import hvp
from ..tensor import Tensor, enable_grad, grad
from .common import check_batch, check_finite, one_task_loss, task_losses
from .inner_loop import AdaptingLearner, adapt, inner_update, make_adapting_learner
from .model_contract import check_batched_model
from .pretrained import extra_baselines        # noqa: F401  (scratchmeta eval's hook)


# ---------------------------------------------------------------------------
# One task at a time: the paper's Algorithm 2, line by line
# ---------------------------------------------------------------------------
def meta_gradient_loop(model, theta, batch, alpha, steps=1, first_order=False, loss="mse"):
    """grad_theta of mean_i L_query_i(phi_i), one task i at a time (clearest to read; slow).

    model(params, x) takes unbatched params and one task's x (n, ...).
    """
    T = check_batch(batch)
    total = OrderedDict((k, 0.0) for k in theta)
    for t in range(T):
        xs, ys = batch["support_x"][t], batch["support_y"][t]
        xq, yq = batch["query_x"][t], batch["query_y"][t]
        phi = theta                                                   # Eq. 1, `steps` times
        for _ in range(steps):
            phi = inner_update(phi, lambda p: one_task_loss(model, p, xs, ys, loss), alpha,
                               first_order)
        g = grad(one_task_loss(model, phi, xq, yq, loss), list(theta.values()))   # task t's term
        for k, gk in zip(theta, g):
            total[k] = total[k] + gk * (1.0 / T)
    return total


# ---------------------------------------------------------------------------
# All tasks at once: the same numbers, batched over the task axis
# ---------------------------------------------------------------------------
def meta_objective(model, theta, batch, alpha, steps, first_order=False, loss="mse", names=None,
                   reduction="mean"):
    """Eq. 2 averaged over the T tasks: mean_t L_query_t(phi_t(theta)).

    reduction: the support loss's scale in the inner step (inner_loop.support_losses).
    """
    phi = adapt(model, theta, batch["support_x"], batch["support_y"], alpha, steps,
                first_order, loss, names, reduction)
    return task_losses(model(phi, batch["query_x"]), batch["query_y"], loss).mean()


def meta_loss_and_gradient(model, theta, batch, alpha, steps=1, first_order=False, loss="mse",
                           names=None, wrt=None, who="maml", reduction="mean"):
    """(meta-loss, meta-gradient): the one routine of MAML, FOMAML, Meta-SGD and ANIL.

    theta: the parameters the model sees; alpha: a number or a dict of
    per-parameter rates (Meta-SGD); names: the parameters the inner loop
    adapts (ANIL: the head); wrt: the dict to differentiate with respect to
    (default theta; Meta-SGD passes theta and its rates together).
    The model contract is checked before any work (model_contract.py).
    The meta-loss comes back detached; a NaN or inf one raises
    FloatingPointError before the backward pass.
    """
    check_batch(batch, who)
    check_batched_model(model, theta, batch, loss, who)
    wrt = theta if wrt is None else wrt
    wanted = [k for k, v in wrt.items() if v.requires_grad]
    with enable_grad():
        value = meta_objective(model, theta, batch, alpha, steps, first_order, loss, names,
                               reduction)
        check_finite(value, "meta-loss (mean query loss after adaptation)", who)
        # retain_graph=False: each activation is freed as soon as the backward walk is past it
        grads = grad(value, [wrt[k] for k in wanted], retain_graph=False)
    return Tensor(value.data), OrderedDict(zip(wanted, grads))


def meta_gradient(model, theta, batch, alpha, steps=1, first_order=False, loss="mse"):
    """grad_theta of the meta-objective (Eq. 3's direction), a dict name -> Tensor.

    first_order=False: exact, second order (backward through Eq. 1's gradient).
    first_order=True:  FOMAML, grad L_query evaluated at phi.
    Equal to meta_gradient_loop's result (tests/test_maml.py).
    """
    return meta_loss_and_gradient(model, theta, batch, alpha, steps, first_order, loss)[1]


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
    check_batched_model(model, theta, batch, loss, "meta_gradient_split")
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
class MAML(AdaptingLearner):
    """MAML (first_order=False) or FOMAML (first_order=True) for any functional model.

    loss "mse" (regression: metric mse) or "cross_entropy" (classification:
    metric accuracy). Meta-SGD and ANIL are subclasses that change only
    inner_rates (the alpha of Eq. 1) or adapt_names (what Eq. 1 adapts).
    """

    name = "maml"

    def __init__(self, model, inner_lr=0.01, inner_steps=1, first_order=False, loss="mse",
                 eval_inner_steps=None, inner_reduction="mean"):
        super().__init__(model, inner_lr, inner_steps, loss, eval_inner_steps, inner_reduction)
        self.first_order = bool(first_order)
        if type(self) is MAML:
            self.name = "fomaml" if self.first_order else "maml"

    def config(self):
        return dict(super().config(), first_order=self.first_order)

    def meta_step(self, params, batch):
        theta, alpha = self.inner_rates(params)
        loss, grads = meta_loss_and_gradient(self.model, theta, batch, alpha, self.inner_steps,
                                             self.first_order, self.loss, self.adapt_names,
                                             wrt=params, who=self.name,
                                             reduction=self.inner_reduction)
        return loss, grads, {"query_loss": loss}


def make_learner(config):
    """MAML for config["algorithm"] == "maml", FOMAML for "fomaml"."""
    fixed = {"first_order": True} if config.get("algorithm") == "fomaml" else {}
    return make_adapting_learner(MAML, config, **fixed)
