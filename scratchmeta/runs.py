"""Run directories: config, metrics and checkpoints that survive interruption.

    runs/x/config.json       the experiment config (everything needed to rebuild it)
    runs/x/metrics.jsonl     one JSON line per evaluation during training
    runs/x/checkpoint.npz    theta, optimiser state, sampler RNG state, step

Every file is written to a temporary file in the same directory and renamed
over the old one (os.replace is atomic), so a process killed at any moment
leaves either the old file or the new one, never half of one.
"""
import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections import OrderedDict

from . import backend
from .tensor import Tensor

CONFIG, METRICS, CHECKPOINT = "config.json", "metrics.jsonl", "checkpoint.npz"
FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, truncated, or from another model."""


def atomic_write_bytes(path, data):
    """Write `data` to `path` through a temporary file and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path, obj):
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path):
    with open(path) as f:
        return json.load(f)


def fingerprint(config):
    """What must match for a checkpoint to fit: algorithm, model, task and algorithm settings."""
    key = {k: config.get(k) for k in ("algorithm", "model", "algo", "task")}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def save_checkpoint(run_dir, step, theta, optimizer, sampler, config, extra=None):
    """Atomically write theta, the optimiser's and the sampler's state at `step`."""
    arrays = OrderedDict()
    for name, t in theta.items():
        arrays[f"theta/{name}"] = backend.to_numpy(t.data)
    scalars, tensors = optimizer.state_dict()
    for name, t in tensors.items():
        arrays[f"opt/{name}"] = backend.to_numpy(t.data)
    meta = {"format": FORMAT, "step": int(step), "fingerprint": fingerprint(config),
            "optimizer": scalars, "sampler": sampler.state_dict() if sampler is not None else None,
            "shapes": {k: list(t.shape) for k, t in theta.items()}, "extra": extra or {}}
    arrays["meta"] = backend.host.frombuffer(json.dumps(meta).encode(), dtype=backend.host.uint8)
    buf = io.BytesIO()
    backend.host.savez(buf, **arrays)
    atomic_write_bytes(os.path.join(run_dir, CHECKPOINT), buf.getvalue())


def load_checkpoint(path, config=None):
    """Read a checkpoint; refuse a corrupt one, or one whose model differs from `config`'s.

    Returns (step, theta, optimizer_scalars, optimizer_tensors, sampler_state, extra).
    """
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with backend.host.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r}, expected {FORMAT}")
    if config is not None and meta.get("fingerprint") != fingerprint(config):
        raise CheckpointError(
            f"checkpoint {path} belongs to another experiment (algorithm, model, task or "
            f"settings differ from {CONFIG}); refusing to load it")
    theta = OrderedDict()
    for name, shape in meta["shapes"].items():
        key = f"theta/{name}"
        if key not in arrays or list(arrays[key].shape) != shape:
            raise CheckpointError(f"checkpoint {path} is missing parameter {name!r} or has the wrong shape")
        theta[name] = Tensor(backend.asarray(arrays[key]), requires_grad=True)
    opt_tensors = {k[4:]: Tensor(backend.asarray(v)) for k, v in arrays.items() if k.startswith("opt/")}
    return meta["step"], theta, meta["optimizer"], opt_tensors, meta["sampler"], meta.get("extra", {})


def check_params_match(theta, reference):
    """A checkpoint's parameters must have the model's names and shapes."""
    if list(theta) != list(reference):
        raise CheckpointError(f"checkpoint parameters {list(theta)} do not match the model's {list(reference)}")
    for k in theta:
        if theta[k].shape != reference[k].shape:
            raise CheckpointError(f"checkpoint parameter {k!r} has shape {theta[k].shape}, "
                                  f"the model's is {reference[k].shape}")


def append_metrics(run_dir, record):
    with open(os.path.join(run_dir, METRICS), "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(run_dir):
    path = os.path.join(run_dir, METRICS)
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    break                      # a line cut by a kill: ignore it and what follows
    return records


def truncate_metrics(run_dir, step):
    """Keep only the records up to `step` (a resumed run re-logs the rest)."""
    kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    atomic_write_bytes(os.path.join(run_dir, METRICS),
                       "".join(json.dumps(r) + "\n" for r in kept).encode())
