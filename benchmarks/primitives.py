"""Where a scratchmeta step spends its time, primitive by primitive, and a dtype audit.

    python benchmarks/primitives.py maml_conv4            # float32 (the workload's default)
    python benchmarks/primitives.py protonet --dtype float64 --steps 5
    python benchmarks/primitives.py icl_transformer --fast off --cprofile 25

Every primitive's forward and VJP (and, with the fast paths on, the overlay's
replacements) is wrapped with a timer for the duration of the run. The table
gives, per primitive, the calls and the seconds spent inside its forward and
inside its VJP (a VJP's time includes the primitives it calls, so the VJP
column overlaps the forward column; read it as "cost of differentiating this
op"). The audit flags every forward whose floating output is wider than its
floating inputs (a float32 computation promoted to float64 by a float64
constant, a Python float turned into a float64 array, or a NumPy float64
scalar), and every output that is not C-contiguous.
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import cProfile  # noqa: E402
import collections  # noqa: E402
import pstats  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))

import numpy as np  # noqa: E402

import harness  # noqa: E402
import workloads  # noqa: E402


def _primitives():
    """Every Primitive object in the engine's modules (and their overlay entries)."""
    import importlib
    tensor = importlib.import_module("scratchmeta.tensor")     # sm.tensor is the function
    found = {}
    for name in ("ops", "windows", "normalization", "activations", "functional", "transformer",
                 "algorithms.protonet"):
        try:
            module = importlib.import_module(f"scratchmeta.{name}")
        except ImportError:
            continue
        for value in vars(module).values():
            if isinstance(value, tensor.Primitive):
                found[id(value)] = value
    return list(found.values())


def _floating(arrays):
    return [a.dtype for a in arrays if hasattr(a, "dtype") and a.dtype.kind == "f"]


class Audit:
    """Timers and dtype/contiguity findings, installed by wrapping each forward and VJP."""

    def __init__(self):
        self.seconds = collections.defaultdict(float)
        self.calls = collections.Counter()
        self.upcasts = collections.Counter()
        self.strided = collections.Counter()
        self.mixed = collections.Counter()
        self.outputs = collections.Counter()       # (label, output dtype) -> calls
        self._undo = []

    def _wrap_forward(self, holder, label):
        forward = holder.forward

        def timed(*arrays, **kw):
            start = time.perf_counter()
            out = forward(*arrays, **kw)
            self.seconds[label, "forward"] += time.perf_counter() - start
            self.calls[label, "forward"] += 1
            value = getattr(out, "value", out)          # a fast forward's Saved
            widest = max(_floating(arrays), default=None, key=lambda d: d.itemsize)
            if (widest is not None and hasattr(value, "dtype") and value.dtype.kind == "f"
                    and value.dtype.itemsize > widest.itemsize):
                self.upcasts[label, f"{widest.name} -> {value.dtype.name}"] += 1
            names = sorted({d.name for d in _floating(arrays)})
            if len(names) > 1:
                self.mixed[label, "/".join(names)] += 1
            if hasattr(value, "dtype"):
                self.outputs[label, value.dtype.name] += 1
            if hasattr(value, "flags") and value.ndim > 1 and not value.flags.c_contiguous:
                self.strided[label] += 1
            return out

        holder.forward = timed
        self._undo.append((holder, "forward", forward))

    def _wrap_vjp(self, holder, label):
        vjp = holder.vjp_fn
        if vjp is None:
            return

        def timed(*args, **kw):
            start = time.perf_counter()
            out = vjp(*args, **kw)
            self.seconds[label, "vjp"] += time.perf_counter() - start
            self.calls[label, "vjp"] += 1
            return out

        holder.vjp_fn = timed
        self._undo.append((holder, "vjp_fn", vjp))

    def install(self):
        for p in _primitives():
            self._wrap_forward(p, p.name)
            self._wrap_vjp(p, p.name)
            entry = getattr(p, "fast", None)
            if entry is not None and hasattr(entry, "forward"):
                self._wrap_forward(entry, p.name + " [fast]")
                self._wrap_vjp(entry, p.name + " [fast]")
        return self

    def remove(self):
        for holder, attr, original in reversed(self._undo):
            setattr(holder, attr, original)
        self._undo.clear()

    def report(self, steps, wall):
        rows = sorted({label for label, _ in self.seconds},
                      key=lambda lb: -self.seconds[lb, "forward"] - self.seconds[lb, "vjp"])
        print(f"\nper step: {1e3 * wall / steps:.1f} ms wall")
        print(f"  {'primitive':<34} {'fwd calls':>9} {'fwd ms':>9} {'vjp calls':>9} {'vjp ms':>9}")
        for label in rows:
            print(f"  {label:<34} {self.calls[label, 'forward'] / steps:>9.0f} "
                  f"{1e3 * self.seconds[label, 'forward'] / steps:>9.2f} "
                  f"{self.calls[label, 'vjp'] / steps:>9.0f} "
                  f"{1e3 * self.seconds[label, 'vjp'] / steps:>9.2f}")
        total = sum(s for (_, kind), s in self.seconds.items() if kind == "forward")
        print(f"  forwards in all: {1e3 * total / steps:.1f} ms a step "
              f"({100 * total / wall:.0f}% of the wall time; VJPs run forwards too)")
        print("\ndtype audit (a floating output wider than the widest floating input):")
        for (label, what), n in sorted(self.upcasts.items()):
            print(f"  UPCAST {label}: {what}, {n / steps:.0f} a step")
        if not self.upcasts:
            print("  none")
        print("mixed floating inputs (one side gets converted first):")
        for (label, what), n in sorted(self.mixed.items()):
            print(f"  MIXED {label}: {what}, {n / steps:.0f} a step")
        if not self.mixed:
            print("  none")
        by_dtype = collections.Counter()
        for (_, dt), n in self.outputs.items():
            by_dtype[dt] += n
        print("output dtypes: " + ", ".join(f"{dt} {n / steps:.0f} a step"
                                            for dt, n in sorted(by_dtype.items())))
        for (label, dt), n in sorted(self.outputs.items()):
            if dt == "float64" and by_dtype.get("float32"):
                print(f"  float64 out of {label}: {n / steps:.0f} a step")
        print("non-C-contiguous outputs (views are fine; a matmul on one may copy):")
        for label, n in sorted(self.strided.items(), key=lambda kv: -kv[1]):
            print(f"  {label}: {n / steps:.0f} a step")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", choices=list(workloads.WORKLOADS))
    p.add_argument("--dtype", choices=("float32", "float64"), default=None)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--fast", choices=("on", "off"), default="on")
    p.add_argument("--cprofile", type=int, metavar="N", default=0,
                   help="also print cProfile's N most expensive functions (by internal time)")
    args = p.parse_args(argv)

    from scratchmeta import backend
    backend.reuse_host_memory()
    import scratchmeta as sm
    dtype = np.dtype(args.dtype) if args.dtype else workloads.default_dtype(args.workload)
    problem = workloads.make(args.workload, dtype)
    impl = "scratchmeta" if args.fast == "on" else "scratchmeta_plain"
    module = harness.load_impls([impl])[impl]
    runner = getattr(module, problem.kind)(problem)
    runner.step()                                    # warm-up, untimed
    if hasattr(sm, "use_fast_paths"):
        print(f"fast paths: {args.fast}")
    print(f"{args.workload} [{dtype.name}], {args.steps} steps")

    audit = Audit().install()
    profiler = cProfile.Profile() if args.cprofile else None
    try:
        start = time.perf_counter()
        if profiler:
            profiler.enable()
        for _ in range(args.steps):
            runner.step()
        if profiler:
            profiler.disable()
        wall = time.perf_counter() - start
    finally:
        audit.remove()
    audit.report(args.steps, wall)
    if profiler:
        print()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.cprofile)


if __name__ == "__main__":
    main()
