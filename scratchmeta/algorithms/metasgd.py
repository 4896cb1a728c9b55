"""Meta-SGD: learn a learning rate for every parameter, jointly with theta.

Li, Zhou, Chen & Li 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot
Learning", arXiv:1707.09835v2, Eq. 3 and Algorithm 1:

    phi = theta - lr (.) grad L_support(theta)        (.) elementwise
    (theta, lr) <- (theta, lr) - beta * grad_(theta, lr) sum_i L_query_i(phi_i)

`lr` has one entry per entry of theta and is a meta-parameter like theta:
stored in the same dict under "lr/<name>", initialised to inner_lr, and
stepped by the same outer optimiser. d phi / d lr = -grad L_support, so its
meta-gradient needs no Hessian; theta's still does (second order, as MAML).
With learn_lr=False the rates stay at inner_lr and Meta-SGD is MAML.
"""
from collections import OrderedDict

from .. import backend
from ..tensor import Tensor, enable_grad, grad
from .maml import MAML, check_batch, check_finite, evaluate_adapted, meta_objective, \
    model_and_loss, base_config, _select_support

PREFIX = "lr/"


def split(params):
    """theta and the per-parameter rates, from one dict."""
    theta = OrderedDict((k, v) for k, v in params.items() if not k.startswith(PREFIX))
    lrs = OrderedDict((k[len(PREFIX):], v) for k, v in params.items() if k.startswith(PREFIX))
    return theta, lrs


class MetaSGD(MAML):
    """MAML whose scalar inner_lr becomes a learned tensor per parameter."""

    name = "metasgd"

    def __init__(self, model, inner_lr=0.01, inner_steps=1, first_order=False, loss="mse",
                 eval_inner_steps=None, learn_lr=True):
        super().__init__(model, inner_lr, inner_steps, first_order, loss, eval_inner_steps)
        self.name = "metasgd"
        self.learn_lr = bool(learn_lr)

    def config(self):
        return dict(super().config(), learn_lr=self.learn_lr)

    def _constant_lr(self, theta):
        # frozen: each rate is inner_lr, a constant (no gradient)
        return OrderedDict((k, Tensor(backend.asarray(backend.host.full(v.shape, self.inner_lr),
                                                      dtype=v.dtype))) for k, v in theta.items())

    def init(self, seed):
        theta = self.model.init(seed)
        if self.learn_lr:
            for k, v in list(self._constant_lr(theta).items()):
                theta[PREFIX + k] = Tensor(v.data, requires_grad=True)
        return theta

    def _inner_rates(self, params):
        return self.rates(params)

    def rates(self, params):
        theta, lrs = split(params)
        return theta, (lrs if self.learn_lr else self._constant_lr(theta))

    def meta_step(self, params, batch):
        check_batch(batch, self.name)
        theta, lrs = self.rates(params)
        with enable_grad():
            value = meta_objective(self.model, theta, batch, lrs, self.inner_steps,
                                   self.first_order, self.loss)
            check_finite(value, "meta-loss (mean query loss after adaptation)", self.name)
            wanted = [k for k, v in params.items() if v.requires_grad]
            grads = OrderedDict(zip(wanted, grad(value, [params[k] for k in wanted])))
        loss = Tensor(value.data)
        return loss, grads, {"query_loss": loss}

    def evaluate(self, params, batch, inner_steps=None, k_support=None, **options):
        check_batch(batch, self.name)
        batch = _select_support(batch, k_support, self.name)
        theta, lrs = self.rates(params)
        steps = self.eval_inner_steps if inner_steps is None else inner_steps
        return evaluate_adapted(self.model, theta, batch, lrs, steps, self.loss, who=self.name)


def make_learner(config):
    model, loss = model_and_loss(config)
    algo = dict(config.get("algo", {}))
    return MetaSGD(model, loss=algo.pop("loss", loss), **algo)


def default_config(task_name):
    """MAML's settings (Li et al. train sinusoids with one step as well), rates learned."""
    cfg = base_config(task_name)
    cfg["algo"].update(first_order=False, learn_lr=True)
    return cfg
