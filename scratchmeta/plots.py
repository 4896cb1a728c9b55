"""Pictures of a run: learning curves, and for sinusoid runs the adaptation figure.

Needs matplotlib (pip install 'scratchmeta[plot]'); the Agg backend is used,
so no display is needed.
"""
import os

from . import backend, runs, train


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install 'scratchmeta[plot]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path, dpi=120):
    """Write a matplotlib figure to `path` atomically (never half a PNG); make its folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"cannot write {path}: {folder} is a file, not a folder")
    os.makedirs(folder, exist_ok=True)
    fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    runs.atomic_save(path, lambda f: fig.savefig(f, dpi=dpi, format=fmt))
    return path


def learning_curves(run_dir, path):
    """Held-out metric (mean and 95% CI band) and training loss against meta-steps."""
    records = runs.read_metrics(run_dir)
    if not records:
        raise ValueError(f"{run_dir} has no evaluations in {runs.METRICS} to plot "
                         f"(train with --eval-every N)")
    config = train.validate_config(runs.read_json(os.path.join(run_dir, runs.CONFIG)))
    plt = _pyplot()
    steps = [r["step"] for r in records]
    names = sorted({k for r in records for k in r["eval"]
                    if not k.startswith(("by_k/", "baseline/"))})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].plot(steps, [r["train_loss"] for r in records], color="k")
    axes[0].set(xlabel="meta-step", ylabel="meta-training loss", title="training")
    for name in names:
        pts = [(r["step"], r["eval"][name]) for r in records if name in r["eval"]]
        x = backend.host.array([p[0] for p in pts])
        m = backend.host.array([p[1]["mean"] for p in pts], dtype=float)   # null (no CI) -> nan
        c = backend.host.array([p[1]["ci95"] for p in pts], dtype=float)
        axes[1].plot(x, m, label=name)
        axes[1].fill_between(x, m - c, m + c, alpha=0.2)
    axes[1].set(xlabel="meta-step", title="held-out tasks (mean, 95% CI)")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{config['algorithm']} on {config['task']['name']}")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def sinusoid_adaptation(run_dir, path, shots=None, steps=(1, 10), seed=0, loaded=None):
    """Finn et al. 2017 Fig. 2: one held-out sine before and after 1 and 10 steps.

    `loaded` is train.load_run(run_dir)'s result if the caller has it already.
    """
    config, learner, theta, _ = loaded or train.load_run(run_dir)
    if not hasattr(learner, "predict_adapted"):
        raise ValueError(f"{config['algorithm']} has no adaptation to plot")
    plt = _pyplot()
    task = dict(config["task"], k_support=shots or config["task"]["k_support"])
    sampler = train.make_sampler(dict(config, task=task), "test", seed=seed)
    batch = sampler.sample(1)
    grid = backend.host.linspace(-5, 5, 200).reshape(1, 200, 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    amp = float(backend.to_numpy(batch["amplitude"])[0])
    phase = float(backend.to_numpy(batch["phase"])[0])
    ax.plot(grid[0, :, 0], amp * backend.host.sin(grid[0, :, 0] - phase), "r", lw=2, label="ground truth")
    for k, style in zip((0,) + tuple(steps), (":", "--", "-")):
        pred = learner.predict_adapted(theta, batch, backend.asarray(grid, dtype=theta[next(iter(theta))].dtype), steps=k)
        ax.plot(grid[0, :, 0], backend.to_numpy(pred.data)[0, :, 0], style, color="tab:blue" if k else "tab:gray",
                label="pre-update" if k == 0 else f"{k} grad step{'s' if k > 1 else ''}")
    sx = backend.to_numpy(batch["support_x"])[0, :, 0]
    sy = backend.to_numpy(batch["support_y"])[0, :, 0]
    ax.plot(sx, sy, "^", color="purple", label=f"{len(sx)} support points")
    ax.set(xlabel="x", ylabel="y", title=f"{config['algorithm']}, K={len(sx)}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def plot_run(run_dir, out=None):
    """Every figure that fits the run; returns the PNG paths written."""
    if not os.path.exists(os.path.join(run_dir, runs.CONFIG)):
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {runs.CONFIG})")
    out = out or run_dir
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"{out} is a file, not a folder for the PNGs")
    os.makedirs(out, exist_ok=True)
    config = train.validate_config(runs.read_json(os.path.join(run_dir, runs.CONFIG)))
    adaptation = config["task"]["name"] == "sinusoid" and config["algorithm"] != "cnp"
    loaded = train.load_run(run_dir) if adaptation else None    # every file checked before writing
    paths = [learning_curves(run_dir, os.path.join(out, "learning_curves.png"))]
    if adaptation:
        paths.append(sinusoid_adaptation(run_dir, os.path.join(out, "adaptation.png"), loaded=loaded))
    return paths
