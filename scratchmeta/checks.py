"""Derivative checks against central finite differences, to any order.

One check serves every order. For a function f and a random probe v of the
output's shape, reverse mode gives the vector-Jacobian product v^T J; central
differences give the same numbers as

    d/dx_j <v, f(x)>  ~=  (<v, f(x + eps e_j)> - <v, f(x - eps e_j)>) / (2 eps)

with error O(eps^2). Order 2 reruns that check on the function
(x, v) -> v^T J(x), built with create_graph=True; order 3 on its VJP, and so on.
Every comparison runs in float64. A check that could not fail (fn returns no
Tensor of floats, or no output is connected to any input) raises instead of
passing.

Also here, built on the same reverse mode: hvp (H v by double backward),
hessian (one input, or the block Hessian of several as PyTorch returns it) and
jvp (forward mode J v by the double-VJP trick).
"""
from . import backend
from .backend import xp
from .tensor import Tensor, enable_grad, grad, tensor

_MAX_ELEMENTWISE = 4096    # inputs larger than this are probed along random directions


class GradcheckError(AssertionError):
    """A derivative disagrees with finite differences (the message has the details)."""


def _prepare(inputs, who):
    """Float64 leaf copies of the floating inputs; other inputs pass through."""
    if isinstance(inputs, (Tensor,)) or backend.is_array(inputs) or isinstance(inputs, (int, float)):
        inputs = (inputs,)
    out, checked = [], []
    for i, x in enumerate(inputs):
        t = x if isinstance(x, Tensor) else tensor(x)
        if t.dtype.kind == "f":
            if not bool(xp.all(xp.isfinite(t.data))):
                raise ValueError(f"{who}: input {i} (shape {t.shape}) contains NaN or inf; "
                                 f"finite differences need finite inputs")
            t = tensor(t.data, dtype="float64", requires_grad=True)
            checked.append(i)
        out.append(t)
    if not checked:
        raise ValueError(f"{who}: no floating-point input to differentiate")
    return out, checked


def _require_finite(xs, who):
    """hvp and hessian refuse NaN/inf inputs, like the finite-difference checks."""
    for i, x in enumerate(xs):
        if x.dtype.kind == "f" and not bool(xp.all(xp.isfinite(x.data))):
            raise ValueError(f"{who}: input {i} (shape {x.shape}) contains NaN or inf")


def _outputs(fn, xs):
    y = fn(*xs)
    return tuple(y) if isinstance(y, (tuple, list)) else (y,)


def _describe(y):
    if isinstance(y, Tensor):
        return f"a Tensor of dtype {y.dtype}"
    return f"{type(y).__name__} {y!r}"[:80]


def _checked_outputs(fn, xs, who):
    """fn(*xs), refused unless it is a floating Tensor or a non-empty tuple of them.

    A check of anything else (None, a Python number, a raw array, an integer
    tensor) would compare nothing with nothing and pass.
    """
    y = fn(*xs)
    ys = tuple(y) if isinstance(y, (tuple, list)) else (y,)
    if not ys:
        raise TypeError(f"{who}: fn returned an empty {type(y).__name__}; it must return a "
                        f"Tensor of floats (or a tuple of them)")
    for k, out in enumerate(ys):
        if not isinstance(out, Tensor) or out.dtype.kind != "f":
            where = "fn" if len(ys) == 1 and not isinstance(y, (tuple, list)) else f"output {k} of fn"
            raise TypeError(f"{who}: {where} returned {_describe(out)}; it must return a "
                            f"Tensor of floats (or a tuple of them)")
    return ys


def _scalar_output(fn, xs, who):
    """fn(*xs) for hvp and hessian: a Tensor of floats with one element."""
    ys = _checked_outputs(fn, xs, who)
    if len(ys) != 1:
        raise TypeError(f"{who}: fn must return one scalar Tensor, got a tuple of {len(ys)}")
    y = ys[0]
    if y.data.size != 1:
        raise ValueError(f"{who}: fn must return a scalar, got shape {y.shape}")
    return y


def _dot(a, b):
    return float(xp.sum(a * b))


def _probe_value(fn, xs, vs):
    """<v, f(x)> summed over the outputs.

    Recording stays on: at order k >= 2 the function itself runs a backward pass.
    """
    with enable_grad():
        ys = [y for y in _outputs(fn, xs) if y is not None and y.dtype.kind == "f"]
    return sum(_dot(y.data, v) for y, v in zip(ys, vs))


def _name(fn, name):
    return name or getattr(fn, "__name__", "function")


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, name=None):
    """Compare reverse-mode VJPs of `fn` with central differences.

    `fn(*inputs)` returns a Tensor (or a tuple of them). Every floating-point
    input is checked (in float64): element by element for small inputs, along
    random directions for large ones. Returns True, or raises GradcheckError
    naming the function, the input, the worst element and both values.

    A check that cannot fail is refused rather than passed:
    - fn must return a Tensor of floats (or a tuple of them): None, a number,
      a raw array or an integer tensor raise TypeError;
    - at least one output must be connected by the graph to at least one
      checked input (requires_grad): outputs cut off from every input (built
      from `.data` or `.numpy()`, under no_grad, or ignoring the inputs) raise
      GradcheckError, since reverse mode then computes nothing to compare.
    A zero gradient is legitimate and is checked: an input that the outputs
    ignore, while some output uses another input, has a zero Jacobian block
    that the finite differences must confirm.
    """
    who = _name(fn, name)
    xs, checked = _prepare(inputs, "gradcheck")
    rng = backend.host.random.default_rng(seed)
    ys = _checked_outputs(fn, xs, f"gradcheck {who}")
    if not any(y.requires_grad for y in ys):
        raise GradcheckError(
            f"gradcheck {who}: no output is connected to any input by the graph "
            f"(requires_grad is False on all {len(ys)} output(s)), so the check would compare "
            f"nothing; build the output from the inputs with Tensor operations (not .data, "
            f".numpy() or under no_grad)")
    live = list(ys)
    vs = [backend.asarray(rng.standard_normal(y.shape), dtype=y.dtype) for y in live]
    diff_ys = [y for y in live if y.requires_grad]
    diff_vs = [v for y, v in zip(live, vs) if y.requires_grad]
    targets = [xs[i] for i in checked]
    if diff_ys:
        analytic = grad(diff_ys, targets, grad_outputs=diff_vs, allow_unused=True)
    else:
        analytic = (None,) * len(targets)
    for i, x, g in zip(checked, targets, analytic):
        if g is not None and g.shape != x.shape:
            raise GradcheckError(f"gradcheck {who}: gradient of input {i} has shape {g.shape}, "
                                 f"the input has shape {x.shape}")
        g = xp.zeros_like(x.data) if g is None else g.data

        def value_at(delta):
            shifted = list(xs)
            shifted[i] = Tensor(x.data + delta, requires_grad=True)
            return _probe_value(fn, shifted, vs)

        if x.data.size <= _MAX_ELEMENTWISE:
            numeric = xp.zeros_like(x.data)
            flat = numeric.reshape(-1)
            for j in range(x.data.size):
                e = xp.zeros(x.data.size, dtype=x.dtype)
                e[j] = eps
                e = e.reshape(x.shape)
                flat[j] = (value_at(e) - value_at(-e)) / (2 * eps)
            err = xp.abs(g - numeric)
            bad = err > atol + rtol * xp.abs(numeric)
            if bool(xp.any(bad)):
                j = int(xp.argmax(err - (atol + rtol * xp.abs(numeric))))
                idx = tuple(int(k) for k in backend.host.unravel_index(j, x.shape))
                raise GradcheckError(
                    f"gradcheck {who}: input {i} (shape {x.shape}) disagrees with finite "
                    f"differences; worst element {idx}: analytic {float(g.reshape(-1)[j]):.10g}, "
                    f"numeric {float(numeric.reshape(-1)[j]):.10g} "
                    f"({int(xp.sum(bad))} of {x.data.size} elements out of tolerance)")
        else:
            for k in range(3):
                u = backend.asarray(rng.standard_normal(x.shape), dtype=x.dtype)
                numeric = (value_at(eps * u) - value_at(-eps * u)) / (2 * eps)
                analytic_dir = _dot(g, u)
                if abs(analytic_dir - numeric) > atol + rtol * abs(numeric):
                    raise GradcheckError(
                        f"gradcheck {who}: input {i} (shape {x.shape}) disagrees with finite "
                        f"differences along random direction {k}: analytic {analytic_dir:.10g}, "
                        f"numeric {numeric:.10g}")
    return True


def vjp_function(fn, n_inputs, seed=0):
    """(x_1..x_n, v_1..v_m) -> the VJPs v^T J(x), recorded so they can be differentiated.

    This is the function whose derivative is the next order's derivative.
    """
    def vjp_fn(*args):
        xs, vs = args[:n_inputs], args[n_inputs:]
        ys = [y for y in _outputs(fn, xs) if y is not None and y.dtype.kind == "f" and y.requires_grad]
        gs = grad(ys, xs, grad_outputs=vs[:len(ys)], create_graph=True, allow_unused=True)
        return tuple(g for g in gs if g is not None)

    vjp_fn.__name__ = f"vjp({_name(fn, None)})"
    return vjp_fn


def check_grads(fn, inputs, order=2, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, name=None):
    """Check derivatives of orders 1..order against finite differences."""
    who = _name(fn, name)
    xs, checked = _prepare(inputs, "check_grads")
    if len(checked) != len(xs):
        # freeze non-floating inputs (labels, indices) into the function
        fixed = list(xs)

        def fn_float(*floats, _fn=fn):
            args = list(fixed)
            for k, i in enumerate(checked):
                args[i] = floats[k]
            return _fn(*args)
        fn, xs = fn_float, [xs[i] for i in checked]
    rng = backend.host.random.default_rng(seed)
    for k in range(1, order + 1):
        gradcheck(fn, xs, eps=eps, atol=atol, rtol=rtol, seed=seed + k, name=f"{who} (order {k})")
        if k == order:
            break
        ys = [y for y in _outputs(fn, xs) if y is not None and y.dtype.kind == "f" and y.requires_grad]
        if not ys:
            break
        vs = [tensor(backend.asarray(rng.standard_normal(y.shape)), requires_grad=True) for y in ys]
        fn = vjp_function(fn, len(xs))
        xs = list(xs) + vs
    return True


def gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, name=None):
    """Second-order check: gradcheck of (x, v) -> v^T J(x) built with create_graph=True."""
    return check_grads(fn, inputs, order=2, eps=eps, atol=atol, rtol=rtol, seed=seed, name=name)


def _directions(xs, v, single, who, word):
    """One direction per input (hvp's vectors, jvp's tangents) as Tensors of its shape and dtype."""
    vs = [v] if single else list(v)
    if len(vs) != len(xs):
        raise ValueError(f"{who}: {len(xs)} inputs but {len(vs)} {word}s")
    vs = [Tensor(u.data if isinstance(u, Tensor) else backend.asarray(u, dtype=x.dtype))
          for x, u in zip(xs, vs)]
    for i, (x, u) in enumerate(zip(xs, vs)):
        if u.shape != x.shape:
            raise ValueError(f"{who}: {word} {i} has shape {u.shape}, input has shape {x.shape}")
    return vs


def hvp(fn, inputs, v):
    """Hessian-vector product of a scalar function by double backward.

    Returns (fn(inputs), H v) like torch.autograd.functional.hvp: the second
    item matches the structure of `inputs` (a Tensor for a single input).
    H v = d/dx <grad f(x), v>: differentiate the gradient once more, with v
    as the upstream gradient.
    """
    single = not isinstance(inputs, (tuple, list))
    xs = [tensor(x.data if isinstance(x, Tensor) else x, requires_grad=True)
          for x in ((inputs,) if single else inputs)]
    _require_finite(xs, "hvp")
    vs = _directions(xs, v, single, "hvp", "vector")
    y = _scalar_output(fn, xs, "hvp")
    gs = grad(y, xs, create_graph=True, allow_unused=True) if y.requires_grad else (None,) * len(xs)
    used = [(x, g, vec) for x, g, vec in zip(xs, gs, vs) if g is not None and g.requires_grad]
    hv = [None] * len(xs)
    if used:
        out = grad([g for _, g, _ in used], xs, grad_outputs=[vec for _, _, vec in used],
                   allow_unused=True)
        hv = list(out)
    hv = [Tensor(xp.zeros_like(x.data)) if h is None else h for x, h in zip(xs, hv)]
    return Tensor(y.data), (hv[0] if single else tuple(hv))


def hessian(fn, inputs):
    """Full Hessian of a scalar function, like torch.autograd.functional.hessian.

    For one tensor x: a Tensor of shape x.shape + x.shape. For a tuple (or list)
    of inputs (x_1, ..., x_n): a tuple of tuples of blocks, where block [i][j]
    is d^2 f / dx_i dx_j of shape x_i.shape + x_j.shape (PyTorch's layout).
    Row k of the blocks [i][:] is d/dx of the k-th component of grad_{x_i} f
    (one backward pass each), so use it on small inputs only. Inputs that f
    ignores get zero blocks.
    """
    single = not isinstance(inputs, (tuple, list))
    if not single and not inputs:
        raise ValueError("hessian: no inputs")
    xs = [tensor(x.data if isinstance(x, Tensor) else x, requires_grad=True)
          for x in ((inputs,) if single else inputs)]
    for i, x in enumerate(xs):
        if x.dtype.kind != "f":
            raise TypeError(f"hessian: input {i} has dtype {x.dtype}; the Hessian needs "
                            f"floating-point inputs")
    _require_finite(xs, "hessian")
    y = _scalar_output(fn, xs, "hessian")
    gs = grad(y, xs, create_graph=True, allow_unused=True) if y.requires_grad else (None,) * len(xs)
    blocks = [[xp.zeros((xi.data.size, xj.data.size), dtype=y.dtype) for xj in xs] for xi in xs]
    for i, g in enumerate(gs):
        if g is None or not g.requires_grad:
            continue                              # grad_{x_i} f is constant: zero rows
        flat = g.reshape(-1)
        for k in range(xs[i].data.size):
            rows = grad(flat[k], xs, allow_unused=True)
            for j, row in enumerate(rows):
                if row is not None:
                    blocks[i][j][k] = row.data.reshape(-1)
    H = tuple(tuple(Tensor(blocks[i][j].reshape(xs[i].shape + xs[j].shape))
                    for j in range(len(xs))) for i in range(len(xs)))
    return H[0][0] if single else H


def jvp(fn, inputs, tangents):
    """Forward mode: the Jacobian-vector product J v, by the double-VJP trick.

    Returns (fn(inputs), J v) like torch.autograd.functional.jvp: each item
    matches the structure of fn's output (a Tensor, or a tuple for a tuple).

    Reverse mode gives u -> J^T u for any u. That map is linear in u, and its
    own VJP with upstream v is (J^T)^T v = J v. So: make a dummy u of each
    output's shape, build g(u) = J^T u with create_graph=True, and
    differentiate g with respect to u, v as the upstream gradient. Two
    backward passes instead of one forward pass, but no forward-mode rules
    are needed: every primitive's VJP is reused. Outputs that no input
    reaches get a zero tangent.
    """
    single = not isinstance(inputs, (tuple, list))
    xs = [tensor(x.data if isinstance(x, Tensor) else x, requires_grad=True)
          for x in ((inputs,) if single else inputs)]
    for i, x in enumerate(xs):
        if x.dtype.kind != "f":
            raise TypeError(f"jvp: input {i} has dtype {x.dtype}; forward mode needs "
                            f"floating-point inputs")
    _require_finite(xs, "jvp")
    vs = _directions(xs, tangents, single, "jvp", "tangent")
    with enable_grad():
        out = fn(*xs)
    ys = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    for k, y in enumerate(ys):
        if not isinstance(y, Tensor) or y.dtype.kind != "f":
            raise TypeError(f"jvp: output {k} of fn is {_describe(y)}; fn must return a "
                            f"Tensor of floats (or a tuple of them)")
    live = [k for k, y in enumerate(ys) if y.requires_grad]
    tangents_out = [Tensor(xp.zeros_like(y.data)) for y in ys]
    if live:
        us = [Tensor(xp.zeros_like(ys[k].data), requires_grad=True) for k in live]
        with enable_grad():
            gs = grad([ys[k] for k in live], xs, grad_outputs=us, create_graph=True,
                      allow_unused=True)
        pairs = [(g, v) for g, v in zip(gs, vs) if g is not None and g.requires_grad]
        if pairs:
            jv = grad([g for g, _ in pairs], us, grad_outputs=[v for _, v in pairs],
                      allow_unused=True)
            for k, t in zip(live, jv):
                if t is not None:
                    tangents_out[k] = t
    values = tuple(Tensor(y.data) for y in ys)
    if isinstance(out, (tuple, list)):
        return values, tuple(tangents_out)
    return values[0], tangents_out[0]
