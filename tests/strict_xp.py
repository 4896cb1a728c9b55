"""A stand-in array namespace that refuses implicit host conversion, like CuPy.

CuPy refuses, at run time, every implicit conversion between its device
arrays and host NumPy arrays: `cupy_array + numpy_array`, `numpy.tanh(cupy_array)`
and `numpy.asarray(cupy_array)` all raise TypeError. On a machine without a GPU
that class of bug would go unseen, so the tests install this module as the
backend namespace instead (`scratchmeta.backend._use_namespace("strict", namespace)`):

- its arrays are `StrictArray`, a thin wrapper of a host ndarray (so every
  numerical result is NumPy's own, bit for bit) that is not an ndarray;
- combining a StrictArray with a plain host ndarray, calling a host NumPy
  function on a StrictArray directly (instead of through this namespace), or
  asking a StrictArray for `__array__` raises
  TypeError("implicit conversion to host NumPy ...");
- `namespace.asarray` / `namespace.array` are the explicit host -> device door,
  and `StrictArray.get()` the explicit device -> host door (as in CuPy).

This is a helper module for the tests, not a test.
"""
import types

import numpy

MESSAGE = "implicit conversion to host NumPy"

# functions that may take host arrays: the explicit host -> device transfer
_TRANSFER = {"array", "asarray", "asanyarray", "ascontiguousarray"}


def _is_host(obj):
    """A host NumPy array."""
    return isinstance(obj, numpy.ndarray)


def _refuse(what):
    raise TypeError(f"{MESSAGE}: {what}")


def _unwrap(obj, allow_host=False, where="argument"):
    """StrictArray -> plain ndarray view, recursively; host arrays refused."""
    if isinstance(obj, StrictArray):
        return obj._a
    if _is_host(obj):
        if allow_host:
            return obj
        _refuse(f"a host numpy.ndarray was passed as {where}")
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unwrap(o, allow_host, where) for o in obj)
    return obj


def _wrap(obj):
    """Plain ndarray (or NumPy scalar) results -> StrictArray, recursively."""
    if isinstance(obj, numpy.ndarray):
        return StrictArray(obj)
    if isinstance(obj, numpy.generic):          # CuPy returns 0-d arrays, not scalars
        return StrictArray(numpy.asarray(obj))
    if isinstance(obj, tuple):
        return tuple(_wrap(o) for o in obj)
    if isinstance(obj, list):
        return [_wrap(o) for o in obj]
    return obj


class StrictArray:
    """A device-like array: NumPy's numbers, but no implicit trip to host NumPy.

    It wraps a host ndarray instead of subclassing ndarray: NumPy hands an
    ndarray subclass to `numpy.asarray` without asking it, and
    `numpy.asarray(device_array)` is the most common implicit conversion of
    all, so only a separate type (like cupy.ndarray) can refuse it.
    """

    __slots__ = ("_a",)
    __hash__ = None

    def __init__(self, array):
        self._a = array

    # -- the doors NumPy would use implicitly: all refused ------------------
    def __array__(self, dtype=None, copy=None):
        _refuse("__array__ called on a StrictArray (use to_numpy / .get())")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _refuse(f"host numpy.{ufunc.__name__} called on a StrictArray "
                f"(use the backend namespace)")

    def __array_function__(self, func, types_, args, kwargs):
        _refuse(f"host numpy.{func.__name__} called on a StrictArray "
                f"(use the backend namespace)")

    # -- the explicit door back (cupy.ndarray.get) --------------------------
    def get(self):
        return self._a.copy()

    # -- attributes and methods: NumPy's, on the wrapped array --------------
    def __getattr__(self, name):
        if name.startswith("__"):
            # NumPy would read __array_interface__ / __array_struct__ of the
            # wrapped array and convert silently: a device array has neither
            raise AttributeError(name)
        value = getattr(self._a, name)
        if callable(value):
            return lambda *a, **k: _call(value, a, k, f"StrictArray.{name}")
        return _wrap(value)

    def __getitem__(self, index):
        return _wrap(self._a[_unwrap(index, where="an index")])

    def __setitem__(self, index, value):
        self._a[_unwrap(index, where="an index")] = _unwrap(value, where="an assigned value")

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(row) for row in self._a)

    # explicit scalar conversions are allowed, as in CuPy (they synchronise)
    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __index__(self):
        return self._a.__index__()

    def __bool__(self):
        return bool(self._a)

    def __complex__(self):
        return complex(self._a)

    def __repr__(self):
        return "strict_" + repr(self._a)

    __str__ = __repr__

    def __neg__(self):
        return _wrap(-self._a)

    def __pos__(self):
        return self

    def __abs__(self):
        return _wrap(abs(self._a))

    def __invert__(self):
        return _wrap(~self._a)


_OPERANDS = (int, float, complex, bool, numpy.generic)


def _binary(op, reflected=False, inplace=False):
    """An operator that takes StrictArrays and scalars and refuses host arrays."""
    def method(self, other):
        if _is_host(other):
            _refuse(f"a host numpy.ndarray was an operand of {op.__name__}")
        if isinstance(other, StrictArray):
            other = other._a
        elif not isinstance(other, _OPERANDS):
            return NotImplemented            # e.g. a Tensor: its reflected method runs
        if inplace:
            op(self._a, other, out=self._a)
            return self
        return _wrap(op(other, self._a) if reflected else op(self._a, other))
    return method


for _name, _op in [("add", numpy.add), ("sub", numpy.subtract), ("mul", numpy.multiply),
                   ("truediv", numpy.true_divide), ("floordiv", numpy.floor_divide),
                   ("mod", numpy.remainder), ("pow", numpy.power), ("matmul", numpy.matmul),
                   ("and", numpy.bitwise_and), ("or", numpy.bitwise_or),
                   ("xor", numpy.bitwise_xor)]:
    setattr(StrictArray, f"__{_name}__", _binary(_op))
    setattr(StrictArray, f"__r{_name}__", _binary(_op, reflected=True))
    setattr(StrictArray, f"__i{_name}__", _binary(_op, inplace=True))
for _name, _op in [("lt", numpy.less), ("le", numpy.less_equal), ("gt", numpy.greater),
                   ("ge", numpy.greater_equal), ("eq", numpy.equal), ("ne", numpy.not_equal)]:
    setattr(StrictArray, f"__{_name}__", _binary(_op))


class _Ufunc:
    """A NumPy ufunc that refuses host arrays (also through .at, .reduce, ...)."""

    def __init__(self, ufunc):
        self._ufunc = ufunc
        self.__name__ = ufunc.__name__

    def __call__(self, *args, **kwargs):
        return _call(self._ufunc, args, kwargs, self.__name__)

    def __getattr__(self, name):
        attr = getattr(self._ufunc, name)
        if name in ("at", "reduce", "accumulate", "reduceat", "outer"):
            return lambda *a, **k: _call(attr, a, k, f"{self.__name__}.{name}")
        return attr


def _call(fn, args, kwargs, name, allow_host=False):
    where = f"an argument of {name}"
    args = _unwrap(args, allow_host, where)
    kwargs = {k: _unwrap(v, allow_host, where) for k, v in kwargs.items()}
    return _wrap(fn(*args, **kwargs))


def _function(fn, name):
    allow_host = name in _TRANSFER

    def strict_fn(*args, **kwargs):
        return _call(fn, args, kwargs, name, allow_host)

    strict_fn.__name__ = name
    return strict_fn


def _namespace(module, name):
    """A module object mirroring `module` whose functions are strict."""
    ns = types.ModuleType(name, f"strict stand-in for {module.__name__}")
    cache = {}

    def __getattr__(attr):
        if attr in cache:
            return cache[attr]
        value = getattr(module, attr)
        if isinstance(value, numpy.ufunc):
            value = _Ufunc(value)
        elif isinstance(value, types.ModuleType) and value.__name__.startswith("numpy"):
            value = _namespace(value, f"{name}.{attr}")
        elif callable(value) and not isinstance(value, type):
            value = _function(value, attr)
        cache[attr] = value
        return value

    ns.__getattr__ = __getattr__
    ns.__file__ = __file__
    return ns


namespace = _namespace(numpy, "strict_xp.namespace")
namespace.ndarray = StrictArray


def to_strict(array):
    """Host array -> StrictArray (the explicit transfer, as cupy.asarray)."""
    return namespace.asarray(array)
