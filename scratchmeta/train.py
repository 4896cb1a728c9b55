"""Meta-training and evaluation loops that the CLI and the examples share.

    theta, history = meta_train(learner, sampler, steps=1000, meta_batch=25)
    result = evaluate(learner, theta, held_out_sampler, n_tasks=600)
    result["mse"]  # {"mean": ..., "ci95": ..., "tasks": 600}

`run(config, run_dir)` is the same loop with everything a run directory
holds (config, metrics, atomic checkpoints) and `resume=True` to continue one.
Evaluation follows the papers: many held-out tasks, mean with a 95%
confidence interval (1.96 standard errors).
"""
import importlib
import json
import math
import os

from . import backend, recipes, runs
from .algorithms import ALGORITHMS, make_learner
from .optim import make_optimizer


class NonFiniteLossError(FloatingPointError):
    """The meta-loss, the parameters or a held-out score became NaN or inf; the message names the step."""


def _nonfinite_params(theta):
    """Names of the parameters holding a NaN or inf (one read back from the device)."""
    xp = backend.xp
    names = list(theta)
    flags = backend.to_numpy(xp.stack([xp.all(xp.isfinite(theta[k].data)) for k in names]))
    return [k for k, ok in zip(names, flags) if not ok]


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


def evaluate(learner, theta, sampler, n_tasks=600, batch_size=None, progress=False, **options):
    """Score `n_tasks` held-out tasks; every per-task metric as {"mean", "ci95", "tasks"}.

    Tasks are drawn `batch_size` at a time (vectorised); numbers come back to
    the host once, at the end. `progress` shows a bar of tasks done (stderr).
    """
    if n_tasks < 1:
        raise ValueError(f"evaluate: n_tasks must be at least 1, got {n_tasks}")
    batch_size = batch_size or min(n_tasks, 100)
    chunks, done = {}, 0
    bar = _progress(n_tasks, 0, progress, "held-out tasks") if progress else None
    while done < n_tasks:
        b = min(batch_size, n_tasks - done)
        out = learner.evaluate(theta, sampler.sample(b), **options)
        for name, per_task in out.items():
            chunks.setdefault(name, []).append(per_task)
        done += b
        if bar is not None:
            bar.update(b)
    if bar is not None:
        bar.close()
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
               eval_options=None, window=None):
    """The outer loop: theta <- optimizer step along learner.meta_step's direction.

    Draws `meta_batch` tasks per step from `sampler`. With `run_dir`, writes
    metrics.jsonl and an atomic checkpoint every `checkpoint_every` steps and
    at the end. A NaN or inf loss, parameter or held-out score stops the run
    with NonFiniteLossError naming the step, before anything of that step is
    written: the last good checkpoint is left untouched. `window` (the losses
    since the last evaluation) is checkpointed too, so that a resumed run logs
    the same train_loss as an uninterrupted one.
    Returns (theta, history) with history a list of logged records.
    """
    if steps < 0 or meta_batch < 1:
        raise ValueError(f"meta_train: steps must be >= 0 and meta_batch >= 1, got {steps}, {meta_batch}")
    optimizer = optimizer or make_optimizer({"name": "adam", "lr": 1e-3})
    theta = theta if theta is not None else learner.init(seed)
    if run_dir is not None and checkpoint_every is None:
        checkpoint_every = max(1, min(1000, steps // 10 or 1))
    eval_state = eval_sampler.state_dict() if eval_sampler is not None else None
    history, window = [], list(window or [])
    last_saved = start_step

    def stop(what, step, hint=""):
        where = (f"; the last good checkpoint (step {last_saved}) is kept in {run_dir}"
                 if run_dir is not None else "")
        return NonFiniteLossError(f"{what} at step {step}{hint}{where}")

    bar = _progress(steps, start_step, progress, learner.name)
    try:
        for step in range(start_step + 1, steps + 1):
            try:
                loss, grads, metrics = learner.meta_step(theta, sampler.sample(meta_batch))
            except NonFiniteLossError:
                raise
            except FloatingPointError as e:          # an algorithm's own check (e.g. MAML's inner loss)
                raise stop(str(e), step) from None
            value = float(loss.item())
            if not math.isfinite(value):
                raise stop(f"meta-loss became {value}", step)
            theta = optimizer.step(theta, grads)
            bad = _nonfinite_params(theta)
            if bad:
                raise stop(f"parameters {', '.join(bad)} became NaN or inf", step,
                           " (diverged: try a smaller learning rate)")
            window.append(value)
            if step % 10 == 0 or step == steps:
                bar.set_postfix(loss=f"{sum(window[-50:]) / len(window[-50:]):.4g}", refresh=False)
            bar.update(1)
            record = None
            if eval_sampler is not None and eval_every and (step % eval_every == 0 or step == steps):
                eval_sampler.load_state_dict(eval_state)       # the same held-out tasks each time
                result = evaluate(learner, theta, eval_sampler, n_tasks=eval_tasks,
                                  **(eval_options or {}))
                head = result.get(learner.metric)
                if head is not None and not math.isfinite(head["mean"]):
                    raise stop(f"held-out {learner.metric} became {head['mean']}", step,
                               " (the adapted model diverged: try a smaller inner learning rate)")
                record = {"step": step, "train_loss": sum(window) / len(window), "eval": result}
                window = []
                if head is not None:
                    bar.write(f"step {step}: train loss {record['train_loss']:.4g}, "
                              f"eval {learner.metric} {head['mean']:.4g} +- {head['ci95']:.2g}")
            try:
                if record is not None:
                    history.append(record)
                    if run_dir is not None:
                        runs.append_metrics(run_dir, record)
                if run_dir is not None and (step % checkpoint_every == 0 or step == steps):
                    learner_state = learner.state_dict() if hasattr(learner, "state_dict") else None
                    runs.save_checkpoint(run_dir, step, theta, optimizer, sampler, config or {},
                                         extra={"learner": learner_state, "window": window})
                    last_saved = step
            except runs.WriteError as e:
                raise runs.WriteError(f"{e} at step {step}; the last checkpoint (step {last_saved}) "
                                      f"is kept") from e
    finally:
        bar.close()
    return theta, history


# ---------------------------------------------------------------------------
# Experiments described by a config dict (what the CLI and run dirs use)
# ---------------------------------------------------------------------------
def dataset(name, root=None):
    """Load (once per process) a classification dataset."""
    from .tasks.registry import dataset as load
    return load(name, root)


def algorithm_module(name):
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {sorted(ALGORITHMS)}")
    return importlib.import_module(ALGORITHMS[name])


def make_sampler(config, split, seed=None):
    """The task sampler of `config["task"]` for split "train" or "test" (held out).

    An algorithm with its own tasks (a module-level make_sampler, e.g. the
    prompts of icl) builds them; every other task comes from the registry,
    scratchmeta.tasks.registry.TASKS.
    """
    from .tasks import registry
    module = algorithm_module(config["algorithm"])
    if hasattr(module, "make_sampler"):                    # algorithm-specific tasks (e.g. prompts)
        return module.make_sampler(config, split, config.get("seed", 0) if seed is None else seed)
    return registry.make_sampler(config, split, seed)


def build_config(algorithm, task, overrides=None):
    """The recipe of `algorithm` on `task` (scratchmeta.recipes), with `overrides` merged in (dicts deeply)."""
    algorithm_module(algorithm)                                # an unknown algorithm: a clear error
    config = recipes.recipe(algorithm, task)
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


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_config(config, path=runs.CONFIG):
    """Check the types and ranges of a config read from `path`; raise RunFileError naming it.

    A hand-edited or damaged config.json fails here, with the key, rather than
    deep inside the loop as an AttributeError or a ZeroDivisionError.
    """
    def bad(key, value, want):
        raise runs.RunFileError(f"{path}: {key} is {json.dumps(value)}, expected {want}")

    if not isinstance(config, dict):
        bad("the file", type(config).__name__, "a JSON object")
    if config.get("algorithm") not in ALGORITHMS:
        bad("algorithm", config.get("algorithm"), f"one of {sorted(ALGORITHMS)}")
    for key in ("task", "model", "algo", "optimizer"):
        if not isinstance(config.get(key, {}), dict):
            bad(key, config.get(key), "an object")
    if not isinstance(config.get("task", {}).get("name"), str):
        bad("task.name", config.get("task", {}).get("name"), "a task name")
    checks = {"steps": (0, False), "meta_batch": (1, False), "seed": (0, True),
              "eval_every": (0, True), "eval_tasks": (1, True), "checkpoint_every": (1, True)}
    for key, (least, optional) in checks.items():
        value = config.get(key)
        if value is None and optional:
            continue
        if not _is_int(value) or value < least:
            bad(key, value, f"an integer >= {least}")
    opt = config.get("optimizer", {})
    if opt.get("name", "adam") not in ("adam", "adamw", "sgd"):
        bad("optimizer.name", opt.get("name"), '"adam", "adamw" or "sgd"')
    if not _is_number(opt.get("lr")) or not opt["lr"] > 0:
        bad("optimizer.lr", opt.get("lr"), "a positive number")
    if config.get("dtype") not in (None, "float64", "float32"):
        bad("dtype", config.get("dtype"), '"float64" or "float32"')
    for key, value in config["task"].items():
        if key.startswith(("k_", "n_")) and not (_is_int(value) and value >= 1):
            bad(f"task.{key}", value, "an integer >= 1")
        if key == "reflections" and not isinstance(value, bool):
            bad(f"task.{key}", value, "true or false")
    for section in ("model", "algo"):
        for key, value in config.get(section, {}).items():
            if key in ("inner_steps", "eval_inner_steps", "width", "depth", "heads", "hidden") \
                    and value is not None and not (_is_int(value) and value >= 1):
                bad(f"{section}.{key}", value, "an integer >= 1")
            if key == "inner_lr" and not (_is_number(value) and value >= 0):
                bad(f"{section}.{key}", value, "a finite number >= 0")
    return config


def build(config, path=runs.CONFIG):
    """(learner, sampler, eval_sampler, optimizer) of a validated config.

    Wrong values the type checks cannot see (a model the code cannot build)
    raise RunFileError naming `path`, not a TypeError from deep inside.
    """
    try:
        learner = make_learner(config)
        sampler = make_sampler(config, "train")
        eval_sampler = make_sampler(config, "test") if config.get("eval_every") else None
        optimizer = make_optimizer(config["optimizer"], total_steps=config["steps"])
    except (ValueError, TypeError, AttributeError, KeyError, ZeroDivisionError, IndexError) as e:
        raise runs.RunFileError(f"{path}: cannot build the experiment from it "
                                f"({type(e).__name__}: {e})") from None
    return learner, sampler, eval_sampler, optimizer


def run(config, run_dir, resume=False, progress=True):
    """Train the experiment `config` in `run_dir`; with resume=True continue it.

    A resumed run ends in the same parameters, bit for bit, and with the same
    metrics.jsonl, as one that was never interrupted: theta, the optimiser's
    state, the sampler's RNG state and the loss window since the last
    evaluation all come from the checkpoint. Everything is read and checked
    before anything in `run_dir` is changed.
    """
    config_path = os.path.join(run_dir, runs.CONFIG)
    if resume:
        config = validate_config(runs.read_json(config_path), config_path)
    else:
        os.makedirs(run_dir, exist_ok=True)
    if config.get("dtype"):
        backend.set_default_dtype(config["dtype"])
    learner, sampler, eval_sampler, optimizer = build(config, config_path)
    theta, start, window = None, 0, None
    ckpt = os.path.join(run_dir, runs.CHECKPOINT)
    if resume and os.path.exists(ckpt):
        start, theta, opt_scalars, opt_tensors, sampler_state, extra = runs.load_checkpoint(ckpt, config)
        runs.check_params_match(theta, learner.init(config.get("seed", 0)))
        runs.read_metrics(run_dir)                    # a damaged metrics file stops us here
        optimizer.load_state_dict(opt_scalars, opt_tensors)
        sampler.load_state_dict(sampler_state)
        if extra.get("learner") is not None:
            learner.load_state_dict(extra["learner"])
        window = extra.get("window")
    elif resume:                            # killed before its first checkpoint: start afresh
        runs.read_metrics(run_dir)
    if resume:                              # everything checked: now tidy the directory
        runs.clean_temp_files(run_dir)
        runs.truncate_metrics(run_dir, start)
    else:
        runs.write_json(config_path, config)
    return meta_train(learner, sampler, config["steps"], config["meta_batch"], optimizer=optimizer,
                      seed=config.get("seed", 0), run_dir=run_dir, config=config,
                      eval_sampler=eval_sampler, eval_every=config.get("eval_every", 0),
                      eval_tasks=config.get("eval_tasks", 100),
                      checkpoint_every=config.get("checkpoint_every"), progress=progress,
                      theta=theta, start_step=start, window=window)


def load_run(run_dir):
    """(config, learner, theta, step) of a run directory's latest checkpoint."""
    config_path = os.path.join(run_dir, runs.CONFIG)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {runs.CONFIG})")
    config = validate_config(runs.read_json(config_path), config_path)
    if config.get("dtype"):
        backend.set_default_dtype(config["dtype"])
    try:
        learner = make_learner(config)
    except (ValueError, TypeError, AttributeError, KeyError, ZeroDivisionError, IndexError) as e:
        raise runs.RunFileError(f"{config_path}: cannot build the experiment from it "
                                f"({type(e).__name__}: {e})") from None
    step, theta, *_ = runs.load_checkpoint(os.path.join(run_dir, runs.CHECKPOINT), config)
    runs.check_params_match(theta, learner.init(config.get("seed", 0)))
    return config, learner, theta, step
