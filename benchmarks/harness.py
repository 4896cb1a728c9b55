"""Timing, agreement checks and tables shared by run.py's modes."""
import gc
import time

import numpy as np

import peers


class Disagreement(SystemExit):
    """Raised (exits non-zero) when an implementation's result differs from the reference."""


def tolerances(dtype):
    """(rtol, atol) for comparing results: tight in float64, loose in float32."""
    return (1e-8, 1e-10) if np.dtype(dtype) == np.float64 else (1e-3, 1e-4)


def load_impls(names, verbose=True):
    """name -> peer module, for the requested names that are available."""
    impls = {}
    for name in names:
        module, why = peers.load(name)
        if module is None:
            if verbose:
                print(f"  skip {name}: {why}")
            continue
        impls[name] = module
    return impls


def build_runners(problem, impls):
    """name -> Runner; an implementation that fails to build is skipped with its error."""
    runners = {}
    for name, module in impls.items():
        if not hasattr(module, problem.kind):
            continue                            # not written for this workload
        try:
            runners[name] = getattr(module, problem.kind)(problem)
        except Exception as e:  # a peer's failure must not hide the others' numbers
            print(f"  skip {name} on {problem.name}: {type(e).__name__}: {e}")
    return runners


def check_agreement(problem, results, rtol, atol):
    """Every result must equal the reference's (torch_loop, else the first) entry by entry."""
    ref_name = peers.REFERENCE if peers.REFERENCE in results else next(iter(results))
    reference = results[ref_name]
    for name, result in results.items():
        if set(result) != set(reference):
            raise Disagreement(f"[{problem.name}] {name} returned keys {sorted(result)}, "
                               f"{ref_name} returned {sorted(reference)}")
        for key, expected in reference.items():
            got = result[key]
            if got.shape != expected.shape:
                raise Disagreement(f"[{problem.name}] {name} {key}: shape {got.shape}, "
                                   f"{ref_name} has {expected.shape}")
            if not np.allclose(got, expected, rtol=rtol, atol=atol):
                diff = np.abs(got - expected).max()
                raise Disagreement(
                    f"RESULTS DISAGREE on workload {problem.name!r}: implementation {name!r}, "
                    f"parameter {key!r}: max |diff| = {diff:.3e} vs reference {ref_name!r} "
                    f"(max |ref| = {np.abs(expected).max():.3e}, rtol={rtol}, atol={atol})")
    return ref_name


def time_interleaved(runners, repeats, warmup=1):
    """Seconds per step() for each runner, interleaved so machine noise hits all alike.

    for r in repeats: for impl in impls: time one call. The order of the
    implementations rotates each round so none always follows the same one.
    """
    for runner in runners.values():
        for _ in range(warmup):
            runner.step()
    names = list(runners)
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            gc.collect()                        # no collector debt from the previous impl
            start = time.perf_counter()
            runners[name].step()
            times[name].append(time.perf_counter() - start)
    return times


def summarize(times, reference="torch_loop"):
    """name -> dict(median_ms, iqr_ms, ratio) with ratio = median / reference median."""
    stats = {}
    for name, ts in times.items():
        ms = np.asarray(ts) * 1e3
        q25, q50, q75 = np.percentile(ms, [25, 50, 75])
        stats[name] = dict(median_ms=float(q50), iqr_ms=float(q75 - q25), n=len(ms),
                           times_ms=[float(t) for t in ms])
    ref = stats.get(reference)
    for s in stats.values():
        s["ratio"] = s["median_ms"] / ref["median_ms"] if ref else None
    return stats


def print_table(title, stats, memory=None):
    """One workload's table; `memory` (name -> MiB) adds a column when given."""
    print(f"\n{title}")
    header = f"  {'implementation':<17} {'median ms':>11} {'IQR ms':>9} {'x torch_loop':>13}"
    if memory is not None:
        header += f" {'peak MiB':>9}"
    print(header)
    print("  " + "-" * (len(header) - 2))
    for name, s in sorted(stats.items(), key=lambda kv: kv[1]["median_ms"]):
        ratio = f"{s['ratio']:.2f}" if s["ratio"] is not None else "-"
        line = f"  {name:<17} {s['median_ms']:>11.2f} {s['iqr_ms']:>9.2f} {ratio:>13}"
        if memory is not None:
            mib = memory.get(name)
            line += f" {mib:>9.1f}" if mib is not None else f" {'-':>9}"
        print(line)
