"""Evaluating a run as the papers do: held-out tasks, mean and 95% CI, beside baselines.

`evaluate_run` is what `scratchmeta eval RUN` prints (as JSON with --json):
    {"metric": "mse", "mean": ..., "ci95": ..., "tasks": 600,
     "baselines": {"pretrained": {"mean": ..., "ci95": ...}, ...}, ...}
"""
import copy
import math
import sys

from . import train, transductive as transduction, tta as test_time

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
                 within_alphabet=None, tta=1, tta_queries=False, transductive=None,
                 refine_steps=None, progress=False):
    """Score the last checkpoint of `run_dir` on `n_tasks` held-out tasks (`progress`: a bar).

    within_alphabet: True draws every episode's classes from one alphabet
    (Lake et al. 2015's runs), False from all held-out alphabets, None as
    the run was trained.
    tta: M > 1 embeds each support image as the mean over M views, the
    original and M - 1 random distortions (test-time augmentation,
    scratchmeta.tta; protonet and matching); tta_queries=True the queries
    too. 1 (the default) is the plain evaluation. Baselines see no views.
    transductive: None (the default) classifies each query on its own;
    "softkmeans" first refines the prototypes with the episode's queries
    (Ren et al. 2018 Eq. 4, `refine_steps` steps, default 1); "assignment"
    assigns the queries to the classes one-to-one (each class the same
    number of queries: it exploits the episodes' balanced queries).
    scratchmeta.transductive; protonet only. Baselines are unchanged.
    """
    views = test_time.check_views(tta)
    transducer = transduction.make(transductive, refine_steps)     # fails before the run loads
    config, learner, theta, step = train.load_run(run_dir)
    eval_config = copy.deepcopy(config)
    eval_config["task"].update(task_overrides(config["task"]["name"], shots, ways, queries, data_root,
                                              noise_std, within_alphabet))
    if within_alphabet is False:
        eval_config["task"]["within_alphabet"] = False
    if noise_std is not None:              # ridge's lambda is tuned at the noise of the evaluation
        learner = train.make_learner(eval_config)
    sampler = train.make_sampler(eval_config, "test", seed=seed)
    # the distortions are drawn from the held-out seed, on a generator of their own
    test_time.install(learner, views, queries=tta_queries, seed=getattr(sampler, "seed", None))
    transduction.install(learner, transducer)
    options = {} if inner_steps is None else {"inner_steps": inner_steps}
    if not baselines:
        options["baselines"] = False  # learners may skip costly baselines
    result = train.evaluate(learner, theta, sampler, n_tasks=n_tasks, batch_size=batch_size,
                            progress=progress, **options)
    if baselines:
        result.update(_extra_baselines(eval_config, learner, sampler, n_tasks, batch_size, seed, options))
    head = result.get(learner.metric)
    if head is None:
        raise ValueError(f"{learner.name}.evaluate returned no {learner.metric!r}")
    if not math.isfinite(head["mean"]):
        raise FloatingPointError(
            f"held-out {learner.metric} of {run_dir} (step {step}) is {head['mean']}: the adapted "
            f"model diverged (try fewer --inner-steps, or retrain with a smaller --inner-lr)")
    report = {"algorithm": config["algorithm"], "task": eval_config["task"], "step": step,
              "metric": learner.metric, "mean": head["mean"], "ci95": head["ci95"],
              "tasks": head["tasks"], "options": options, "baselines": {}, "metrics": {}}
    if views > 1:
        report["tta"] = learner.test_augmentation.config()
    if transducer is not None:
        report["transductive"] = learner.transduction.config()
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
    if options.get("baselines", True) and config["task"]["name"] == "sinusoid":
        from .tasks.datasets import default_cache_dir
        print(f"baselines: the pretrained baseline is trained once ({config['steps']} steps) and "
              f"cached in {default_cache_dir()}; --no-baselines skips it", file=sys.stderr, flush=True)
    return hook(config, learner, fresh, n_tasks=n_tasks, batch_size=batch_size, **options)


def _pm(value):
    """'mean +- ci' of a {"mean", "ci95"} entry; a missing interval (one task) as 'n/a'."""
    ci = value.get("ci95")
    ci = "n/a" if ci is None or not math.isfinite(ci) else f"{ci:.2g}"
    return f"{value['mean']:.4g} +- {ci}"


def format_report(report):
    """A few readable lines."""
    lines = [f"{report['algorithm']} on {report['task']['name']} (step {report['step']}): "
             f"{report['metric']} = {_pm(report)} "
             f"(95% CI, {report['tasks']} tasks)"]
    if "tta" in report:
        tta, images = report["tta"], "support and query" if report["tta"]["queries"] else "support"
        lines.append(f"  test-time augmentation: each {images} image the mean of {tta['views']} views")
    if "transductive" in report:
        method = report["transductive"]["method"]
        lines.append("  transductive: " + (
            f"prototypes refined by {report['transductive']['refine_steps']} soft k-means step(s) "
            f"over the queries" if method == "softkmeans" else
            "queries assigned to the classes one-to-one (balanced queries assumed)"))
    for name, value in sorted(report["baselines"].items()):
        lines.append(f"  baseline {name:<14} {_pm(value)}")
    for name, value in sorted(report["metrics"].items()):
        lines.append(f"  {name:<23} {_pm(value)}")
    for key, label in (("by_k", ""), ("clean_by_k", "clean ")):
        for k, methods in report.get(key, {}).items():
            lines.append(f"  {label}k={k:<4} " + "  ".join(f"{m} {v:.3g}" for m, v in sorted(methods.items())))
    return "\n".join(lines)
