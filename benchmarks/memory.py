"""Peak memory per (workload, implementation), each in a fresh process.

The child builds the problem and the runner (imports, data, tensor
conversion, JAX's ahead-of-time compile), reads ru_maxrss, runs a few steps
and reads it again. The difference is the extra peak resident memory the
steps needed, in MiB. ru_maxrss is a high-water mark, so the number says how
much higher the steps pushed it, not what stays allocated afterwards.
"""
import json
import os
import resource
import subprocess
import sys

import harness
import workloads

STEPS = 3
_TAG = "MEMORY-RESULT "


def _maxrss_mib():
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss    # KiB on Linux
    return kib / 1024.0


def child(workload, impl, dtype):
    """Runs inside the subprocess: prints one tagged JSON line."""
    problem = workloads.make(workload, dtype)
    module = harness.load_impls([impl], verbose=False)[impl]
    runner = getattr(module, problem.kind)(problem)
    after_setup = _maxrss_mib()
    for _ in range(STEPS):
        runner.step()
    after_steps = _maxrss_mib()
    print(_TAG + json.dumps(dict(setup_mib=after_setup, peak_mib=after_steps,
                                 step_mib=after_steps - after_setup)), flush=True)


def measure(workload, impls, args):
    """impl -> extra peak MiB of `STEPS` steps over setup (None if the child failed)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run.py")
    out = {}
    for impl in impls:
        cmd = [sys.executable, script, "--memory-child", workload, impl, "--backend", args.backend]
        if args.float32:
            cmd.append("--float32")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_TAG)]
        if proc.returncode != 0 or not lines:
            print(f"  memory child {workload}/{impl} failed: {proc.stderr.strip()[-300:]}")
            out[impl] = None
            continue
        out[impl] = json.loads(lines[-1][len(_TAG):])["step_mib"]
    return out
