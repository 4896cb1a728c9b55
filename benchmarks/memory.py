"""Peak memory per (workload, implementation), each in a fresh process.

The child builds the problem and the runner (imports, data, tensor
conversion, JAX's ahead-of-time compile), notes its memory, runs a few steps
and reads the peak. The number is the extra peak resident memory the steps
needed, in MiB.

On Linux the child first resets the kernel's peak-RSS mark (writing 5 to
/proc/self/clear_refs), then reports VmHWM after the steps minus VmRSS after
set-up. Without that reset, ru_maxrss after the steps minus ru_maxrss after
set-up is used instead, which reads 0 whenever the imports peaked higher
than the steps.
"""
import json
import os
import resource
import subprocess
import sys

import numpy as np

import harness
import workloads

STEPS = 3
_TAG = "MEMORY-RESULT "


def _maxrss_mib():
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss    # KiB on Linux
    return kib / 1024.0


def _proc_status_mib(field):
    """VmRSS / VmHWM from /proc/self/status in MiB, or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak():
    """Reset the peak-RSS mark (Linux >= 4.0); True if it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _proc_status_mib("VmHWM") is not None
    except OSError:
        return False


def child(workload, impl, dtype):
    """Runs inside the subprocess: prints one tagged JSON line."""
    problem = workloads.make(workload, dtype)
    module = harness.load_impls([impl], verbose=False)[impl]
    runner = getattr(module, problem.kind)(problem)
    if _reset_peak():
        method, after_setup = "VmHWM-VmRSS", _proc_status_mib("VmRSS")
        for _ in range(STEPS):
            runner.step()
        after_steps = _proc_status_mib("VmHWM")
    else:
        method, after_setup = "ru_maxrss", _maxrss_mib()
        for _ in range(STEPS):
            runner.step()
        after_steps = _maxrss_mib()
    print(_TAG + json.dumps(dict(method=method, setup_mib=after_setup, peak_mib=after_steps,
                                 step_mib=after_steps - after_setup)), flush=True)


def measure(workload, impls, args, dtype):
    """impl -> extra peak MiB of `STEPS` steps over setup (None if the child failed)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run.py")
    out = {}
    for impl in impls:
        cmd = [sys.executable, script, "--memory-child", workload, impl, "--backend", args.backend,
               "--dtype", np.dtype(dtype).name]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_TAG)]
        if proc.returncode != 0 or not lines:
            print(f"  memory child {workload}/{impl} failed: {proc.stderr.strip()[-300:]}")
            out[impl] = None
            continue
        out[impl] = json.loads(lines[-1][len(_TAG):])["step_mib"]
    return out
