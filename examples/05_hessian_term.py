"""How much does the Hessian term that FOMAML drops matter? Measure it.

Finn, Abbeel & Levine 2017, arXiv:1703.03400v3, Eqs. 1-3. With one inner step

    grad_theta L_query(phi) = g  -  alpha * H_support(theta) @ g,     g = grad L_query(phi)
                              ^first-order part   ^Hessian term (FOMAML drops it)

maml.meta_gradient_split returns the two parts (the Hessian term by double
backward). For a growing inner step alpha this script prints, averaged over
a batch of 25 sinusoid tasks, the cosine similarity between the MAML and
FOMAML meta-gradients and the norm ratios |FOMAML| / |MAML| and
|Hessian term| / |MAML|, at a random initialisation and at a
MAML-trained theta (where the loss is more curved around the fitted
sinusoids), and plots them in hessian_term.png (in --out, default ./example-output;
docs/hessian_term.png is this figure).

    python examples/05_hessian_term.py
"""
import os

import numpy as np

from scratchmeta import backend, nn, train
from scratchmeta.algorithms import maml
from scratchmeta.optim import Adam
from scratchmeta.tasks.regression import Sinusoid



def flat(grads):
    return np.concatenate([backend.to_numpy(g.data).ravel() for g in grads.values()])


def compare(model, theta, batch, alpha, steps=1):
    """(cos(MAML, FOMAML), |FOMAML|/|MAML|, |Hessian term|/|MAML|) at one alpha."""
    first, hess = maml.meta_gradient_split(model, theta, batch, alpha, steps)
    fo, h = flat(first), flat(hess)
    full = fo + h
    n = np.linalg.norm(full)
    return float(fo @ full / (np.linalg.norm(fo) * n)), float(np.linalg.norm(fo) / n), \
        float(np.linalg.norm(h) / n)


def main(alphas=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3), train_steps=1000, n_batches=4, seed=0,
         png=None):
    model = nn.MLP((1, 40, 40, 1))
    learner = maml.MAML(model, inner_lr=0.01, inner_steps=1)
    thetas = {"init": learner.init(seed)}
    thetas["trained"], _ = train.meta_train(learner, Sinusoid(seed=seed), train_steps, 25,
                                            optimizer=Adam(lr=1e-3), seed=seed, progress=False)
    batches = Sinusoid(seed=seed + 5).sample(25 * n_batches)
    table = {}
    print("one inner step; mean over", n_batches, "batches of 25 tasks")
    print(f"{'theta':8s}{'alpha':>8s}{'cos':>9s}{'|FO|/|MAML|':>13s}{'|H|/|MAML|':>12s}")
    for name, theta in thetas.items():
        for alpha in alphas:
            rows = [compare(model, theta, {k: v[i * 25:(i + 1) * 25] for k, v in batches.items()},
                            alpha) for i in range(n_batches)]
            table[(name, alpha)] = tuple(np.mean(rows, axis=0))
            c, r, h = table[(name, alpha)]
            print(f"{name:8s}{alpha:8.3f}{c:9.4f}{r:13.4f}{h:12.4f}")
    if png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        for name in thetas:
            axes[0].semilogx(alphas, [table[(name, a)][0] for a in alphas], "o-", label=f"theta {name}")
            axes[1].loglog(alphas, [table[(name, a)][2] for a in alphas], "o-", label=f"theta {name}")
        axes[0].set(xlabel="inner step alpha", ylabel="cos(MAML, FOMAML)")
        axes[1].set(xlabel="inner step alpha", ylabel="|Hessian term| / |MAML gradient|")
        axes[0].legend()
        fig.tight_layout()
        from scratchmeta.plots import save_figure
        save_figure(fig, png, dpi=110)
        plt.close(fig)
        print(f"wrote {os.path.normpath(png)}")
    return table


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-steps", type=int, default=1000, help="MAML steps to the trained theta")
    p.add_argument("--batches", type=int, default=4, help="batches of 25 tasks averaged")
    p.add_argument("--out", default="example-output", help="folder for hessian_term.png")
    a = p.parse_args()
    main(train_steps=a.train_steps, n_batches=a.batches, png=os.path.join(a.out, "hessian_term.png"))
