"""In-context learning of linear functions by a transformer (Garg et al. 2022).

Garg, Tsipras, Liang & Valiant, arXiv:2208.01066v3, Sec. 3. Meta-training is
pretraining a sequence model M_theta on random prompts; a prompt's in-context
examples are the support set, and "adaptation" is one forward pass: no
parameter changes at test time. The training objective is the squared error
of the prediction after every prefix of the prompt:

    min_theta  E_P [ (1/n) sum_{i=0}^{n-1} (M_theta(P^i) - f(x_{i+1}))^2 ]

where P^i = (x_1, f(x_1), ..., x_i, f(x_i), x_{i+1}). The prompt is encoded
as 2n tokens of width d that alternate x_i and (f(x_i), 0, ..., 0); the
prediction for f(x_{i+1}) is read at the token of x_{i+1}, which under the
causal mask sees exactly P^i. One prompt of n points thus trains n prefixes.

Errors are reported as squared error / d (Sec. 4), beside the baselines of
scratchmeta.algorithms.icl_baselines on the same prompts.
"""
from ..backend import xp
from .. import transformer as tf
from ..tasks.linreg import LinearRegressionPrompts
from ..tensor import Tensor, grad, no_grad
from . import icl_baselines as baselines
from .base import MetaLearner

RIDGE_GRID = (1e-6, 1e-4, 1e-3, 1e-2, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def prompt_tokens(x, y):
    """Interleave x (B, n, d) and y (B, n) as (B, 2n, d): x_1, (y_1, 0..0), x_2, ...

    Built from data arrays (nothing here is a parameter), as in Garg et al.'s
    reference code.
    """
    B, n, d = x.shape
    y_wide = xp.concatenate([y[..., None], xp.zeros((B, n, d - 1), dtype=x.dtype)], axis=-1)
    return xp.stack([x, y_wide], axis=2).reshape(B, 2 * n, d)


class InContextLearner(MetaLearner):
    """A decoder-only transformer trained on prompts; baselines for comparison.

    model: Transformer keyword arguments (width, depth, heads, positions,
    mlp_ratio); n_dims and max_len follow the task (d and 2 n_points).
    algo: baselines (names from icl_baselines.BASELINES), n_neighbors (k-NN),
    ridge_grid (lambdas tried per prefix), tune_prompts / tune_seed (the
    held-out prompts on which ridge's lambda and the GD step are tuned).
    """

    name = "icl"
    metric = "error"                 # transformer's squared error / d, mean over prefixes

    def __init__(self, model=None, algo=None, task=None):
        task = dict(task or {})
        self.task = task
        self.n_dims = int(task.get("n_dims", 5))
        self.n_points = int(task.get("n_points", 15))
        model = dict(model or {})
        model.pop("model", None)
        model.setdefault("n_dims", self.n_dims)
        model.setdefault("max_len", 2 * self.n_points)
        self.model = tf.Transformer(**model)
        algo = dict(algo or {})
        self.baselines = tuple(algo.get("baselines", baselines.BASELINES))
        unknown = set(self.baselines) - set(baselines.BASELINES)
        if unknown:
            raise ValueError(f"icl: unknown baselines {sorted(unknown)}; choose from {baselines.BASELINES}")
        self.n_neighbors = int(algo.get("n_neighbors", 3))
        self.ridge_grid = tuple(float(v) for v in algo.get("ridge_grid", RIDGE_GRID))
        self.tune_prompts = int(algo.get("tune_prompts", 1000))
        self.tune_seed = int(algo.get("tune_seed", 2 ** 31 - 1))
        self._tuned = {}             # n -> (ridge lambda (n,), gd step (n,))

    def config(self):
        return {"model": self.model.config(), "task": self.task,
                "algo": {"baselines": list(self.baselines), "n_neighbors": self.n_neighbors,
                         "ridge_grid": list(self.ridge_grid), "tune_prompts": self.tune_prompts,
                         "tune_seed": self.tune_seed}}

    def init(self, seed):
        return self.model.init(seed)

    # -- the model's predictions ------------------------------------------
    def check_prompts(self, x, y):
        """Clear errors for prompts the model cannot read."""
        if x.ndim != 3:
            raise ValueError(f"icl: prompts x must be (T, n, d), got shape {x.shape}")
        if y.shape != x.shape[:2]:
            raise ValueError(f"icl: labels y must be (T, n) = {x.shape[:2]}, got shape {y.shape}")
        if x.shape[1] == 0:
            raise ValueError("icl: the prompt is empty (0 in-context points)")
        if x.shape[2] != self.model.n_dims:
            raise ValueError(f"icl: prompts have d = {x.shape[2]} but the model was built for "
                             f"d = {self.model.n_dims}")
        if 2 * x.shape[1] > self.model.max_len:
            raise ValueError(f"icl: a prompt of {x.shape[1]} points is {2 * x.shape[1]} tokens, "
                             f"longer than the model's context of {self.model.max_len} tokens")

    def predict(self, theta, x, y):
        """M_theta(P^i) for every prefix i: (T, n), read at the x tokens."""
        self.check_prompts(x, y)
        out = self.model(theta, prompt_tokens(x, y))                  # (T, 2n, 1)
        return out[:, 0::2, 0]

    def meta_step(self, theta, batch):
        x, y = batch["x"], batch["y"]
        pred = self.predict(theta, x, y)
        diff = pred - Tensor(y)
        loss = (diff * diff).mean()                                   # mean over prompts and prefixes
        names = list(theta)
        grads = grad(loss, [theta[k] for k in names])
        return loss, dict(zip(names, grads)), {"error": loss * (1.0 / self.n_dims)}

    # -- evaluation ---------------------------------------------------------
    def _tuning(self, n):
        """Ridge lambda and GD step per prefix, tuned on held-out prompts of n points."""
        if n not in self._tuned:
            task = {k: self.task[k] for k in ("noise_std", "sparsity") if k in self.task}
            sampler = LinearRegressionPrompts(n_dims=self.n_dims, n_points=n, seed=self.tune_seed, **task)
            b = sampler.sample(self.tune_prompts)
            self._tuned[n] = (baselines.tune_ridge(b["x"], b["y"], self.ridge_grid),
                              baselines.tune_gd_step(b["x"], b["y"]))
        return self._tuned[n]

    def baseline_predictions(self, x, y):
        """name -> (T, n) predictions of each configured baseline."""
        lam, eta = self._tuning(x.shape[1]) if {"ridge", "gd_one_step"} & set(self.baselines) else (None, None)
        make = {"least_squares": lambda: baselines.least_squares(x, y),
                "ridge": lambda: baselines.ridge(x, y, lam),
                "knn": lambda: baselines.knn(x, y, self.n_neighbors),
                "averaging": lambda: baselines.averaging(x, y),
                "gd_one_step": lambda: baselines.gd_one_step(x, y, eta)}
        return {name: make[name]() for name in self.baselines}

    @no_grad()
    def evaluate(self, theta, batch, baselines=True, **options):
        """Per prompt: squared error / d at every number of examples k.

        Keys: "by_k/<k>/<method>" (T,) for k = 0..n-1 and method in
        transformer + baselines; "error" and "baseline/<name>", the mean
        over k (the training objective / d). baselines=False skips them.
        All of these score against the labels y, noisy or not.

        Noisy prompts (the batch carries f = w.x) add the same errors against
        the clean target f: "clean_by_k/<k>/<method>" and "clean_error". As
        the query's noise eps is independent of the prediction p,
        E (p - y)^2 = E (p - f)^2 + noise_std^2: the clean error is the
        excess risk, the noisy one adds the floor noise_std^2 / d.
        """
        if options:
            raise ValueError(f"icl.evaluate: unsupported options {sorted(options)} (only baselines)")
        x, y = batch["x"], batch["y"]
        preds = {"transformer": self.predict(theta, x, y).data}
        if baselines:
            preds.update(self.baseline_predictions(x, y))
        targets = {"": y}
        if "f" in batch:
            targets["clean_"] = batch["f"]
        out = {}
        for prefix, target in targets.items():
            t64 = xp.asarray(target, dtype=xp.float64)
            for method, p in preds.items():
                err = (xp.asarray(p, dtype=xp.float64) - t64) ** 2 / self.n_dims  # (T, n)
                for k in range(err.shape[1]):
                    out[f"{prefix}by_k/{k}/{method}"] = err[:, k]
                if method == "transformer":
                    out[f"{prefix}error"] = err.mean(axis=1)
                elif not prefix:
                    out[f"baseline/{method}"] = err.mean(axis=1)
        return out


def make_learner(config):
    return InContextLearner(config.get("model"), config.get("algo"), config.get("task"))


TASK_KEYS = ("n_dims", "n_points", "noise_std", "sparsity", "curriculum", "dtype")


def make_sampler(config, split, seed):
    """Prompts for split "train" (with the curriculum) or "test" (full size, another stream)."""
    task = {k: v for k, v in config["task"].items() if k in TASK_KEYS}
    if split == "train":
        return LinearRegressionPrompts(**task, seed=seed)
    task.pop("curriculum", None)                      # held-out prompts: always the full task
    return LinearRegressionPrompts(**task, seed=seed + 1_000_003)


def default_config(task_name="linreg"):
    """CPU-sized defaults: d = 5, 15 points a prompt (k = 0..14), width 32, 3 layers, float32.

    The read-in and read-out start as torch.nn.Linear layers, as in Garg et
    al.'s code (Transformer io_init "pytorch"); with GPT-2's N(0, 0.02^2)
    there, training sat on the plateau at the zero predictor's error for
    thousands of steps (docs/icl.md, "What made it train").
    """
    if task_name != "linreg":
        raise ValueError(f"icl: no defaults for task {task_name!r} (only 'linreg')")
    d, n = 5, 15
    return {
        "algorithm": "icl",
        "task": {"name": "linreg", "n_dims": d, "n_points": n, "noise_std": 0.0, "sparsity": None,
                 "curriculum": {"dims": {"start": 2, "end": d, "inc": 1, "interval": 500},
                                "points": {"start": 5, "end": n, "inc": 2, "interval": 500}}},
        "model": {"width": 32, "depth": 3, "heads": 4, "positions": "learned", "mlp_ratio": 4},
        "algo": {"baselines": list(baselines.BASELINES), "n_neighbors": 3,
                 "ridge_grid": list(RIDGE_GRID), "tune_prompts": 1000},
        "optimizer": {"name": "adamw", "lr": 2e-3, "weight_decay": 0.0,
                      "warmup_steps": 500, "schedule": "cosine"},
        "steps": 12000,
        "meta_batch": 64,
        "eval_every": 1000,
        "dtype": "float32",
    }
