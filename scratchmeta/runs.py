"""Run directories: config, metrics and checkpoints that survive interruption.

    runs/x/config.json       the experiment config (everything needed to rebuild it)
    runs/x/metrics.jsonl     one JSON line per evaluation during training
    runs/x/checkpoint.npz    theta, optimiser state, sampler RNG state, step

Every file is written to a temporary file in the same directory and renamed
over the old one (os.replace is atomic), so a process killed at any moment
leaves either the old file or the new one, never half of one. A process
killed between the two leaves a `.tmp-*` file, which `clean_temp_files`
removes when the run resumes. metrics.jsonl is appended to, one line per
record; a line torn by a kill is the last one, and `read_metrics` drops it.
"""
import hashlib
import io
import json
import math
import os
import tempfile
import zipfile
from collections import OrderedDict

from . import backend
from .tensor import Tensor

CONFIG, METRICS, CHECKPOINT = "config.json", "metrics.jsonl", "checkpoint.npz"
FORMAT = 1


TEMP_PREFIX = ".tmp-"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, truncated, or from another model."""


class RunFileError(ValueError):
    """A run file (config.json, metrics.jsonl) that cannot be read as written."""


class WriteError(OSError):
    """Writing an output file failed (disk full, read-only, ...); the message names the file."""


def atomic_write_bytes(path, data):
    """Write `data` to `path` through a temporary file and a rename.

    On failure the old file (if any) is left as it was, the temporary file is
    removed, and WriteError names `path`.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise WriteError(f"cannot write {path}: {e.strerror or e}") from e
        raise


def atomic_save(path, save):
    """`save(file_object)` into memory, then `atomic_write_bytes` (e.g. a figure's savefig)."""
    buf = io.BytesIO()
    save(buf)
    atomic_write_bytes(path, buf.getvalue())


def clean_temp_files(run_dir):
    """Remove `.tmp-*` files left by a process killed between writing and renaming."""
    removed = []
    for name in sorted(os.listdir(run_dir)):
        if name.startswith(TEMP_PREFIX):
            os.remove(os.path.join(run_dir, name))
            removed.append(name)
    return removed


def finite_or_none(obj):
    """`obj` with every NaN or inf float replaced by None: what JSON can hold (null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def dumps(obj, **kw):
    """json.dumps that never writes NaN or Infinity (not JSON): they become null."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **kw)


def write_json(path, obj):
    atomic_write_bytes(path, (dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path):
    """A JSON file's content; a file that is not JSON raises RunFileError naming it."""
    try:
        with open(path) as f:
            return json.load(f)
    except UnicodeDecodeError as e:
        raise RunFileError(f"{path} is not a text JSON file ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise RunFileError(f"{path} is not valid JSON: {e}") from None


def fingerprint(config):
    """What must match for a checkpoint to fit: algorithm, model, task and algorithm settings."""
    key = {k: config.get(k) for k in ("algorithm", "model", "algo", "task")}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def settings(config):
    """What else a checkpoint must agree with: the seed, the optimiser and the dtype."""
    return {"seed": config.get("seed"), "optimizer": config.get("optimizer"),
            "dtype": config.get("dtype")}


def save_checkpoint(run_dir, step, theta, optimizer, sampler, config, extra=None):
    """Atomically write theta, the optimiser's and the sampler's state at `step`."""
    arrays = OrderedDict()
    for name, t in theta.items():
        arrays[f"theta/{name}"] = backend.to_numpy(t.data)
    scalars, tensors = optimizer.state_dict()
    for name, t in tensors.items():
        arrays[f"opt/{name}"] = backend.to_numpy(t.data)
    meta = {"format": FORMAT, "step": int(step), "fingerprint": fingerprint(config),
            "settings": settings(config),
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
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":                  # every .npz is a zip archive
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated (not an .npz archive, "
                              f"{os.path.getsize(path)} bytes)")
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
    if config is not None:
        _check_settings(path, meta, arrays, config)
    theta = OrderedDict()
    for name, shape in meta["shapes"].items():
        key = f"theta/{name}"
        if key not in arrays or list(arrays[key].shape) != shape:
            raise CheckpointError(f"checkpoint {path} is missing parameter {name!r} or has the wrong shape")
        theta[name] = Tensor(backend.asarray(arrays[key]), requires_grad=True)
    opt_tensors = {k[4:]: Tensor(backend.asarray(v)) for k, v in arrays.items() if k.startswith("opt/")}
    return meta["step"], theta, meta["optimizer"], opt_tensors, meta["sampler"], meta.get("extra", {})


def _check_settings(path, meta, arrays, config):
    """Refuse a checkpoint trained with another seed, optimiser or dtype than `config`'s."""
    saved, wanted = meta.get("settings"), settings(config)
    for key in ("seed", "optimizer"):
        if saved is not None and saved.get(key) != wanted[key]:
            raise CheckpointError(
                f"checkpoint {path} was trained with {key} {json.dumps(saved.get(key))}, "
                f"{CONFIG} says {json.dumps(wanted[key])}; refusing to continue it")
    dtypes = {str(v.dtype) for k, v in arrays.items() if k.startswith("theta/")}
    if wanted["dtype"] and dtypes and dtypes != {wanted["dtype"]}:
        raise CheckpointError(
            f"checkpoint {path} holds {'/'.join(sorted(dtypes))} parameters, {CONFIG} says "
            f"dtype {wanted['dtype']}; refusing to convert them")


def check_params_match(theta, reference):
    """A checkpoint's parameters must have the model's names and shapes."""
    if list(theta) != list(reference):
        raise CheckpointError(f"checkpoint parameters {list(theta)} do not match the model's {list(reference)}")
    for k in theta:
        if theta[k].shape != reference[k].shape:
            raise CheckpointError(f"checkpoint parameter {k!r} has shape {theta[k].shape}, "
                                  f"the model's is {reference[k].shape}")


def append_metrics(run_dir, record):
    path = os.path.join(run_dir, METRICS)
    line = dumps(record) + "\n"
    try:
        with open(path, "a") as f:
            f.write(line)
            f.flush()
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or e}") from e


def _metrics_lines(run_dir):
    """(records, torn): the records of metrics.jsonl and whether its last line was torn.

    A kill while appending can leave only the last line incomplete; any other
    line that is not JSON means the file was damaged otherwise, and RunFileError
    names it (nothing is rewritten).
    """
    path = os.path.join(run_dir, METRICS)
    if not os.path.exists(path):
        return [], False
    with open(path, "rb") as f:
        raw = f.read()
    lines = raw.split(b"\n")
    records, torn = [], False
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode())
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError):
            if number == len(lines) and not raw.endswith(b"\n"):
                torn = True                     # the last line, cut by a kill
                continue
            raise RunFileError(f"{path} line {number} is not a JSON record; fix or remove that "
                               f"line (nothing was changed)") from None
        records.append(record)
    return records, torn or (bool(raw) and not raw.endswith(b"\n"))


def read_metrics(run_dir):
    """The records of metrics.jsonl (a last line torn by a kill is left out)."""
    return _metrics_lines(run_dir)[0]


def truncate_metrics(run_dir, step):
    """Keep only the records up to `step` (a resumed run re-logs the rest); repair a torn line.

    The file is rewritten (atomically) only if something changes.
    """
    records, torn = _metrics_lines(run_dir)
    kept = [r for r in records if r.get("step", 0) <= step]
    if torn or len(kept) != len(records):
        atomic_write_bytes(os.path.join(run_dir, METRICS),
                           "".join(dumps(r) + "\n" for r in kept).encode())
    return len(records) - len(kept), torn
