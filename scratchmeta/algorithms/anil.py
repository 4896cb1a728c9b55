"""ANIL, Almost No Inner Loop: adapt only the head, meta-learn everything.

Raghu, Raghu, Bengio & Vinyals 2020, "Rapid Learning or Feature Reuse?",
arXiv:1909.09157v2, Sec. 4: with theta = (theta_body, theta_head),

    phi_head = theta_head - alpha * grad_head L_support(theta_body, theta_head)
    meta-gradient: grad_(theta_body, theta_head) L_query(theta_body, phi_head)

The body is shared by all tasks and not adapted; it still receives a
meta-gradient, through the features it feeds the head (and, second order,
through the head's inner gradient). Same code as MAML with
names = model.head_names() in inner_update.
"""
from .inner_loop import make_adapting_learner
from .maml import MAML


class ANIL(MAML):
    """MAML restricted to the head in the inner loop."""

    name = "anil"

    def __init__(self, model, inner_lr=0.01, inner_steps=1, first_order=False, loss="mse",
                 eval_inner_steps=None, inner_reduction="mean"):
        super().__init__(model, inner_lr, inner_steps, first_order, loss, eval_inner_steps,
                         inner_reduction)
        self.adapt_names = tuple(model.head_names())
        if not self.adapt_names:
            raise ValueError("anil: the model has no head to adapt (Conv4 needs n_classes)")


def make_learner(config):
    return make_adapting_learner(ANIL, config)
