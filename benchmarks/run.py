"""Benchmark scratchmeta against PyTorch (loop and torch.func), JAX and HIPS autograd.

    python benchmarks/run.py                       # all workloads, table of medians
    python benchmarks/run.py --dtype float64       # every workload in float64
    python benchmarks/run.py --workloads maml_sine_2nd protonet --repeats 20
    python benchmarks/run.py --memory              # + peak memory per implementation
    python benchmarks/run.py --scaling --json scaling.json --plot scaling.png

One process, one thread per library, implementations interleaved; every
result is checked against the torch_loop reference before any time is shown.
See benchmarks/README.md.
"""
import os

# one thread for every library; must precede any import of numpy/torch/jax
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)                        # workloads, harness, peers
sys.path.insert(1, os.path.dirname(HERE))       # the scratchmeta package in the repo

import numpy as np  # noqa: E402

import harness  # noqa: E402
import memory  # noqa: E402
import peers  # noqa: E402
import scaling  # noqa: E402
import workloads  # noqa: E402


def single_thread():
    """torch's intra-op pool is not governed by OMP_NUM_THREADS alone."""
    try:
        import torch
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
    except (ImportError, RuntimeError):
        pass


def select_backend(name):
    if name != "numpy":
        import scratchmeta as sm
        sm.set_backend(name)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", nargs="+", default=list(workloads.WORKLOADS),
                   choices=list(workloads.WORKLOADS), metavar="NAME",
                   help=f"subset of: {', '.join(workloads.WORKLOADS)}")
    p.add_argument("--impls", nargs="+", default=list(peers.MODULES), choices=list(peers.MODULES),
                   metavar="NAME", help=f"subset of: {', '.join(peers.MODULES)}")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed calls per implementation (default: per workload, see workloads.py)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (default 1)")
    p.add_argument("--no-reuse-memory", action="store_true",
                   help="leave glibc's malloc as it is (by default freed memory is kept for "
                        "reuse, as the scratchmeta command does: see docs/performance.md)")
    p.add_argument("--quick", action="store_true",
                   help="a short run for a GPU check: MAML sinusoid, Conv4 MAML and ProtoNet, "
                        "scratchmeta against the PyTorch loop, 3 repeats")
    p.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="every workload in this dtype (default: each workload's own, float64 for "
                        "the sinusoid workloads, float32 for the image and transformer ones; "
                        "float32's agreement check is looser)")
    p.add_argument("--backend", choices=("numpy", "cupy"), default="numpy", help="scratchmeta's backend")
    p.add_argument("--json", metavar="OUT", help="write all numbers to this JSON file")
    p.add_argument("--memory", action="store_true",
                   help="also measure peak memory, each (workload, impl) in a fresh subprocess")
    p.add_argument("--scaling", action="store_true",
                   help="time vs meta-batch size and inner steps (scratchmeta, torch_loop) instead")
    p.add_argument("--plot", metavar="PNG", help="with --scaling: write a plot here (needs matplotlib)")
    p.add_argument("--memory-child", nargs=2, metavar=("WORKLOAD", "IMPL"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def environment(args):
    """What the numbers were measured on, for the JSON file."""
    versions = {"numpy": np.__version__}
    for name in ("torch", "jax", "autograd"):
        module = sys.modules.get(name)
        versions[name] = getattr(module, "__version__", "installed") if module else None
    return dict(python=platform.python_version(), machine=platform.machine(),
                processor=platform.processor(), cpus=os.cpu_count(), threads=1,
                dtype=args.dtype or "per workload", backend=args.backend,
                versions=versions)


def workload_dtype(name, args):
    """The dtype `name` runs in: --dtype if given, else the workload's default."""
    return np.dtype(args.dtype) if args.dtype else workloads.default_dtype(name)


def benchmark(args):
    if args.quick:
        args.workloads = ["maml_sine_2nd", "maml_conv4", "protonet"]
        args.impls = ["torch_loop", "scratchmeta"]
        args.repeats = args.repeats or 3
    impls = harness.load_impls(args.impls)
    report = {}
    for name in args.workloads:
        _, description, default_repeats, _ = workloads.WORKLOADS[name]
        dtype = workload_dtype(name, args)
        rtol, atol = harness.tolerances(dtype)
        problem = workloads.make(name, dtype)
        runners = harness.build_runners(problem, impls)
        if not runners:
            continue
        repeats = args.repeats or default_repeats
        print(f"\n== {name}: {description} ({repeats} repeats) ...", flush=True)
        times = harness.time_interleaved(runners, repeats, warmup=args.warmup)
        results = {impl: runner.result() for impl, runner in runners.items()}
        ref = harness.check_agreement(problem, results, rtol, atol)
        print(f"   results agree with {ref} (rtol {rtol:g}, atol {atol:g})")
        stats = harness.summarize(times)
        mem = memory.measure(name, list(runners), args, dtype) if args.memory else None
        harness.print_table(f"{name}  [{dtype.name}, one thread]", stats, mem)
        report[name] = dict(description=description, dtype=dtype.name, reference=ref,
                            stats=stats, peak_mib=mem)
    return report


def main(argv=None):
    args = parse_args(argv)
    single_thread()
    select_backend(args.backend)
    if not args.no_reuse_memory:
        # as the `scratchmeta` command does; it applies to every library in this process
        from scratchmeta import backend
        backend.reuse_host_memory()
    if args.memory_child:
        memory.child(*args.memory_child, workload_dtype(args.memory_child[0], args))
        return

    if args.scaling:
        report = scaling.run(args, workload_dtype("maml_sine_2nd", args))
        if args.plot:
            scaling.plot(report, args.plot)
    else:
        report = benchmark(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(environment=environment(args), results=report), f, indent=1)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
