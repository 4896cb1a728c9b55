"""Evaluating a run as the papers do: held-out tasks, mean and 95% CI, beside baselines.

`evaluate_run` is what `scratchmeta eval RUN` prints (as JSON with --json):
    {"metric": "mse", "mean": ..., "ci95": ..., "tasks": 600,
     "baselines": {"pretrained": {"mean": ..., "ci95": ...}, ...}, ...}
"""
import copy

from . import train

BASELINE = "baseline/"
BY_K = "by_k/"
CLEAN_BY_K = "clean_by_k/"      # noisy prompts: errors against the clean target (excess risk)


def task_overrides(task, shots=None, ways=None, queries=None, data_root=None, noise_std=None,
                   within_alphabet=None):
    """Evaluation flags as changes to config["task"] (the registry's flag table)."""
    from .tasks.registry import task_overrides as overrides
    return overrides(task, shots=shots, ways=ways, queries=queries, data_root=data_root,
                     noise_std=noise_std, within_alphabet=within_alphabet)


def evaluate_run(run_dir, shots=None, ways=None, queries=None, inner_steps=None, n_tasks=600,
                 batch_size=100, seed=None, baselines=True, data_root=None, noise_std=None,
                 within_alphabet=None):
    """Score the last checkpoint of `run_dir` on `n_tasks` held-out tasks.

    within_alphabet: True draws every episode's classes from one alphabet
    (Lake et al. 2015's runs), False from all held-out alphabets, None as
    the run was trained.
    """
    config, learner, theta, step = train.load_run(run_dir)
    eval_config = copy.deepcopy(config)
    eval_config["task"].update(task_overrides(config["task"]["name"], shots, ways, queries, data_root,
                                              noise_std, within_alphabet))
    if within_alphabet is False:
        eval_config["task"]["within_alphabet"] = False
    if noise_std is not None:              # ridge's lambda is tuned at the noise of the evaluation
        learner = train.make_learner(eval_config)
    sampler = train.make_sampler(eval_config, "test", seed=seed)
    options = {} if inner_steps is None else {"inner_steps": inner_steps}
    if not baselines:
        options["baselines"] = False  # learners may skip costly baselines
    result = train.evaluate(learner, theta, sampler, n_tasks=n_tasks, batch_size=batch_size, **options)
    if baselines:
        result.update(_extra_baselines(eval_config, learner, sampler, n_tasks, batch_size, seed, options))
    head = result.get(learner.metric)
    if head is None:
        raise ValueError(f"{learner.name}.evaluate returned no {learner.metric!r}")
    report = {"algorithm": config["algorithm"], "task": eval_config["task"], "step": step,
              "metric": learner.metric, "mean": head["mean"], "ci95": head["ci95"],
              "tasks": head["tasks"], "options": options, "baselines": {}, "metrics": {}}
    curves = {BY_K: {}, CLEAN_BY_K: {}}            # prefix -> k -> method -> mean
    for name, value in result.items():
        if name == learner.metric:
            continue
        prefix = next((p for p in curves if name.startswith(p)), None)
        if name.startswith(BASELINE):
            report["baselines"][name[len(BASELINE):]] = value
        elif prefix:
            k, method = name[len(prefix):].split("/", 1)
            curves[prefix].setdefault(k, {})[method] = value["mean"]
        else:
            report["metrics"][name] = value
    for prefix, by_k in curves.items():
        if by_k:
            report[prefix.rstrip("/")] = {k: by_k[k] for k in sorted(by_k, key=int)}
    return report


def _extra_baselines(config, learner, sampler, n_tasks, batch_size, seed, options):
    """Baselines that need their own training (e.g. MAML's 'pretrained' on sinusoid)."""
    module = train.algorithm_module(config["algorithm"])
    hook = getattr(module, "extra_baselines", None)
    if hook is None:
        return {}
    fresh = train.make_sampler(config, "test", seed=seed)          # the same held-out tasks
    return hook(config, learner, fresh, n_tasks=n_tasks, batch_size=batch_size, **options)


def format_report(report):
    """A few readable lines."""
    lines = [f"{report['algorithm']} on {report['task']['name']} (step {report['step']}): "
             f"{report['metric']} = {report['mean']:.4g} +- {report['ci95']:.2g} "
             f"(95% CI, {report['tasks']} tasks)"]
    for name, value in sorted(report["baselines"].items()):
        lines.append(f"  baseline {name:<14} {value['mean']:.4g} +- {value['ci95']:.2g}")
    for name, value in sorted(report["metrics"].items()):
        lines.append(f"  {name:<23} {value['mean']:.4g} +- {value['ci95']:.2g}")
    for key, label in (("by_k", ""), ("clean_by_k", "clean ")):
        for k, methods in report.get(key, {}).items():
            lines.append(f"  {label}k={k:<4} " + "  ".join(f"{m} {v:.3g}" for m, v in sorted(methods.items())))
    return "\n".join(lines)
