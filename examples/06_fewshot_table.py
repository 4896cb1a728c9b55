"""One table, one run, the same test episodes: ProtoNet, Matching Net, MAML, FOMAML, Reptile.

Every algorithm trains a Conv4 on the same task distribution (5-way K-shot
episodes of the training classes) and is scored on the SAME held-out test
episodes: the test sampler's RNG state is saved once and restored before
each algorithm, so the five rows differ only by the algorithm. Scores are
query accuracy, mean +- 95% CI (1.96 standard errors) over the episodes.

    ProtoNet      softmax over -||f(x) - c_k||^2, c_k = class mean   (Snell et al. 2017, Eqs. 1-2)
    Matching Net  attention over cosines to the support set           (Vinyals et al. 2016, Eqs. 1-2)
    MAML          phi = theta - alpha grad L_support(theta), second order (Finn et al. 2017, Eqs. 1-3)
    FOMAML        the same with the Hessian term dropped
    Reptile       theta <- theta + eps (phi - theta)                  (Nichol et al. 2018, Alg. 2)

Training budgets (STEPS) aim at roughly equal CPU time per algorithm and
are far below the papers' budgets, so this table compares algorithms at an
equal, small CPU budget, not at convergence; --scale multiplies every
budget. The defaults are a quick look (1-shot, a fifth of the budgets, 100
test episodes, about two minutes); the table in docs/results.md is the full
run (1 and 5 shots, full budgets, 600 episodes), which took 36 minutes on a
shared, busy 2-core VM (float32, one BLAS thread), most of it evaluating MAML,
FOMAML and Reptile.

    OPENBLAS_NUM_THREADS=1 python examples/06_fewshot_table.py
    OPENBLAS_NUM_THREADS=1 python examples/06_fewshot_table.py --shots 1 5 --scale 1 --test-episodes 600
"""
import argparse
import time

import scratchmeta as sm
from scratchmeta import runs, train
from scratchmeta.algorithms import make_learner
from scratchmeta.optim import make_optimizer

ALGORITHMS = ("protonet", "matching", "maml", "fomaml", "reptile")
# steps per algorithm and k_shot at scale 1: roughly equal CPU minutes per row
STEPS = {("protonet", 1): 500, ("protonet", 5): 400,
         ("matching", 1): 500, ("matching", 5): 400,
         ("maml", 1): 100, ("maml", 5): 60,
         ("fomaml", 1): 100, ("fomaml", 5): 60,
         ("reptile", 1): 100, ("reptile", 5): 50}


def experiment(algorithm, task, k_shot, n_way, hidden, train_queries, test_queries, seed,
               data_root=None):
    """The library's default config for `algorithm`, with the table's shared settings."""
    over = {"task": {"n_way": n_way, "k_shot": k_shot, "n_query": test_queries},
            "model": {"hidden": hidden}, "seed": seed}
    if data_root:
        over["task"]["data_root"] = data_root
    config = train.build_config(algorithm, task, over)
    if config["model"].get("n_classes"):           # MAML/Reptile: a head of n_way outputs
        config["model"]["n_classes"] = n_way
    if algorithm in ("protonet", "matching"):
        config["algo"]["train_ways"] = None        # train and test on the same N here
        config["algo"]["train_queries"] = train_queries
    return config


def main(task="glyphs", shots=(1,), n_way=5, hidden=32, algorithms=ALGORITHMS, scale=0.2,
         n_test=100, test_queries=5, train_queries=5, seed=0, dtype="float32", data_root=None,
         batch_size=10, json_path=None, progress=True):
    sm.set_default_dtype(dtype)
    rows = []
    for k_shot in shots:
        # one held-out sampler per shot setting; its state is rewound for every algorithm
        probe = experiment("protonet", task, k_shot, n_way, hidden, train_queries,
                           test_queries, seed, data_root)
        test_sampler = train.make_sampler(probe, "test")
        test_state = test_sampler.state_dict()
        for algorithm in algorithms:
            config = experiment(algorithm, task, k_shot, n_way, hidden, train_queries,
                                test_queries, seed, data_root)
            steps = max(1, int(round(STEPS[(algorithm, k_shot if k_shot in (1, 5) else 5)] * scale)))
            learner = make_learner(config)
            t0 = time.time()
            theta, _ = train.meta_train(learner, train.make_sampler(config, "train"), steps,
                                        config["meta_batch"], seed=seed, progress=progress,
                                        optimizer=make_optimizer(config["optimizer"], total_steps=steps))
            t1 = time.time()
            test_sampler.load_state_dict(test_state)          # the same test episodes
            result = train.evaluate(learner, theta, test_sampler, n_tasks=n_test,
                                    batch_size=batch_size)
            t2 = time.time()
            acc = result["accuracy"]
            row = {"algorithm": algorithm, "k_shot": k_shot, "steps": steps,
                   "meta_batch": config["meta_batch"], "accuracy": acc["mean"],
                   "ci95": acc["ci95"], "episodes": acc["tasks"],
                   "train_s": round(t1 - t0, 1), "eval_s": round(t2 - t1, 1)}
            rows.append(row)
            print(f"{n_way}-way {k_shot}-shot {algorithm:9s} {100 * acc['mean']:6.2f} "
                  f"+- {100 * acc['ci95']:.2f} %  ({steps} steps x {config['meta_batch']} "
                  f"episodes, train {row['train_s']} s, eval {row['eval_s']} s)", flush=True)
    print()
    print(table(rows, n_way))
    if json_path:                          # written whole or not at all
        runs.write_json(json_path, {"settings": {"task": task, "n_way": n_way, "hidden": hidden, "scale": scale,
                                    "n_test": n_test, "test_queries": test_queries,
                                    "train_queries": train_queries, "seed": seed, "dtype": dtype,
                                    "backend": sm.get_backend()}, "rows": rows})
    return rows


def table(rows, n_way):
    """Markdown: one row per algorithm, one column per shot setting."""
    shots = sorted({r["k_shot"] for r in rows})
    head = "| algorithm | " + " | ".join(f"{n_way}-way {k}-shot (steps)" for k in shots) + " |"
    lines = [head, "|---" * (len(shots) + 1) + "|"]
    for name in dict.fromkeys(r["algorithm"] for r in rows):
        cells = []
        for k in shots:
            r = next((r for r in rows if r["algorithm"] == name and r["k_shot"] == k), None)
            cells.append("" if r is None else
                         f"{100 * r['accuracy']:.1f} +- {100 * r['ci95']:.1f} % ({r['steps']})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="glyphs", choices=("glyphs", "omniglot", "digits"))
    p.add_argument("--data-root", default=None, help="Omniglot folder (task omniglot)")
    p.add_argument("--shots", type=int, nargs="+", default=[1])
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--hidden", type=int, default=32, help="Conv4 filters (64 in the papers)")
    p.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    p.add_argument("--scale", type=float, default=0.2,
                   help="multiply every training budget (1.0: the budgets of docs/results.md)")
    p.add_argument("--test-episodes", type=int, default=100,
                   help="test episodes (600 for the protocol of docs/results.md)")
    p.add_argument("--test-queries", type=int, default=5, help="queries a class in test episodes")
    p.add_argument("--backend", default="numpy", choices=("numpy", "cupy"))
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    a = p.parse_args()
    sm.set_backend(a.backend)
    main(task=a.task, shots=tuple(a.shots), n_way=a.ways, hidden=a.hidden,
         algorithms=tuple(a.algorithms), scale=a.scale, n_test=a.test_episodes,
         test_queries=a.test_queries, data_root=a.data_root, json_path=a.json,
         progress=not a.no_progress)
