"""The "pretrained" baseline of Finn et al.: joint training, then fine-tuning.

Finn, Abbeel & Levine 2017, arXiv:1703.03400v3, Sec. 5.1: a network trained
to regress all tasks at once (points pooled across sampled tasks, ordinary
supervised learning with Adam), then fine-tuned on each test task's K
support points with the same inner SGD steps MAML uses. It answers: does
meta-learning beat simply learning the average function and fine-tuning?

Joint training is MAML with zero inner steps: its gradient is
grad_theta mean_t L_t(theta) (cf. Nichol et al. 2018, Sec. 5: one-step
Reptile does the same in expectation).
"""
from ..optim import Adam
from ..tensor import enable_grad, grad
from .common import check_batch, check_finite, task_losses
from .inner_loop import evaluate_adapted


def pooled_loss(model, theta, batch, loss="mse"):
    """Mean over tasks of the loss on all K + Q points of each task, theta shared."""
    T = batch["support_x"].shape[0]
    total = 0.0
    for part in ("support", "query"):
        x, y = batch[part + "_x"], batch[part + "_y"]
        # one shared theta: fold the task axis into the points
        pred = model(theta, x.reshape((-1,) + tuple(x.shape[2:])))
        pred = pred.reshape((T, -1) + tuple(pred.shape[1:]))
        total = total + task_losses(pred, y, loss).mean() * 0.5
    return total


def pretrain(model, sampler, steps, seed=0, lr=1e-3, batch_tasks=25, loss="mse", progress=None):
    """Adam on the pooled regression loss for `steps` steps -> params.

    progress: a bar on stderr (None: only when stderr is a terminal, tqdm's rule).
    """
    from tqdm.auto import tqdm
    theta = model.init(seed)
    opt = Adam(lr=lr)
    bar = tqdm(range(int(steps)), desc="pretrained baseline", leave=False,
               disable=None if progress is None else not progress)
    for _ in bar:
        batch = sampler.sample(batch_tasks)
        check_batch(batch, "pretrain")
        with enable_grad():
            value = pooled_loss(model, theta, batch, loss)
            grads = dict(zip(theta, grad(value, list(theta.values()))))
        theta = opt.step(theta, grads)
    check_finite(value, "pooled training loss", "pretrain")
    return theta


def finetune_evaluate(model, params, batch, alpha, steps, loss="mse"):
    """Fine-tune on each task's support set (steps of SGD, all tasks at once); score the query.

    Returns evaluate_adapted's dict: per-task (T,) arrays "mse" (after `steps`),
    "mse_step0", "mse_step1", "mse_step10", "baseline/zero".
    """
    check_batch(batch, "pretrained")
    return evaluate_adapted(model, params, batch, alpha, steps, loss, who="pretrained")


class FineTuned:
    """The pretrained network as a learner that train.evaluate can score: fine-tune, then test."""

    def __init__(self, model, alpha, steps, loss="mse"):
        self.model, self.alpha, self.steps, self.loss = model, alpha, steps, loss

    def evaluate(self, params, batch, **options):
        return finetune_evaluate(self.model, params, batch, self.alpha, self.steps, self.loss)


def baseline_report(model, theta_pretrained, sampler, n_tasks, batch_size, alpha, steps,
                    loss="mse"):
    """Fine-tune-and-score `n_tasks` tasks of `sampler`: {"mean", "ci95", "tasks"} of the mse.

    Scored by train.evaluate, as every learner is (mean and 1.96 standard errors).
    """
    from ..train import evaluate
    result = evaluate(FineTuned(model, alpha, steps, loss), theta_pretrained, sampler,
                      n_tasks=n_tasks, batch_size=batch_size)
    return result["mse"]


def extra_baselines(config, learner, sampler, n_tasks=600, batch_size=100, inner_steps=None,
                    baselines=True, **options):
    """`scratchmeta eval`'s hook: the pretrained baseline on the same held-out tasks.

    Trained for config["steps"] steps of config["meta_batch"] tasks (the
    meta-learner's budget), with the learner's alpha and inner steps.
    """
    task = config.get("task", {})
    if not baselines or task.get("name") != "sinusoid":
        return {}
    from ..tasks.regression import Sinusoid
    train_tasks = Sinusoid(k_support=task.get("k_support", 10), k_query=task.get("k_query", 10),
                           seed=config.get("seed", 0))
    theta = _cached_pretrain(learner.model, train_tasks, config)
    steps = learner.eval_inner_steps if inner_steps is None else inner_steps
    return {"baseline/pretrained": baseline_report(learner.model, theta, sampler, n_tasks,
                                                   batch_size or 100, learner.inner_lr, steps)}


def _cached_pretrain(model, train_tasks, config):
    """pretrain(), remembered on disk: the same settings always give the same weights,
    so evaluating one run at several K or step counts trains the baseline once."""
    import hashlib
    import io
    import json
    import os
    from collections import OrderedDict

    from .. import backend, runs
    from ..tasks.datasets import default_cache_dir
    from ..tensor import Tensor
    key = {"model": model.config(), "tasks": train_tasks.config(), "steps": config["steps"],
           "seed": config.get("seed", 0), "batch": config.get("meta_batch", 25),
           "dtype": backend.get_default_dtype().__name__, "version": 1}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(default_cache_dir(), f"pretrained-{digest}.npz")
    if os.path.exists(path):
        try:
            with backend.host.load(path) as z:
                return OrderedDict((k, Tensor(backend.asarray(z[k]), requires_grad=True))
                                   for k in z.files)
        except (OSError, ValueError, KeyError):
            pass                                     # unreadable cache: train again
    theta = pretrain(model, train_tasks, config["steps"], seed=config.get("seed", 0),
                     lr=1e-3, batch_tasks=config.get("meta_batch", 25))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    buf = io.BytesIO()
    backend.host.savez(buf, **{k: backend.to_numpy(v.data) for k, v in theta.items()})
    runs.atomic_write_bytes(path, buf.getvalue())
    return theta
