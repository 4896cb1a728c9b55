"""A whole default training run, timed: `scratchmeta train` beside the same run in PyTorch.

    python benchmarks/train_time.py                     # ProtoNet on omniglot-minimal, its recipe
    python benchmarks/train_time.py --steps 50          # a short check of the script itself

The scratchmeta side is the command a user runs, `scratchmeta train protonet --task
omniglot-minimal --eval-every 0 --no-progress`, in a process of its own. The PyTorch
side is the same recipe as a PyTorch user writes it, also in its own process: an
nn.Module Conv4-64 (peers/torch_common.Conv4, batch norm from the batch), the loss of
Snell et al. (squared Euclidean distances to the class means), loss.backward(),
torch.optim.Adam with the recipe's learning rate and its halving (StepLR). Its episodes
come from scratchmeta's own training sampler (tasks.registry.make_sampler), seeded as
`scratchmeta train` seeds it, so both runs see the same episodes, with whatever the
recipe does to them (ways, queries, augmentation). One step of the two is checked equal
by the `protonet_omniglot` workload of run.py; this script only times.

Both run on one thread (OMP/MKL/OpenBLAS set to 1, torch.set_num_threads(1)). Held-out
evaluation during training is off on both sides (--eval-every 0), so that both do the
same work: sampling, forward, backward and the optimiser, plus scratchmeta's checkpoints.
Reported: wall seconds and CPU seconds (user + system, getrusage of the child), and the
ratio scratchmeta / PyTorch.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ONE_THREAD = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def _timed(cmd):
    """(wall s, cpu s) of a child process; its stderr is passed through on failure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, env=dict(os.environ, **ONE_THREAD), capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} ... failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def torch_run(algorithm, task, steps, seed):
    """The recipe's training run in PyTorch (the child process of --worker torch)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, HERE)
    from peers.torch_common import Conv4, sq_dist
    from scratchmeta import backend, train

    torch.set_num_threads(1)
    config = train.build_config(algorithm, task, {"seed": seed})
    if steps is not None:
        config["steps"] = steps
    if algorithm != "protonet":
        sys.exit("train_time.py: only protonet has a PyTorch twin here")
    backend.set_default_dtype(config["dtype"])
    sampler = train.make_sampler(config, "train")
    torch.manual_seed(seed)
    dtype = getattr(torch, config["dtype"])
    model = Conv4(head=False, hidden=config["model"]["hidden"]).to(dtype)
    opt = config["optimizer"]
    optimizer = torch.optim.Adam(model.parameters(), lr=opt["lr"])
    halve = opt.get("halve_every")
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, halve, 0.5) if halve else None
    size = config["model"]["image_size"]

    def images(a):
        return torch.from_numpy(np.ascontiguousarray(backend.to_numpy(a))).reshape(-1, 1, size, size)

    for _ in range(config["steps"]):
        episode = sampler.sample(config["meta_batch"])          # meta_batch is 1 for ProtoNet
        support, query = images(episode["support_x"]), images(episode["query_x"])
        query_y = torch.from_numpy(backend.to_numpy(episode["query_y"]).reshape(-1))
        n_way = int(episode["classes"].shape[-1])
        z = model(torch.cat([support, query]))
        prototypes = z[:support.shape[0]].reshape(n_way, -1, z.shape[-1]).mean(1)
        loss = F.cross_entropy(-sq_dist(z[support.shape[0]:], prototypes), query_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
    print(json.dumps({"final_loss": float(loss)}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algorithm", default="protonet", choices=["protonet"])
    parser.add_argument("--task", default="omniglot-minimal")
    parser.add_argument("--steps", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=["torch"], help=argparse.SUPPRESS)
    parser.add_argument("--json", metavar="OUT", help="also write the figures to OUT")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.worker == "torch":
        return torch_run(args.algorithm, args.task, args.steps, args.seed)
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit("train_time.py needs PyTorch (the bench extra: see benchmarks/README.md)")

    steps = ["--steps", str(args.steps)] if args.steps is not None else []
    with tempfile.TemporaryDirectory() as tmp:
        ours = _timed([sys.executable, "-m", "scratchmeta", "train", args.algorithm,
                       "--task", args.task, "--seed", str(args.seed), "--eval-every", "0",
                       "--no-progress", "--out", os.path.join(tmp, "run")] + steps)
    theirs = _timed([sys.executable, os.path.abspath(__file__), "--worker", "torch",
                     "--algorithm", args.algorithm, "--task", args.task,
                     "--seed", str(args.seed)] + steps)
    result = {"algorithm": args.algorithm, "task": args.task, "steps": args.steps or "recipe",
              "scratchmeta": {"wall_s": ours[0], "cpu_s": ours[1]},
              "torch": {"wall_s": theirs[0], "cpu_s": theirs[1]},
              "ratio_wall": ours[0] / theirs[0], "ratio_cpu": ours[1] / theirs[1]}
    print(f"{args.algorithm} on {args.task}, {result['steps']} steps, one thread each")
    print(f"  {'':12s} {'wall s':>9s} {'cpu s':>9s}")
    for name in ("scratchmeta", "torch"):
        print(f"  {name:12s} {result[name]['wall_s']:9.1f} {result[name]['cpu_s']:9.1f}")
    print(f"  {'ratio':12s} {result['ratio_wall']:9.2f} {result['ratio_cpu']:9.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
