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
from ..tensor import Tensor
from .inner_loop import make_adapting_learner
from .maml import MAML

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
                 eval_inner_steps=None, learn_lr=True, inner_reduction="mean"):
        super().__init__(model, inner_lr, inner_steps, first_order, loss, eval_inner_steps,
                         inner_reduction)
        self.learn_lr = bool(learn_lr)

    def config(self):
        return dict(super().config(), learn_lr=self.learn_lr)

    def _constant_lr(self, theta):
        # frozen: each rate is inner_lr, a constant (no gradient)
        return OrderedDict((k, Tensor(backend.asarray(backend.host.full(v.shape, self.inner_lr),
                                                      dtype=v.dtype))) for k, v in theta.items())

    def init(self, seed):
        theta = self.model.init(seed)
        if self.learn_lr:          # a rate for each parameter the inner loop adapts
            adapted = set(theta if self.adapt_names is None else self.adapt_names)
            for k, v in list(self._constant_lr(theta).items()):
                if k in adapted:
                    theta[PREFIX + k] = Tensor(v.data, requires_grad=True)
        return theta

    def inner_rates(self, params):
        """(theta, alpha) of Eq. 1: alpha is the dict of learned rates (or inner_lr, frozen).

        MAML.meta_step then differentiates with respect to theta and the rates
        together (wrt=params), so the rates are meta-learned with the one
        meta-gradient routine of maml.py.
        """
        theta, lrs = split(params)
        return theta, (lrs if self.learn_lr else self._constant_lr(theta))


def make_learner(config):
    return make_adapting_learner(MetaSGD, config)
