"""A Conditional Neural Process on MAML's sinusoids (Garnelo et al. 2018, arXiv:1807.01613v1).

The support set is encoded point by point and averaged (Eqs. 1-2),
r = (1/n) sum_i h(x_i, y_i); the decoder gives (mu, sigma) = g(x, r) at every
query x (Eq. 3). Training maximises the Gaussian log-likelihood of all the
task's points given a random-size context (Eq. 4). No gradient step happens
at test time: adaptation is the forward pass.

The CNP is compared with MAML (Finn et al. 2017, its default sinusoid
config) on the same 600 held-out tasks, with K = 5 and K = 10 support points.

    python examples/08_cnp_sine.py                                    # about 2 minutes
    python examples/08_cnp_sine.py --steps 20000 --maml-steps 15000   # the runs of docs/cnp.md
"""
import argparse
import importlib.util
import time

from scratchmeta.algorithms import make_learner
from scratchmeta.optim import make_optimizer
from scratchmeta.tasks.regression import Sinusoid
from scratchmeta.train import build_config, evaluate, meta_train


def train_and_score(config, steps, meta_batch, eval_tasks, eval_seed, progress):
    learner = make_learner(config)
    t0 = time.time()
    theta, _ = meta_train(learner, Sinusoid(config["task"]["k_support"], config["task"]["k_query"],
                                            seed=config.get("seed", 0)),
                          steps, meta_batch, optimizer=make_optimizer(config["optimizer"]),
                          seed=config.get("seed", 0), progress=progress)
    seconds = time.time() - t0
    # the same held-out tasks for every learner: one seed, K support + 10 query points
    scores = {K: evaluate(learner, theta, Sinusoid(K, 10, seed=eval_seed), n_tasks=eval_tasks)
              for K in (5, 10)}
    return scores, seconds


def main(steps=4000, meta_batch=32, maml_steps=3000, eval_tasks=600, eval_seed=2024,
         compare_maml=True, progress=True):
    results = {}
    config = build_config("cnp", "sinusoid")
    results["cnp"] = train_and_score(config, steps, meta_batch, eval_tasks, eval_seed, progress)
    if compare_maml and importlib.util.find_spec("scratchmeta.algorithms.maml"):
        mconfig = build_config("maml", "sinusoid")
        results["maml"] = train_and_score(mconfig, maml_steps, mconfig["meta_batch"], eval_tasks,
                                          eval_seed, progress)
    print(f"query mse on {eval_tasks} held-out sinusoid tasks (mean +- 95% CI)")
    for name, (scores, seconds) in results.items():
        line = "  ".join(f"K={K}: {s['mse']['mean']:.3f} +- {s['mse']['ci95']:.3f}"
                         for K, s in scores.items())
        print(f"  {name:<5} {line}   (trained in {seconds:.0f} s)")
    nll = results["cnp"][0]
    print("  cnp nll per query point: " + "  ".join(
        f"K={K}: {s['nll']['mean']:.3f} +- {s['nll']['ci95']:.3f}" for K, s in nll.items()))
    return results


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4000,
                   help="CNP training steps (20000 for docs/cnp.md)")
    p.add_argument("--maml-steps", type=int, default=3000,
                   help="MAML training steps (15000 for docs/cnp.md)")
    p.add_argument("--no-maml", action="store_true")
    a = p.parse_args()
    main(steps=a.steps, maml_steps=a.maml_steps, compare_maml=not a.no_maml)
