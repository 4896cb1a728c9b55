"""Reptile against first-order MAML on sinusoids, with the same budget.

Nichol, Achiam & Schulman 2018, arXiv:1803.02999v3. Both need only first
derivatives:

    FOMAML  (Finn et al. Sec. 5.2):  g = grad L_query(phi),   phi after k steps of Eq. 1
    Reptile (Algorithm 2):           theta <- theta + eps * mean_i (W_i - theta)

and Sec. 5.1 shows both follow, to leading order in alpha, gbar - alpha Hbar gbar
(tests/test_reptile.py checks that expansion). Same meta-steps, same 25
tasks a step, same K = 10 support points; each is scored on 600 held-out
tasks after 1 and 10 steps of its own inner SGD (mean +- 95% CI), with
second-order MAML beside them.

    python examples/04_reptile_vs_fomaml.py
"""
import time

from scratchmeta import nn, train
from scratchmeta.algorithms import maml, reptile
from scratchmeta.optim import SGD, Adam
from scratchmeta.tasks.regression import Sinusoid


def main(steps=2000, meta_batch=25, n_tasks=600, seed=0):
    model = nn.MLP((1, 40, 40, 1))
    runs = [("MAML", maml.MAML(model, inner_lr=0.01, inner_steps=1), Adam(lr=1e-3)),
            ("FOMAML", maml.MAML(model, inner_lr=0.01, inner_steps=1, first_order=True), Adam(lr=1e-3)),
            ("Reptile", reptile.Reptile(model, inner_lr=0.02, inner_steps=5), SGD(lr=1.0))]
    print(f"{steps} meta-steps of {meta_batch} tasks; mse on {n_tasks} held-out tasks, K = 10:")
    print(f"{'':9s}{'s/run':>7s} {'1 step':>18s} {'10 steps':>18s}")
    results = {}
    for name, learner, opt in runs:
        t0 = time.time()
        theta, _ = train.meta_train(learner, Sinusoid(seed=seed), steps, meta_batch,
                                    optimizer=opt, seed=seed, progress=False)
        seconds = time.time() - t0
        r = train.evaluate(learner, theta, Sinusoid(seed=seed + 7), n_tasks=n_tasks, inner_steps=10)
        results[name] = r
        print(f"{name:9s}{seconds:7.1f} " + " ".join(
            f"{r[key]['mean']:9.3f} +- {r[key]['ci95']:5.3f}" for key in ("mse_step1", "mse_step10")))
    return results


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000, help="meta-steps of each algorithm")
    p.add_argument("--tasks", type=int, default=600, help="held-out tasks")
    a = p.parse_args()
    main(steps=a.steps, n_tasks=a.tasks)
