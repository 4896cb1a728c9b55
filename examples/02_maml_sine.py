"""MAML on sinusoid regression, beside the "pretrained" baseline (Finn et al. 2017, Fig. 2).

Finn, Abbeel & Levine 2017, arXiv:1703.03400v3, Sec. 5.1. Each task is
y = A sin(x - phase), A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5]. MAML
learns theta such that one step of Eq. 1,

    phi = theta - alpha * grad L_support(theta),      alpha = 0.01, K = 10 points,

fits a new sinusoid; Eq. 3 trains theta through that step (second order).
The baseline regresses all tasks jointly, then fine-tunes with the same
steps. Both are scored on 600 held-out tasks after 1 and 10 steps, with
K = 5 and K = 10 support points (mean +- 95% CI), and maml_sine.png shows
one held-out task before and after 1 and 10 steps, as the paper's Fig. 2
does (written to --out, default ./example-output; docs/maml_sine.png is
this figure).

    python examples/02_maml_sine.py            # about a minute on 2 CPU cores
"""
import argparse
import os
import time

import numpy as np

import scratchmeta as sm
from scratchmeta import nn, train
from scratchmeta.plots import save_figure
from scratchmeta.algorithms import common, maml, pretrained
from scratchmeta.optim import Adam
from scratchmeta.tasks.regression import Sinusoid

def adapted_curves(model, theta, task, alpha, steps, grid):
    """Predictions on `grid` after 0..max(steps) SGD steps on the task's support set."""
    batch = dict(task, query_x=grid, query_y=grid * 0)
    curves = {}
    with sm.enable_grad():
        phi = nn.batched(common.fresh(theta), 1)

        def support_loss(p):
            return maml.task_losses(model(p, task["support_x"]), task["support_y"]).sum()

        for j in range(max(steps) + 1):
            if j:
                phi = maml.inner_update(phi, support_loss, alpha, first_order=True)
            if j in steps:
                curves[j] = model(phi, batch["query_x"]).numpy()[0, :, 0]
    return curves


def plot(model, theta, base, alpha, k_support, path, seed=2024):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = Sinusoid(k_support=k_support, k_query=1, seed=seed).sample(1)
    grid = np.linspace(-5, 5, 200)
    grid_b = sm.backend.asarray(grid.reshape(1, -1, 1))
    truth = Sinusoid.function(task["amplitude"][0], task["phase"][0], grid)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, (name, params) in zip(axes, (("MAML", theta), ("pretrained", base))):
        curves = adapted_curves(model, params, task, alpha, (0, 1, 10), grid_b)
        ax.plot(grid, truth, "r", label="ground truth")
        ax.plot(grid, curves[0], ":", color="lightgreen", label="pre-update")
        ax.plot(grid, curves[1], "--", color="darkgreen", label="1 grad step")
        ax.plot(grid, curves[10], "-.", color="seagreen", label="10 grad steps")
        ax.plot(task["support_x"].ravel(), task["support_y"].ravel(), "^", color="purple",
                label=f"{k_support} support points")
        ax.set_title(f"{name}, K = {k_support}")
        ax.set_xlabel("x")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def score(model, params, alpha, k_support, n_tasks, seed=7):
    """mse after 1 and 10 steps on n_tasks held-out tasks: {steps: (mean, ci95)}."""
    sampler = Sinusoid(k_support=k_support, k_query=10, seed=seed)
    per_task = {1: [], 10: []}
    for _ in range(0, n_tasks, 100):
        out = pretrained.finetune_evaluate(model, params, sampler.sample(min(100, n_tasks)),
                                           alpha, steps=10)
        for s in per_task:
            per_task[s].append(sm.backend.to_numpy(out[f"mse_step{s}"]))
    return {s: train.mean_ci95(np.concatenate(v)) for s, v in per_task.items()}


def main(steps=3000, meta_batch=25, alpha=0.01, n_tasks=600, pretrain_steps=3000, seed=0,
         png=None, progress=True):
    model = nn.MLP((1, 40, 40, 1))
    learner = maml.MAML(model, inner_lr=alpha, inner_steps=1)
    t0 = time.time()
    theta, _ = train.meta_train(learner, Sinusoid(seed=seed), steps, meta_batch,
                                optimizer=Adam(lr=1e-3), seed=seed, progress=progress)
    t_maml = time.time() - t0
    t0 = time.time()
    base = pretrained.pretrain(model, Sinusoid(seed=seed + 1), pretrain_steps, seed=seed,
                               lr=1e-3, batch_tasks=meta_batch)
    t_base = time.time() - t0
    print(f"MAML: {steps} meta-steps in {t_maml:.1f} s ({1e3 * t_maml / max(steps, 1):.2f} ms/step); "
          f"pretrained: {pretrain_steps} steps in {t_base:.1f} s")
    print(f"mean-squared error on {n_tasks} held-out tasks (mean +- 95% CI):")
    print(f"{'':12s}{'K':>3s} {'1 step':>18s} {'10 steps':>18s}")
    results = {}
    for k in (5, 10):
        for name, params in (("MAML", theta), ("pretrained", base)):
            r = score(model, params, alpha, k, n_tasks)
            results[(name, k)] = r
            print(f"{name:12s}{k:3d} " + " ".join(f"{m:9.3f} +- {c:5.3f}" for m, c in
                                                 (r[1], r[10])))
    if png:
        plot(model, theta, base, alpha, 10, png)
        print(f"wrote {os.path.normpath(png)}")
    return results


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3000, help="MAML meta-steps")
    p.add_argument("--pretrain-steps", type=int, default=3000, help="steps of the pretrained baseline")
    p.add_argument("--tasks", type=int, default=600, help="held-out tasks")
    p.add_argument("--out", default="example-output", help="folder for maml_sine.png")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args()
    main(steps=a.steps, pretrain_steps=a.pretrain_steps, n_tasks=a.tasks,
         png=os.path.join(a.out, "maml_sine.png"), progress=not a.no_progress)
