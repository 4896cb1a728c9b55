"""Tensor, the graph it records, and reverse mode of any order.

A Tensor holds a raw backend array in `.data`. When an operation runs on
tensors that require gradients (and gradients are enabled), the result
remembers the primitive that made it, its input tensors and the primitive's
static arguments. `grad` walks that graph backwards, calling each primitive's
vector-Jacobian product (VJP).

The VJPs are written with Tensor operations, not raw arrays. So the backward
pass is itself ordinary computation: with create_graph=True it is recorded
like any forward pass and can be differentiated again (double backward, and
so on to any order). With create_graph=False it runs under no_grad and
records nothing.
"""
import functools
import os

from . import backend
from .backend import xp

_grad_enabled = [True]


def _fast_from_env():
    value = os.environ.get("SCRATCHMETA_FAST", "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"SCRATCHMETA_FAST must be 0 or 1, got {value!r}")
    return value == "1"


_fast_paths = [_fast_from_env()]


def use_fast_paths(flag=True):
    """Switch the speed overlay (scratchmeta/fast) on or off; returns the previous setting.

    Off, every primitive runs the forward and VJP written beside it in the
    engine's core files: exactly the code a reader sees. On (the default,
    or env SCRATCHMETA_FAST=1), primitives with an overlay entry run that
    entry instead; results are equal either way.
    """
    if not isinstance(flag, bool):
        raise TypeError(f"use_fast_paths: flag must be True or False, got {flag!r}")
    previous, _fast_paths[0] = _fast_paths[0], flag
    return previous


def fast_paths_enabled():
    return _fast_paths[0]


class _Mode:
    """Recording on or off inside a `with` block (or a decorated function)."""

    def __init__(self, on):
        self.on = on

    def __enter__(self):
        self.prev, _grad_enabled[0] = _grad_enabled[0], self.on

    def __exit__(self, *exc):
        _grad_enabled[0] = self.prev

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            with type(self)():
                return fn(*args, **kwargs)
        return wrapped


class no_grad(_Mode):
    """Context manager (and decorator) that stops graph recording."""

    def __init__(self):
        super().__init__(False)


class enable_grad(_Mode):
    """Context manager (and decorator) that turns graph recording back on."""

    def __init__(self):
        super().__init__(True)


def is_grad_enabled():
    return _grad_enabled[0]


def _is_float(dtype):
    return dtype.kind == "f"


class Tensor:
    """An array on the active backend plus the graph node that produced it."""

    __slots__ = ("data", "requires_grad", "grad", "_op", "_parents", "_kw", "__weakref__")
    __array_priority__ = 1000   # numpy_array + Tensor -> Tensor.__radd__

    def __init__(self, data, requires_grad=False):
        self.data = data
        self.requires_grad = requires_grad
        self.grad = None
        self._op = None          # the Primitive that made this tensor (None: leaf)
        self._parents = ()       # its input tensors
        self._kw = None          # its static arguments (axis, shape, index...)

    # -- properties ----------------------------------------------------
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    is_leaf = property(lambda self: self._op is None)
    T = property(lambda self: self.transpose())

    @property
    def mT(self):
        """Transpose of the last two axes (batched matrices)."""
        axes = list(range(self.ndim))
        axes[-2], axes[-1] = axes[-1], axes[-2]
        return self.transpose(*axes)

    def numel(self):
        return int(self.data.size)

    def __len__(self):
        return self.data.shape[0]

    def item(self):
        return self.data.item()

    def numpy(self):
        """A host NumPy copy, whatever the backend (the explicit way back)."""
        return backend.to_numpy(self.data).copy()

    def tolist(self):
        return self.numpy().tolist()

    def detach(self):
        return Tensor(self.data)

    def requires_grad_(self, flag=True):
        if flag and not _is_float(self.data.dtype):
            raise ValueError(f"only floating-point tensors can require gradients, got dtype {self.data.dtype}")
        self.requires_grad = flag
        return self

    def astype(self, dtype):
        return astype(self, dtype=backend.resolve_dtype(dtype))

    def __repr__(self):
        body = repr(self.data).replace("\n", "\n       ")
        extra = ", requires_grad=True" if self.requires_grad else ""
        return f"tensor({body}{extra})"

    def __bool__(self):
        return bool(self.data)

    def __float__(self):
        return float(self.data.item())

    def __int__(self):
        return int(self.data.item())

    __hash__ = object.__hash__

    # -- reverse mode --------------------------------------------------
    def backward(self, grad_output=None, create_graph=False):
        """Accumulate d(self)/d(leaf) into `.grad` of every leaf that requires grad."""
        leaves = [t for t in _toposort((self,)) if t._op is None]
        if not leaves:
            raise RuntimeError("backward: this tensor does not require grad and has no graph")
        gs = grad(self, leaves, grad_outputs=grad_output, create_graph=create_graph,
                  allow_unused=True)
        for leaf, g in zip(leaves, gs):
            if g is not None:
                leaf.grad = g if leaf.grad is None else leaf.grad + g

    # Operators and array methods (x + y, x.sum(), x.exp(), ...) are bound
    # onto Tensor by ops.py, which defines the primitives they call.


# ---------------------------------------------------------------------------
# Making tensors
# ---------------------------------------------------------------------------
def tensor(data, requires_grad=False, dtype=None):
    """A new leaf Tensor on the active backend (a copy of `data`).

    Python floats and lists of floats take the default dtype (float64 unless
    `sm.set_default_dtype` says otherwise); arrays keep their dtype unless
    `dtype` is given. A host NumPy array is uploaded (the explicit way onto
    the GPU); a CuPy array under the NumPy backend is refused (use .get()).
    """
    if isinstance(data, Tensor):
        data = data.data
    other = backend.foreign_backend(data)
    if other is not None and other != "numpy":
        # host -> device is the explicit upload tensor() is for; device -> host is not
        raise TypeError(
            f"tensor(): got a {other} array while the active backend is "
            f"{backend.get_backend()!r}; move it explicitly (sm.set_backend or .get())")
    if dtype is not None:
        array = xp.array(data, dtype=backend.resolve_dtype(dtype))
    elif hasattr(data, "dtype"):
        array = xp.array(data)
    else:
        array = xp.array(data)
        if array.dtype.kind == "f":
            array = array.astype(backend.get_default_dtype(), copy=False)
    _check_numeric(array, "tensor()")
    if requires_grad and not _is_float(array.dtype):
        raise ValueError(f"only floating-point tensors can require gradients, got dtype {array.dtype}")
    return Tensor(array, requires_grad=requires_grad)


def _check_numeric(array, where):
    if array.dtype.kind not in "biufc":
        raise TypeError(f"{where}: expected numbers (bool, int, float or complex), got an array "
                        f"of dtype {array.dtype}")


def as_tensor(x, like=None):
    """Lift a Tensor, backend array or Python number to a Tensor (no copy, no grad)."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        if like is not None and _is_float(like.data.dtype):
            return Tensor(xp.asarray(x, dtype=like.data.dtype))
        if isinstance(x, float):
            return Tensor(xp.asarray(x, dtype=backend.get_default_dtype()))
        return Tensor(xp.asarray(x))
    if backend.is_array(x):
        _check_numeric(x, "as_tensor()")
        return Tensor(x)
    other = backend.foreign_backend(x)
    if other is not None:
        raise TypeError(
            f"got a {other} array while the active backend is {backend.get_backend()!r}; "
            f"mixing backends is not allowed: convert explicitly")
    array = xp.asarray(x)
    _check_numeric(array, "as_tensor()")
    return Tensor(array)


# ---------------------------------------------------------------------------
# Primitives
# ---------------------------------------------------------------------------
class Primitive:
    """An operation: a forward on raw arrays and a VJP in Tensor operations.

    `fast` is the speed overlay's entry for this primitive (scratchmeta/fast),
    or None; it runs in place of the forward and VJP below while the fast
    paths are on (use_fast_paths).
    """

    __slots__ = ("name", "forward", "vjp_fn", "fast")

    def __init__(self, forward):
        self.name = forward.__name__
        self.forward = forward
        self.vjp_fn = None
        self.fast = None

    def vjp(self, fn):
        """Decorator: register `fn(g, out, *inputs, **static) -> tuple of Tensors`."""
        self.vjp_fn = fn
        return fn

    def __call__(self, *args, **kw):
        if self.fast is not None and _fast_paths[0]:
            return self.fast(*args, **kw)
        ts = lift(args)
        return record(Tensor(self.forward(*[t.data for t in ts], **kw)), self, ts, kw)

    @property
    def __name__(self):          # so checks and tracebacks name the op
        return self.name

    def __repr__(self):
        return f"<primitive {self.name}>"


def primitive(forward):
    """Decorator that turns a raw-array forward function into a Primitive."""
    return Primitive(forward)


def lift(args):
    """Every argument as a Tensor; Python numbers take the dtype of the first Tensor."""
    for a in args:
        if not isinstance(a, Tensor):
            break
    else:
        return tuple(args)               # the common case: nothing to convert
    like = next((a for a in args if isinstance(a, Tensor)), None)
    return tuple(a if isinstance(a, Tensor) else as_tensor(a, like) for a in args)


def record(out, op, inputs, kw):
    """Make `out` a graph node of `op` (anything with .name and .vjp_fn) when
    recording is on and an input requires grad; returns `out`."""
    if _grad_enabled[0]:
        for t in inputs:
            if t.requires_grad:
                out.requires_grad = True
                out._op, out._parents, out._kw = op, inputs, kw
                break
    return out


def composite(fn):
    """Marks a composite function that the speed overlay may replace as a whole
    (a fusion of several primitives). Off the fast paths, `fn` itself runs."""
    @functools.wraps(fn)
    def call(*args, **kw):
        if call.fast is not None and _fast_paths[0]:
            return call.fast(*args, **kw)
        return fn(*args, **kw)
    call.fast, call.reference = None, fn
    return call


@primitive
def astype(x, dtype):
    return x.astype(dtype)


@astype.vjp
def _astype_vjp(g, out, x, dtype):
    return (astype(g, dtype=x.dtype),)        # the gradient takes its input's dtype


# ---------------------------------------------------------------------------
# The graph walk
# ---------------------------------------------------------------------------
def _toposort(roots):
    """Tensors that require grad, reachable from roots, parents before children.

    Iterative depth-first search: a chain of any length is fine (no recursion).
    """
    order, visited = [], set()
    stack = [(r, False) for r in roots if r.requires_grad]
    while stack:
        t, expanded = stack.pop()
        if expanded:
            order.append(t)
            continue
        if id(t) in visited:
            continue
        visited.add(id(t))
        stack.append((t, True))
        if t._parents is None:
            raise RuntimeError(_RELEASED)
        for p in t._parents:
            if p.requires_grad and id(p) not in visited:
                stack.append((p, False))
    return order


_RELEASED = ("grad: this graph was released by an earlier grad(..., retain_graph=False); "
             "keep it with retain_graph=None (the default) to differentiate it again")


def _as_tuple(x):
    if isinstance(x, (tuple, list)):
        return tuple(x)
    return (x,)


def grad(outputs, inputs, grad_outputs=None, create_graph=False, allow_unused=False,
         retain_graph=None):
    """Gradients of `outputs` with respect to `inputs`, like torch.autograd.grad.

    Returns a tuple with one Tensor (or None, if allow_unused) per input.
    With create_graph=True the backward pass is recorded, so the gradients
    are differentiable functions of the inputs (double backward).
    retain_graph=False releases the graph during the walk: each node lets go
    of its inputs once its VJP has run, so intermediate arrays are freed as
    early as in PyTorch (second-order MAML's peak memory is mostly these);
    differentiating that graph again is then an error. The default (None)
    keeps the graph, unlike PyTorch, whose default releases it unless
    create_graph=True.
    """
    outputs, inputs = _as_tuple(outputs), _as_tuple(inputs)
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor):
            raise TypeError(f"grad: input {i} is a {type(t).__name__}, not a Tensor")
    if grad_outputs is None:
        grad_outputs = (None,) * len(outputs)
    grad_outputs = _as_tuple(grad_outputs)
    if len(grad_outputs) != len(outputs):
        raise ValueError(f"grad: {len(outputs)} outputs but {len(grad_outputs)} grad_outputs")

    grads = {}
    for i, (o, go) in enumerate(zip(outputs, grad_outputs)):
        if not isinstance(o, Tensor):
            raise TypeError(f"grad: output {i} is a {type(o).__name__}, not a Tensor")
        if not o.requires_grad:
            raise RuntimeError(f"grad: output {i} does not require grad and has no graph")
        if go is None:
            if o.data.size != 1:
                raise RuntimeError(
                    f"grad: output {i} has shape {o.shape}; grad can be implicitly "
                    f"created only for scalar outputs: pass grad_outputs")
            go = Tensor(xp.ones_like(o.data))
        else:
            go = as_tensor(go, o)
            if go.shape != o.shape:
                raise ValueError(f"grad: grad_outputs[{i}] has shape {go.shape}, output has shape {o.shape}")
        grads[id(o)] = grads[id(o)] + go if id(o) in grads else go

    order = _toposort(outputs)
    # Which tensors lie on a path to an input: only those receive gradients.
    wanted = {id(t) for t in inputs}
    needed = set()
    for t in order:
        if id(t) in wanted or any(id(p) in needed for p in t._parents):
            needed.add(id(t))

    release = retain_graph is False
    with _Mode(create_graph):
        for i in range(len(order) - 1, -1, -1):
            t = order[i]
            parents = t._parents
            if release and t._op is not None:
                order[i] = None               # the walk's own reference ...
                t._parents = None             # ... and the node's, to its inputs
            key = id(t)
            g = grads.get(key)
            if g is None or t._op is None or key not in needed:
                continue
            if key not in wanted:
                del grads[key]            # free intermediate gradients early
            in_grads = t._op.vjp_fn(g, t, *parents, **t._kw)
            for p, gp in zip(parents, in_grads):
                if gp is None or id(p) not in needed:
                    continue
                if gp.shape != p.shape:
                    raise RuntimeError(
                        f"VJP of {t._op.name} returned a gradient of shape {gp.shape} "
                        f"for an input of shape {p.shape}")
                if gp.dtype != p.dtype:           # each tensor's gradient keeps its dtype
                    gp = astype(gp, dtype=p.dtype)
                k = id(p)
                grads[k] = grads[k] + gp if k in grads else gp

    result = []
    for i, t in enumerate(inputs):
        g = grads.get(id(t))
        if g is None:
            if not allow_unused:
                raise RuntimeError(
                    f"grad: input {i} (shape {t.shape}) is not part of the graph of the "
                    f"outputs; pass allow_unused=True to get None for it")
            result.append(None)
        else:
            result.append(g if create_graph else Tensor(g.data))
    return tuple(result)

