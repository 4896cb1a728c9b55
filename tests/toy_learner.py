"""A tiny MetaLearner for testing the training loop, checkpoints and the CLI plumbing.

Joint regression of y = a x + b tasks with a linear model (no adaptation):
small enough that every step takes microseconds, real enough that its loss
falls and its parameters depend on every sampled batch.
"""
from collections import OrderedDict

import scratchmeta as sm
from scratchmeta import backend, recipes
from scratchmeta.algorithms.base import MetaLearner
from scratchmeta.tasks.regression import FunctionTasks


def line(x, params):
    return params["a"][:, None, None] * x + params["b"][:, None, None]


def line_params(rng, n):
    return {"a": rng.uniform(1.0, 2.0, n), "b": rng.uniform(-1.0, 1.0, n)}


class Toy(MetaLearner):
    name = "toy"
    metric = "mse"

    def __init__(self, blow_up_at=None):
        self.blow_up_at = blow_up_at
        self.calls = 0

    def config(self):
        return {}

    def init(self, seed):
        rng = backend.host.random.default_rng(seed)
        return OrderedDict(w=sm.tensor(rng.standard_normal((1, 1)), requires_grad=True),
                           b=sm.tensor(rng.standard_normal(1), requires_grad=True))

    def _loss(self, theta, x, y):
        d = sm.F.linear(x, theta["w"], theta["b"]) - y
        return (d * d).mean(axis=(1, 2))

    def meta_step(self, theta, batch):
        self.calls += 1
        loss = self._loss(theta, batch["query_x"], batch["query_y"]).mean()
        if self.blow_up_at is not None and self.calls >= self.blow_up_at:
            loss = loss * float("nan")
        gw, gb = sm.grad(loss, [theta["w"], theta["b"]])
        return loss, {"w": gw, "b": gb}, {}

    def evaluate(self, theta, batch, **options):
        with sm.no_grad():
            mse = self._loss(theta, batch["query_x"], batch["query_y"])
        return {"mse": mse.data, "baseline/zero": (batch["query_y"] ** 2).mean(axis=(1, 2))}


def make_learner(config):
    return Toy(**config.get("algo", {}))


def make_sampler(config, split, seed):
    return FunctionTasks(line, line_params, k_support=4, k_query=4,
                         seed=seed if split == "train" else seed + 99)


# the toy's recipe, registered in the one table train.build_config reads
recipes.RECIPES[("toy", "lines")] = {
    "task": {"name": "lines"}, "model": {}, "algo": {},
    "optimizer": {"name": "adam", "lr": 0.05},       # large: the toy converges in 40 steps
    "steps": 40, "meta_batch": 8, "eval_every": 10, "eval_tasks": 50, "checkpoint_every": 5}
