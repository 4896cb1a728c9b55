"""The contract a model must keep for the batched (vectorised over tasks) path.

A model is a function model(params, x): params a dict name -> Tensor, x the
inputs. The per-task path (maml.meta_gradient_loop) calls it with the
parameters as the model created them and one task's x (n, ...). The batched
path gives every parameter a leading task axis, theta[k] (s...) ->
phi[k] (T, s...), and calls it with x (T, n, ...); the model must then
return (T, n, ...): task t's outputs computed from task t's parameters only.

A parameter that broadcasts against the wrong axis breaks that silently: a
0-d parameter becomes (T,) and, multiplied with x (T, n, 1), lines up with
x's LAST axis, giving (T, n, T). check_batched_model finds this before any
gradient is taken and names the parameters that mix tasks. See
docs/your_model.md. The check runs once per model and shapes (one forward
pass, plus one per parameter to find the tasks' independence).
"""
import weakref

from .. import backend, nn
from ..tensor import Tensor, no_grad

_CHECKED = weakref.WeakKeyDictionary()     # model -> signatures that passed


def _expected_shape(y_shape, loss):
    """What the model must return for targets of shape y_shape, or None when only (T, n) is known."""
    if loss == "mse":
        return tuple(y_shape)                               # (T, n, d): like the targets
    return None                                             # logits (T, n, C); a callable: (T, n, ...)


def _shape_ok(pred_shape, y_shape, loss):
    want = _expected_shape(y_shape, loss)
    if want is not None:
        return tuple(pred_shape) == want
    if loss == "cross_entropy":
        return len(pred_shape) == len(y_shape) + 1 and tuple(pred_shape[:-1]) == tuple(y_shape)
    return tuple(pred_shape[:2]) == tuple(y_shape[:2])


def tasks_mixed(model, phi, x, base):
    """Names of the batched parameters whose task-0 copy changes another task's output.

    base: model(phi, x).data. Each parameter's copy for task 0 is moved by
    +1; tasks 1..T-1 must not see it beyond rounding: 1e-9 of their scale in
    float64, 1000 ulps in float32 (a fast path may pick its arithmetic for the
    whole batch at once, e.g. batch norm's one- or two-pass variance).
    """
    mixed = []
    tol = max(1e-9, 1e3 * float(backend.host.finfo(base.dtype).eps))
    if x.shape[0] < 2:
        return mixed
    rest = backend.to_numpy(base[1:]) if base.shape[0] == x.shape[0] else None
    for k, v in phi.items():
        bumped = dict(phi)
        raw = backend.host.array(backend.to_numpy(v.data), copy=True)
        raw[0] = raw[0] + 1.0                                 # change task 0's copy only
        bumped[k] = Tensor(backend.asarray(raw, dtype=v.dtype))
        out = backend.to_numpy(model(bumped, x).data)
        if rest is None or out.shape != base.shape:
            mixed.append(k)
        elif backend.host.abs(out[1:] - rest).max(initial=0.0) > tol * (1 + backend.host.abs(rest).max(initial=0.0)):
            mixed.append(k)
    return mixed


def check_batched_model(model, theta, batch, loss="mse", who="maml"):
    """Raise ValueError, before any work, if model breaks the batched contract on this batch.

    Runs the model on the support inputs with batched parameters (no graph)
    and checks (1) that the prediction has the task axis and the shape the
    targets need: the targets' shape for "mse", (T, n, C) logits for
    "cross_entropy", (T, n, ...) for a callable loss; (2) that no task's
    output moves when another task's copy of a parameter does. The error
    names the parameters that mix the tasks and every parameter's shape.
    A model that passed once for the same shapes is not run again.
    """
    x, y = batch["support_x"], batch["support_y"]
    signature = (tuple((k, tuple(v.shape)) for k, v in theta.items()), tuple(x.shape),
                 tuple(y.shape), loss if isinstance(loss, str) else id(loss))
    try:
        seen = _CHECKED.setdefault(model, set())
    except TypeError:                                       # not weak-referenceable: check each time
        seen = set()
    if signature in seen:
        return
    T = x.shape[0]
    with no_grad():
        phi = nn.batched(theta, T)
        pred = model(phi, x)
        shape_ok = _shape_ok(pred.shape, y.shape, loss)
        mixed = tasks_mixed(model, phi, x, pred.data)
    if shape_ok and not mixed:
        seen.add(signature)
        return
    shapes = ", ".join(f"{k} {tuple(v.shape)} -> {tuple(phi[k].shape)}" for k, v in theta.items())
    want = _expected_shape(y.shape, loss)
    want = (f"{want}" if want is not None else
            f"{tuple(y.shape)} + (n_classes,)" if loss == "cross_entropy" else f"{tuple(y.shape[:2])} + ...")
    got = (f"it returned {tuple(pred.shape)}, but the targets {tuple(y.shape)} need {want}"
           if not shape_ok else f"it returned the right shape {tuple(pred.shape)}, but tasks "
           f"see each other's parameters")
    culprits = (f" Parameter(s) {', '.join(repr(k) for k in mixed)} mix the tasks: changing "
                f"task 0's copy changes another task's output." if mixed else "")
    raise ValueError(
        f"{who}: the model breaks the batched contract: with every parameter given a leading "
        f"task axis of {T} and x of shape {tuple(x.shape)}, {got}.{culprits} A parameter of "
        f"shape s is (T,) + s on the batched path and must broadcast against x's task axis "
        f"(e.g. write a 0-d parameter p as p.reshape(p.shape + (1, 1)) for x (T, n, d)). "
        f"Parameters (unbatched -> batched): {shapes}. See docs/your_model.md.")
