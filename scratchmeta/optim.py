"""Outer-loop optimisers, written out, stepping a dict of parameters.

They update meta-parameters between meta-steps and are never differentiated,
so they run under no_grad and return fresh leaf tensors. Their state is a
dict of tensors plus a step count, saved in checkpoints.
"""
from collections import OrderedDict
import math

from .tensor import Tensor, no_grad


def _leaf(t):
    return Tensor(t.data, requires_grad=True)


class SGD:
    """theta <- theta - lr * g."""

    def __init__(self, lr=1e-3):
        if not lr > 0:
            raise ValueError(f"SGD: lr must be positive, got {lr}")
        self.lr = float(lr)
        self.t = 0

    def config(self):
        return {"name": "sgd", "lr": self.lr}

    @no_grad()
    def step(self, params, grads):
        self.t += 1
        return OrderedDict((k, _leaf(p - self.lr * grads[k]) if k in grads else p)
                           for k, p in params.items())

    def state_dict(self):
        return {"t": self.t}, {}

    def load_state_dict(self, scalars, tensors):
        self.t = int(scalars["t"])


class Adam:
    """Adam (Kingma & Ba 2015, arXiv:1412.6980v9, Algorithm 1).

    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
    theta <- theta - lr * mhat / (sqrt(vhat) + eps),  mhat = m/(1-b1^t), vhat = v/(1-b2^t)
    weight_decay > 0 gives AdamW's decoupled decay (Loshchilov & Hutter 2019):
    theta <- theta - lr * wd * theta, applied beside the Adam step.

    The step size at step t is lr_at(t): lr, times t / warmup_steps during a
    linear warm-up, times (1 + cos(pi t / total_steps)) / 2 with
    schedule="cosine" (Loshchilov & Hutter 2017, SGDR, without restarts).
    """

    SCHEDULES = ("constant", "cosine")

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 warmup_steps=0, schedule="constant", total_steps=None):
        if not lr > 0:
            raise ValueError(f"Adam: lr must be positive, got {lr}")
        if isinstance(warmup_steps, bool) or int(warmup_steps) != warmup_steps or warmup_steps < 0:
            raise ValueError(f"Adam: warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        if schedule not in self.SCHEDULES:
            raise ValueError(f"Adam: schedule must be one of {self.SCHEDULES}, got {schedule!r}")
        if schedule == "cosine" and (total_steps is None or isinstance(total_steps, bool)
                                     or int(total_steps) != total_steps or total_steps < 1):
            raise ValueError(f"Adam: schedule 'cosine' needs total_steps, a positive integer "
                             f"(the run's steps), got {total_steps!r}")
        self.lr, self.betas, self.eps = float(lr), tuple(float(b) for b in betas), float(eps)
        self.weight_decay = float(weight_decay)
        self.warmup_steps, self.schedule = int(warmup_steps), schedule
        self.total_steps = None if total_steps is None else int(total_steps)
        self.t = 0
        self.m, self.v = {}, {}

    def config(self):
        return {"name": "adam", "lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay, "warmup_steps": self.warmup_steps,
                "schedule": self.schedule, "total_steps": self.total_steps}

    def lr_at(self, t):
        """The step size of step t (1-based): warm-up, then the schedule."""
        lr = self.lr
        if self.warmup_steps and t < self.warmup_steps:
            lr *= t / self.warmup_steps
        if self.schedule == "cosine":
            lr *= 0.5 * (1.0 + math.cos(math.pi * min(t, self.total_steps) / self.total_steps))
        return lr

    @no_grad()
    def step(self, params, grads):
        b1, b2 = self.betas
        self.t += 1
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t       # bias corrections
        lr = self.lr_at(self.t)
        new = OrderedDict()
        for k, p in params.items():
            g = grads.get(k)
            if g is None:
                new[k] = p
                continue
            m = g * (1 - b1) if k not in self.m else self.m[k] * b1 + g * (1 - b1)
            v = g * g * (1 - b2) if k not in self.v else self.v[k] * b2 + g * g * (1 - b2)
            self.m[k], self.v[k] = m, v
            update = (m * (1 / c1)) / ((v * (1 / c2)).sqrt() + self.eps)
            if self.weight_decay:
                update = update + self.weight_decay * p
            new[k] = _leaf(p - lr * update)
        return new

    def state_dict(self):
        tensors = {f"m/{k}": v for k, v in self.m.items()}
        tensors.update({f"v/{k}": v for k, v in self.v.items()})
        return {"t": self.t}, tensors

    def load_state_dict(self, scalars, tensors):
        self.t = int(scalars["t"])
        self.m = {k[2:]: Tensor(v.data if isinstance(v, Tensor) else v)
                  for k, v in tensors.items() if k.startswith("m/")}
        self.v = {k[2:]: Tensor(v.data if isinstance(v, Tensor) else v)
                  for k, v in tensors.items() if k.startswith("v/")}


class Scheduled:
    """An optimiser whose step size follows a schedule; step t (1-based) uses lr_at(t).

    final_lr:    linear annealing from lr (step 1) towards final_lr over total_steps,
                 lr_at(t) = lr + (final_lr - lr) (t - 1) / total_steps, as
                 openai/supervised-reptile's train.py anneals Reptile's meta step
                 (frac_done = i / meta_iters, i counted from 0).
    halve_every: lr_at(t) = lr * 0.5^floor((t - 1) / halve_every), as
                 jakesnell/prototypical-networks' StepLR(gamma=0.5) every 20
                 epochs of 100 episodes halves Adam's rate every 2,000 episodes.
    The wrapped optimiser's state (and so a checkpoint) is unchanged.
    """

    def __init__(self, optimizer, final_lr=None, total_steps=None, halve_every=None):
        if (final_lr is None) == (halve_every is None):
            raise ValueError("Scheduled: give exactly one of final_lr and halve_every")
        if final_lr is not None:
            if not float(final_lr) >= 0:
                raise ValueError(f"Scheduled: final_lr must be >= 0, got {final_lr!r}")
            if isinstance(total_steps, bool) or total_steps is None or int(total_steps) < 1:
                raise ValueError(f"Scheduled: final_lr needs total_steps, the run's steps "
                                 f"(a positive integer), got {total_steps!r}")
        if halve_every is not None and (isinstance(halve_every, bool) or int(halve_every) != halve_every
                                        or halve_every < 1):
            raise ValueError(f"Scheduled: halve_every must be a positive integer, got {halve_every!r}")
        self.optimizer = optimizer
        self.final_lr = None if final_lr is None else float(final_lr)
        self.total_steps = None if total_steps is None else int(total_steps)
        self.halve_every = None if halve_every is None else int(halve_every)

    @property
    def lr(self):
        return self.optimizer.lr

    @property
    def t(self):
        return self.optimizer.t

    def lr_at(self, t):
        base = self.optimizer.lr
        if self.halve_every is not None:
            return base * 0.5 ** ((t - 1) // self.halve_every)
        frac = min(t - 1, self.total_steps) / self.total_steps
        return base + (self.final_lr - base) * frac

    def config(self):
        extra = ({"halve_every": self.halve_every} if self.halve_every is not None
                 else {"final_lr": self.final_lr})
        return dict(self.optimizer.config(), **extra)

    def step(self, params, grads):
        base = self.optimizer.lr
        self.optimizer.lr = self.lr_at(self.optimizer.t + 1)
        try:
            return self.optimizer.step(params, grads)
        finally:
            self.optimizer.lr = base

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, scalars, tensors):
        self.optimizer.load_state_dict(scalars, tensors)


def make_optimizer(config, total_steps=None):
    """An optimiser from its config dict: {"name": "adam"|"adamw"|"sgd", "lr": ..., ...}.

    Schedule keys (Scheduled): "final_lr" (linear annealing over total_steps,
    the run's length) or "halve_every" (steps); Adam's own "schedule": "cosine"
    (with "warmup_steps") takes total_steps as its horizon.
    """
    kw = dict(config)
    name = kw.pop("name", "adam")
    if name in ("adam", "adamw") and kw.get("schedule") == "cosine" and kw.get("total_steps") is None:
        kw["total_steps"] = total_steps            # Adam's own warm-up + cosine: the run's length
    schedule = {k: kw.pop(k) for k in ("final_lr", "halve_every") if kw.get(k) is not None}
    kw.pop("final_lr", None), kw.pop("halve_every", None)
    if name == "adam":
        opt = Adam(**kw)
    elif name == "adamw":
        kw.setdefault("weight_decay", 1e-2)
        opt = Adam(**kw)
    elif name == "sgd":
        opt = SGD(**kw)
    else:
        raise ValueError(f"unknown optimizer {name!r} (adam, adamw or sgd)")
    return Scheduled(opt, total_steps=total_steps, **schedule) if schedule else opt
