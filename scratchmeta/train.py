"""Meta-training and evaluation loops that the CLI and the examples share.

    theta, history = meta_train(learner, sampler, steps=1000, meta_batch=25)
    result = evaluate(learner, theta, held_out_sampler, n_tasks=600)
    result["mse"]  # {"mean": ..., "ci95": ..., "tasks": 600}

`run(config, run_dir)` is the same loop with everything a run directory
holds (config, metrics, atomic checkpoints) and `resume=True` to continue one.
Evaluation follows the papers: many held-out tasks, mean with a 95%
confidence interval (1.96 standard errors).
"""
import copy
import importlib
import math
import os

from . import backend, runs
from .algorithms import ALGORITHMS, make_learner
from .optim import make_optimizer


class NonFiniteLossError(FloatingPointError):
    """The meta-loss became NaN or inf; the message names the step."""


def mean_ci95(values):
    """(mean, half-width of the 95% confidence interval) of per-task values (host array)."""
    values = backend.host.asarray(values, dtype=backend.host.float64).reshape(-1)
    n = values.size
    if n == 0:
        raise ValueError("mean_ci95: no values")
    mean = float(values.mean())
    if n == 1:
        return mean, float("nan")
    return mean, float(1.96 * values.std(ddof=1) / math.sqrt(n))


def evaluate(learner, theta, sampler, n_tasks=600, batch_size=None, **options):
    """Score `n_tasks` held-out tasks; every per-task metric as {"mean", "ci95", "tasks"}.

    Tasks are drawn `batch_size` at a time (vectorised); numbers come back to
    the host once, at the end.
    """
    if n_tasks < 1:
        raise ValueError(f"evaluate: n_tasks must be at least 1, got {n_tasks}")
    batch_size = batch_size or min(n_tasks, 100)
    chunks, done = {}, 0
    while done < n_tasks:
        b = min(batch_size, n_tasks - done)
        out = learner.evaluate(theta, sampler.sample(b), **options)
        for name, per_task in out.items():
            chunks.setdefault(name, []).append(per_task)
        done += b
    result = {}
    for name, parts in chunks.items():
        values = backend.host.concatenate([backend.to_numpy(p).reshape(-1) for p in parts])
        mean, ci = mean_ci95(values)
        result[name] = {"mean": mean, "ci95": ci, "tasks": int(values.size)}
    return result


def _progress(total, initial, enabled, desc):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc,
                dynamic_ncols=True, leave=True)


def meta_train(learner, sampler, steps, meta_batch, optimizer=None, seed=0, run_dir=None,
               config=None, eval_sampler=None, eval_every=0, eval_tasks=100,
               checkpoint_every=None, progress=True, theta=None, start_step=0,
               eval_options=None):
    """The outer loop: theta <- optimizer step along learner.meta_step's direction.

    Draws `meta_batch` tasks per step from `sampler`. With `run_dir`, writes
    metrics.jsonl and an atomic checkpoint every `checkpoint_every` steps and
    at the end. A NaN or inf loss stops the run with NonFiniteLossError naming
    the step; the last good checkpoint is left untouched.
    Returns (theta, history) with history a list of logged records.
    """
    if steps < 0 or meta_batch < 1:
        raise ValueError(f"meta_train: steps must be >= 0 and meta_batch >= 1, got {steps}, {meta_batch}")
    optimizer = optimizer or make_optimizer({"name": "adam", "lr": 1e-3})
    theta = theta if theta is not None else learner.init(seed)
    if run_dir is not None and checkpoint_every is None:
        checkpoint_every = max(1, min(1000, steps // 10 or 1))
    eval_state = eval_sampler.state_dict() if eval_sampler is not None else None
    history, window = [], []
    last_saved = start_step
    bar = _progress(steps, start_step, progress, learner.name)
    try:
        for step in range(start_step + 1, steps + 1):
            loss, grads, metrics = learner.meta_step(theta, sampler.sample(meta_batch))
            value = float(loss.item())
            if not math.isfinite(value):
                where = (f"; the last good checkpoint (step {last_saved}) is kept in {run_dir}"
                         if run_dir is not None else "")
                raise NonFiniteLossError(f"meta-loss became {value} at step {step}{where}")
            theta = optimizer.step(theta, grads)
            window.append(value)
            if step % 10 == 0 or step == steps:
                bar.set_postfix(loss=f"{sum(window[-50:]) / len(window[-50:]):.4g}", refresh=False)
            bar.update(1)
            record = None
            if eval_sampler is not None and eval_every and (step % eval_every == 0 or step == steps):
                eval_sampler.load_state_dict(eval_state)       # the same held-out tasks each time
                result = evaluate(learner, theta, eval_sampler, n_tasks=eval_tasks,
                                  **(eval_options or {}))
                record = {"step": step, "train_loss": sum(window) / len(window), "eval": result}
                window = []
                head = result.get(learner.metric)
                if head is not None:
                    bar.write(f"step {step}: train loss {record['train_loss']:.4g}, "
                              f"eval {learner.metric} {head['mean']:.4g} +- {head['ci95']:.2g}")
            if record is not None:
                history.append(record)
                if run_dir is not None:
                    runs.append_metrics(run_dir, record)
            if run_dir is not None and (step % checkpoint_every == 0 or step == steps):
                learner_state = learner.state_dict() if hasattr(learner, "state_dict") else None
                runs.save_checkpoint(run_dir, step, theta, optimizer, sampler, config or {},
                                     extra={"learner": learner_state})
                last_saved = step
    finally:
        bar.close()
    return theta, history


# ---------------------------------------------------------------------------
# Experiments described by a config dict (what the CLI and run dirs use)
# ---------------------------------------------------------------------------
_DATASETS = {}


def dataset(name, root=None):
    """Load (once per process) a classification dataset."""
    from .tasks.datasets import load_dataset
    key = (name, root)
    if key not in _DATASETS:
        _DATASETS[key] = load_dataset(name, root=root)
    return _DATASETS[key]


def algorithm_module(name):
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {sorted(ALGORITHMS)}")
    return importlib.import_module(ALGORITHMS[name])


def make_sampler(config, split, seed=None):
    """The task sampler of `config["task"]` for split "train" or "test" (held out)."""
    task = config["task"]
    seed = config.get("seed", 0) if seed is None else seed
    module = algorithm_module(config["algorithm"])
    if hasattr(module, "make_sampler"):                    # algorithm-specific tasks (e.g. prompts)
        return module.make_sampler(config, split, seed)
    name = task["name"]
    if name == "sinusoid":
        from .tasks.regression import Sinusoid
        # held-out tasks: the same distribution, an independent stream
        return Sinusoid(k_support=task["k_support"], k_query=task["k_query"],
                        seed=seed if split == "train" else seed + 1_000_003)
    if name in ("glyphs", "omniglot", "digits"):
        data = dataset(name, task.get("data_root"))
        n_way, n_query = task["n_way"], task["n_query"]
        if split == "train":   # ProtoNets may train on more ways (and other queries) than they test
            n_way = config.get("algo", {}).get("train_ways") or n_way
            n_query = config.get("algo", {}).get("train_queries") or n_query
        return data.sampler(split, n_way, task["k_shot"], n_query,
                            seed=seed if split == "train" else seed + 1_000_003)
    raise ValueError(f"unknown task {name!r}")


def build_config(algorithm, task, overrides=None):
    """The default config of `algorithm` on `task`, with `overrides` merged in (dicts deeply)."""
    module = algorithm_module(algorithm)
    config = copy.deepcopy(module.default_config(task))
    config["algorithm"] = algorithm
    config.setdefault("task", {})["name"] = task
    config.setdefault("seed", 0)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict):
            config.setdefault(key, {}).update(value)
        elif value is not None:
            config[key] = value
    model = config.get("model", {})
    if model.get("n_classes") and "n_way" in config["task"]:
        model["n_classes"] = config["task"]["n_way"]       # a classifier head has one output per way
    return config


def run(config, run_dir, resume=False, progress=True):
    """Train the experiment `config` in `run_dir`; with resume=True continue it.

    A resumed run ends in the same parameters, bit for bit, as one that was
    never interrupted: theta, the optimiser's state and the sampler's RNG
    state all come from the checkpoint.
    """
    os.makedirs(run_dir, exist_ok=True)
    if resume:
        config = runs.read_json(os.path.join(run_dir, runs.CONFIG))
    if config.get("dtype"):
        backend.set_default_dtype(config["dtype"])
    learner = make_learner(config)
    sampler = make_sampler(config, "train")
    eval_sampler = make_sampler(config, "test") if config.get("eval_every") else None
    optimizer = make_optimizer(config["optimizer"], total_steps=config["steps"])
    theta, start = None, 0
    ckpt = os.path.join(run_dir, runs.CHECKPOINT)
    if resume and os.path.exists(ckpt):
        start, theta, opt_scalars, opt_tensors, sampler_state, extra = runs.load_checkpoint(ckpt, config)
        runs.check_params_match(theta, learner.init(config.get("seed", 0)))
        optimizer.load_state_dict(opt_scalars, opt_tensors)
        sampler.load_state_dict(sampler_state)
        if extra.get("learner") is not None:
            learner.load_state_dict(extra["learner"])
        runs.truncate_metrics(run_dir, start)
    elif not resume:
        runs.write_json(os.path.join(run_dir, runs.CONFIG), config)
    else:                                   # killed before its first checkpoint: start afresh
        runs.truncate_metrics(run_dir, 0)
    return meta_train(learner, sampler, config["steps"], config["meta_batch"], optimizer=optimizer,
                      seed=config.get("seed", 0), run_dir=run_dir, config=config,
                      eval_sampler=eval_sampler, eval_every=config.get("eval_every", 0),
                      eval_tasks=config.get("eval_tasks", 100),
                      checkpoint_every=config.get("checkpoint_every"), progress=progress,
                      theta=theta, start_step=start)


def load_run(run_dir):
    """(config, learner, theta, step) of a run directory's latest checkpoint."""
    config_path = os.path.join(run_dir, runs.CONFIG)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {runs.CONFIG})")
    config = runs.read_json(config_path)
    if config.get("dtype"):
        backend.set_default_dtype(config["dtype"])
    learner = make_learner(config)
    step, theta, *_ = runs.load_checkpoint(os.path.join(run_dir, runs.CHECKPOINT), config)
    runs.check_params_match(theta, learner.init(config.get("seed", 0)))
    return config, learner, theta, step
