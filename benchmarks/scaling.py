"""How the second-order sinusoid MAML step grows with meta-batch size and inner steps.

Two sweeps on maml_sine_2nd, scratchmeta against torch_loop:
meta-batch size T in {5, 10, 25, 50, 100} at one inner step, and inner
steps k in {1, 2, 3, 5} at T = 25. Each point is checked for agreement
and timed interleaved, as in the main benchmark.
"""
import harness
import workloads

IMPLS = ("torch_loop", "scratchmeta")
META_BATCH = (5, 10, 25, 50, 100)
INNER_STEPS = (1, 2, 3, 5)
REPEATS = 10


def _point(impls, args, dtype, **overrides):
    problem = workloads.make("maml_sine_2nd", dtype, **overrides)
    runners = harness.build_runners(problem, impls)
    times = harness.time_interleaved(runners, args.repeats or REPEATS, warmup=args.warmup)
    harness.check_agreement(problem, {n: r.result() for n, r in runners.items()},
                            *harness.tolerances(dtype))
    return {name: s["median_ms"] for name, s in harness.summarize(times).items()}


def run(args, dtype):
    impls = harness.load_impls(IMPLS)
    report = {"meta_batch": {}, "inner_steps": {}}
    print("\nmaml_sine_2nd median ms vs meta-batch size (1 inner step)")
    print(f"  {'T':>4} " + " ".join(f"{n:>12}" for n in impls))
    for n_tasks in META_BATCH:
        medians = _point(impls, args, dtype, n_tasks=n_tasks)
        report["meta_batch"][n_tasks] = medians
        print(f"  {n_tasks:>4} " + " ".join(f"{medians[n]:>12.2f}" for n in impls), flush=True)
    print("\nmaml_sine_2nd median ms vs inner steps (25 tasks)")
    print(f"  {'k':>4} " + " ".join(f"{n:>12}" for n in impls))
    for steps in INNER_STEPS:
        medians = _point(impls, args, dtype, inner_steps=steps)
        report["inner_steps"][steps] = medians
        print(f"  {steps:>4} " + " ".join(f"{medians[n]:>12.2f}" for n in impls), flush=True)
    return report


def plot(report, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (sweep, label) in zip(axes, [("meta_batch", "meta-batch size (tasks)"),
                                         ("inner_steps", "inner steps")]):
        xs = sorted(report[sweep])
        for impl in next(iter(report[sweep].values())):
            ax.plot(xs, [report[sweep][x][impl] for x in xs], "o-", label=impl)
        ax.set_xlabel(label)
        ax.set_ylabel("median ms per meta-step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("second-order sinusoid MAML step, one CPU thread")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")
