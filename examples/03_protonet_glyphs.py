"""Prototypical Networks on the offline glyph set (Snell et al. 2017, Eqs. 1-2).

A Conv4 embedding f maps each image to a point; a class is the mean of its
support embeddings and a query goes to the nearest mean, softly:

    c_k = 1/|S_k| sum_{i in S_k} f(x_i)                                 (Eq. 1)
    p(y = k | x) = softmax_k(-||f(x) - c_k||^2)                         (Eq. 2)

The script trains on 5-way episodes of the training glyph classes, then
scores 600 test episodes of unseen classes (15 queries a class; mean +- 95%
CI) beside chance and the same classifier on raw pixels. On one test episode
it also checks the paper's Sec. 2.4 remark (the linear classifier with
W_k = 2 c_k, b_k = -||c_k||^2 predicts the same) and that the hand-derived
gradient (docs/protonet.md) equals the engine's.

    python examples/03_protonet_glyphs.py                   # about 2 minutes on 2 cores
    python examples/03_protonet_glyphs.py --hidden 64 --steps 600 --shots 1 5
    python examples/03_protonet_glyphs.py --algorithm matching   # Matching Networks

Set OPENBLAS_NUM_THREADS=1 on a busy 2-core machine: OpenBLAS threads on the
small batched matrix products of conv2d slow them down there.
"""
import argparse
import time

import numpy as np

import scratchmeta as sm
from scratchmeta import train
from scratchmeta.algorithms import make_learner
from scratchmeta.algorithms import protonet as P
from scratchmeta.optim import make_optimizer


def check_on_episode(learner, theta, batch):
    """Sec. 2.4 and the closed-form gradient on one real episode (float of the run)."""
    one = {k: v[:1] for k, v in batch.items()}
    n_way = P.episode_ways(one)
    z_s, z_q = learner.embed(theta, one)
    z_s, z_q = sm.tensor(z_s.data, requires_grad=True), sm.tensor(z_q.data, requires_grad=True)
    c = P.prototypes(z_s, one["support_y"], n_way)
    w, b = P.as_linear_classifier(c)
    linear = sm.F.linear(z_q, w, b).numpy().argmax(-1)
    proto = P.log_probs(z_q, c).numpy().argmax(-1)
    loss = P.episode_loss(z_s, one["support_y"], z_q, one["query_y"], n_way).sum()
    g_s, g_q = sm.grad(loss, [z_s, z_q])
    _, h_q, h_s = P.protonet_loss_grad_closed_form(z_s, one["support_y"], z_q, one["query_y"], n_way)
    scale = max(np.abs(g_q.numpy()).max(), np.abs(g_s.numpy()).max())
    gap = max(np.abs(g_q.numpy() - h_q.numpy()).max(), np.abs(g_s.numpy() - h_s.numpy()).max())
    print(f"  one test episode: linear classifier (W = 2c, b = -||c||^2) agrees on "
          f"{(linear == proto).mean():.0%} of queries; hand-derived gradient vs engine: "
          f"max |diff| {gap:.1e} (max |grad| {scale:.1e})")


def main(algorithm="protonet", shots=(1,), n_way=5, hidden=32, steps=300, train_ways=None,
         train_queries=5, n_test=600, test_queries=15, lr=1e-3, seed=0, dtype="float32",
         progress=True):
    sm.set_default_dtype(dtype)
    results = {}
    for k_shot in shots:
        config = train.build_config(algorithm, "glyphs", {
            "task": {"n_way": n_way, "k_shot": k_shot, "n_query": test_queries},
            "model": {"hidden": hidden}, "optimizer": {"lr": lr}, "seed": seed,
            "algo": {"train_ways": train_ways, "train_queries": train_queries}})
        learner = make_learner(config)
        sampler = train.make_sampler(config, "train")
        t0 = time.time()
        theta, _ = train.meta_train(learner, sampler, steps, 1, seed=seed, progress=progress,
                                    optimizer=make_optimizer(config["optimizer"]))
        t1 = time.time()
        test = train.make_sampler(config, "test")
        result = train.evaluate(learner, theta, test, n_tasks=n_test, batch_size=20)
        t2 = time.time()
        acc, pix = result["accuracy"], result["baseline/pixels"]
        print(f"{algorithm}, Conv4-{hidden}, {n_way}-way {k_shot}-shot glyphs: "
              f"{100 * acc['mean']:.2f} +- {100 * acc['ci95']:.2f} % over {acc['tasks']} test "
              f"episodes ({sampler.n_way}-way training, {steps} steps in {t1 - t0:.0f} s, "
              f"eval {t2 - t1:.0f} s)")
        print(f"  baselines: chance {100 * result['baseline/chance']['mean']:.1f} %, raw pixels "
              f"{100 * pix['mean']:.2f} +- {100 * pix['ci95']:.2f} %")
        if algorithm == "protonet":
            check_on_episode(learner, theta, test.sample(1))
        results[k_shot] = result
    return results


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--algorithm", default="protonet", choices=("protonet", "matching"))
    p.add_argument("--shots", type=int, nargs="+", default=[1])
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--train-ways", type=int, default=None, help="N of training episodes")
    p.add_argument("--hidden", type=int, default=32, help="Conv4 filters (64 in the paper)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--test-episodes", type=int, default=600)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args()
    main(algorithm=a.algorithm, shots=tuple(a.shots), n_way=a.ways, hidden=a.hidden,
         steps=a.steps, train_ways=a.train_ways, n_test=a.test_episodes, progress=not a.no_progress)
