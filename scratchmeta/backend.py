"""The one module that owns the array namespace.

Every other module asks this one for `xp` (numpy or cupy) and never imports
either library for array math. Switching is global:

    sm.set_backend("cupy")          # or env SCRATCHMETA_BACKEND=cupy

`xp` is a thin proxy that forwards attribute access to the active module, so
code written as `xp.tanh(x)` follows the switch without re-importing.

Host-side work that is not array math on the device (random task sampling
with a seeded NumPy generator, file I/O, printing) uses `host`, and crosses to
the device only through `asarray`, explicitly. Nothing here converts a device
array to host NumPy implicitly: `to_numpy` is the one door back.
"""
import os

import numpy as host   # the host namespace: data pipelines, file I/O, RNG

_BACKENDS = ("numpy", "cupy")
_DTYPES = {"float64": host.float64, "float32": host.float32}

_state = {"name": "numpy", "module": host, "dtype": host.float64}


class _Namespace:
    """`xp.name` resolves to the active backend module's `name`."""

    __slots__ = ()

    def __getattr__(self, name):
        return getattr(_state["module"], name)

    def __repr__(self):
        return f"<scratchmeta xp -> {_state['name']}>"


xp = _Namespace()


def _import_cupy():
    try:
        import cupy
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise RuntimeError(
            "backend 'cupy' needs CuPy: pip install 'scratchmeta[gpu]' "
            "(CUDA 12) or 'scratchmeta[gpu-cuda13]' (CUDA 13)") from e
    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # pragma: no cover - depends on the machine
        raise RuntimeError(f"backend 'cupy' found no usable CUDA device: {e}") from e
    return cupy


def set_backend(name):
    """Select the array library: "numpy" (default) or "cupy"."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {_BACKENDS}")
    module = host if name == "numpy" else _import_cupy()
    _state["name"], _state["module"] = name, module


def get_backend():
    """Name of the active backend: "numpy" or "cupy"."""
    return _state["name"]


def _use_namespace(name, module):
    """Install an arbitrary array namespace (tests use a strict stand-in)."""
    old = (_state["name"], _state["module"])
    _state["name"], _state["module"] = name, module
    return old


def set_default_dtype(dtype):
    """Default floating dtype of new tensors: "float64" (default) or "float32"."""
    key = dtype if isinstance(dtype, str) else host.dtype(dtype).name
    if key not in _DTYPES:
        raise ValueError(f"unsupported default dtype {dtype!r}; choose float64 or float32")
    _state["dtype"] = _DTYPES[key]


def get_default_dtype():
    return _state["dtype"]


def resolve_dtype(dtype):
    """A dtype argument (None, a name or a dtype) as a NumPy dtype object."""
    if dtype is None:
        return host.dtype(_state["dtype"])
    try:
        return host.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"unknown dtype {dtype!r}") from e


def is_array(obj):
    """True for an array of the active backend."""
    return isinstance(obj, _state["module"].ndarray)


def foreign_backend(obj):
    """Name of the backend `obj` belongs to if it is another backend's array."""
    mod = type(obj).__module__.split(".")[0]
    if mod == "cupy" and _state["name"] != "cupy":
        return "cupy"
    if mod == "numpy" and isinstance(obj, host.ndarray) and not is_array(obj):
        return "numpy"
    return None


def asarray(obj, dtype=None):
    """Explicit host -> device (or device -> device) transfer."""
    return _state["module"].asarray(obj, dtype=dtype)


def to_numpy(array):
    """The one explicit door back to host NumPy."""
    if isinstance(array, host.ndarray):
        return array
    get = getattr(array, "get", None)          # cupy.ndarray.get() copies to host
    if get is not None:
        return get()
    return host.asarray(array)


def reuse_host_memory():
    """Ask glibc to keep freed host memory for reuse instead of returning it to the OS.

    NumPy allocates every large temporary afresh; glibc serves allocations above
    a threshold with mmap and unmaps them when freed, so the next one pays a page
    fault per 4 KiB page again. On the virtual machines measured here that cost
    more than writing the array (docs/performance.md). With mmap off and
    trimming deferred, freed blocks stay in the heap and are reused. The price:
    the process keeps its peak memory until it exits. Used by the `scratchmeta`
    command and the benchmarks; a no-op (returning False) off glibc.
    """
    import ctypes
    import sys
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def synchronize():
    """Wait for queued device work (a no-op on NumPy); for honest timings."""
    if _state["name"] == "cupy":
        _state["module"].cuda.get_current_stream().synchronize()


def _from_environment():
    """Apply $SCRATCHMETA_BACKEND and $SCRATCHMETA_DTYPE; a bad value names its variable.

    Under the `scratchmeta` command (which cannot catch an error raised while
    the package is imported) a bad value is one line and exit status 2, as any
    bad flag is; any other program gets a ValueError.
    """
    import sys
    for var, apply in (("SCRATCHMETA_BACKEND", set_backend), ("SCRATCHMETA_DTYPE", set_default_dtype)):
        value = os.environ.get(var)
        if not value:
            continue
        try:
            apply(value.strip().lower())
        except (ValueError, RuntimeError) as e:
            message = f"environment variable {var}={value!r}: {e} (or unset it)"
            argv = list(getattr(sys, "orig_argv", sys.argv))
            if os.path.basename(sys.argv[0]) == "scratchmeta" or argv[1:3] == ["-m", "scratchmeta"]:
                sys.stderr.write(f"scratchmeta: error: {message}\n")
                raise SystemExit(2) from None
            raise ValueError(message) from None


_from_environment()
