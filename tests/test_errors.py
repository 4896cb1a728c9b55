"""Bad input gets a clear error and changes nothing.

- shapes that do not broadcast or multiply: a ValueError naming the op and both shapes;
- grad of a non-scalar without grad_outputs, an input not in the graph
  without allow_unused, requires_grad on an integer tensor, arrays of the
  other backend, NaN inputs to the checks;
and after each error the tensors involved are as they were (data, .grad,
requires_grad, no graph recorded).
"""
import re

import numpy as np
import pytest

import scratchmeta as sm
from scratchmeta import backend
from scratchmeta.tensor import primitive

F = sm.functional


def t(*shape, requires_grad=True):
    return sm.tensor(np.arange(1.0, 1.0 + np.prod(shape, dtype=int)).reshape(shape) / 7,
                     requires_grad=requires_grad)


def _snapshot(*tensors):
    return [(x.numpy(), None if x.grad is None else x.grad.numpy(), x.requires_grad, x._op)
            for x in tensors]


def _assert_unchanged(tensors, before):
    for x, (data, grad, rg, op) in zip(tensors, before):
        np.testing.assert_array_equal(x.numpy(), data)
        if grad is None:
            assert x.grad is None
        else:
            np.testing.assert_array_equal(x.grad.numpy(), grad)
        assert x.requires_grad == rg and x._op is op


def _shapes(*shapes):
    """A regex for the shapes in a message, in order: '(2, 3)' ... '(4,)'."""
    return ".*".join(re.escape(str(s)) for s in shapes)


# ---------------------------------------------------------------------------
# shapes that do not broadcast or multiply
# ---------------------------------------------------------------------------
BINARY = [("add", lambda a, b: a + b), ("sub", lambda a, b: a - b), ("mul", lambda a, b: a * b),
          ("div", lambda a, b: a / b), ("pow", lambda a, b: a ** b)]


@pytest.mark.parametrize("name,op", BINARY, ids=[b[0] for b in BINARY])
@pytest.mark.parametrize("sa,sb", [((2, 3), (4,)), ((3,), (2,)), ((2, 1, 3), (4, 2))])
def test_binary_ops_name_the_op_and_both_shapes(name, op, sa, sb):
    a, b = t(*sa), t(*sb)
    before = _snapshot(a, b)
    with pytest.raises(ValueError, match=rf"^{name}: shapes {_shapes(sa, sb)} do not broadcast"):
        op(a, b)
    _assert_unchanged([a, b], before)


@pytest.mark.parametrize("sa,sb", [((2, 3), (2, 3)), ((3,), (4,)), ((2, 2, 3), (2, 2)),
                                   ((2, 3, 4), (3, 4, 2))])
def test_matmul_names_both_shapes(sa, sb):
    a, b = t(*sa), t(*sb)
    before = _snapshot(a, b)
    with pytest.raises(ValueError, match=rf"^matmul: shapes {_shapes(sa, sb)} do not multiply"):
        a @ b
    _assert_unchanged([a, b], before)


def test_matmul_refuses_0d():
    with pytest.raises(ValueError, match=r"matmul: .*at least 1 dimension.*\(2, 3\).*\(\)"):
        t(2, 3) @ t()


@pytest.mark.parametrize("call,pattern", [
    (lambda: F.where(np.array([True, False]), t(3), t(1)),
     r"^where: shapes \(2,\) \(condition\), \(3,\) and \(1,\) do not broadcast"),
    (lambda: F.concatenate([t(2, 2), t(3, 3)]),
     r"^concatenate: shapes \(2, 2\), \(3, 3\) do not fit together along axis 0"),
    (lambda: F.stack([t(2), t(3)]), r"^stack: shapes \(2,\), \(3,\) differ"),
    (lambda: t(3, 1).broadcast_to((2, 4)),
     r"^broadcast_to: shape \(3, 1\) does not broadcast to \(2, 4\)"),
    (lambda: t(2, 3).reshape(4, 2), r"^reshape: .*\(2, 3\) into \(4, 2\)"),
    (lambda: t(2, 3).transpose(0, 0), r"^transpose: axes \(0, 0\) do not fit shape \(2, 3\)"),
    (lambda: F.linear(t(2, 3), t(4, 2)),
     r"^linear: input has 3 features \(shape \(2, 3\)\) but the weight expects 2 \(shape \(4, 2\)\)"),
    (lambda: F.conv2d(t(1, 2, 4, 4), t(3, 1, 2, 2)),
     r"^conv2d: input has 2 channels \(shape \(1, 2, 4, 4\)\) .*\(shape \(3, 1, 2, 2\)\)"),
    (lambda: F.conv2d(t(2, 4, 4), t(3, 2, 2, 2)), r"^conv2d: expected .*\(2, 4, 4\) and \(3, 2, 2, 2\)"),
    (lambda: F.max_pool2d(t(1, 1, 2, 3), 3), r"^max_pool2d: kernel 3 is larger than the input's 2x3"),
    (lambda: F.mse_loss(t(3), t(4)), r"^mse_loss: shapes \(3,\) \(prediction\) and \(4,\) \(target\) differ"),
    (lambda: F.sq_dist(t(3, 2), t(4, 3)), r"^sq_dist: shapes \(3, 2\) and \(4, 3\)"),
    (lambda: F.cross_entropy(t(2, 3), np.array([0, 1, 2])),
     r"^cross_entropy: logits of shape \(2, 3\) need labels of shape \(2,\), got \(3,\)"),
    (lambda: F.cross_entropy(t(2, 3), np.array([0, 3])), r"^cross_entropy: labels must lie in \[0, 3\)"),
    (lambda: F.cross_entropy(t(2, 3), np.array([0.0, 1.0])),
     r"^cross_entropy: labels must be integer class indices, got dtype float64"),
    (lambda: sm.windows.unfold(t(1, 1, 2, 2), kh=3, kw=3),
     r"^unfold: a 3x3 window does not fit an input of size 2x2"),
    (lambda: sm.windows.fold(t(1, 1, 2, 2, 3, 3), size=(3, 3)),
     r"^fold: windows of shape \(1, 1, 2, 2, 3, 3\) do not tile an input of size \(3, 3\)"),
    (lambda: sm.tensor(np.zeros((0, 2)), requires_grad=True).max(), r"^max: empty input of shape \(0, 2\)"),
], ids=["where", "concatenate", "stack", "broadcast_to", "reshape", "transpose", "linear",
        "conv2d_channels", "conv2d_ndim", "max_pool2d", "mse_loss", "sq_dist", "ce_label_shape",
        "ce_label_range", "ce_label_dtype", "unfold", "fold", "max_empty"])
def test_shape_errors_of_other_ops_and_functions(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


def test_a_failed_op_inside_a_graph_leaves_the_graph_usable():
    x = t(2, 3)
    y = (x * 2).tanh()
    with pytest.raises(ValueError):
        y + t(4)
    (g,) = sm.grad(y.sum(), x)
    np.testing.assert_allclose(g.numpy(), 2 * (1 - np.tanh(2 * x.numpy()) ** 2))


# ---------------------------------------------------------------------------
# grad and backward
# ---------------------------------------------------------------------------
def test_grad_of_a_non_scalar_needs_grad_outputs():
    x = t(3)
    x.grad = sm.tensor([1.0, 1.0, 1.0])
    before = _snapshot(x)
    y = x * x
    with pytest.raises(RuntimeError, match=r"output 0 has shape \(3,\).*only for scalar outputs.*grad_outputs"):
        sm.grad(y, x)
    with pytest.raises(RuntimeError, match="only for scalar outputs"):
        y.backward()
    _assert_unchanged([x], before)


def test_grad_outputs_of_the_wrong_shape_or_count():
    x = t(3)
    before = _snapshot(x)
    with pytest.raises(ValueError, match=r"grad_outputs\[0\] has shape \(2,\), output has shape \(3,\)"):
        sm.grad(x * x, x, grad_outputs=sm.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="1 outputs but 2 grad_outputs"):
        sm.grad(x * x, x, grad_outputs=[None, None])
    with pytest.raises(ValueError, match=r"grad_outputs\[0\] has shape \(2,\)"):
        (x * x).backward(sm.tensor([1.0, 1.0]))
    _assert_unchanged([x], before)


def test_input_not_in_the_graph_without_allow_unused():
    x, z = t(2), t(3)
    with pytest.raises(RuntimeError, match=r"input 1 \(shape \(3,\)\) is not part of the graph.*allow_unused=True"):
        sm.grad((x * x).sum(), [x, z])
    assert sm.grad((x * x).sum(), [x, z], allow_unused=True)[1] is None
    assert x.grad is None and z.grad is None


def test_grad_refuses_non_tensors_and_outputs_without_a_graph():
    x = t(2)
    with pytest.raises(TypeError, match="input 0 is a ndarray, not a Tensor"):
        sm.grad((x * x).sum(), np.ones(2))
    with pytest.raises(RuntimeError, match="output 0 does not require grad"):
        sm.grad(sm.tensor(1.0) * 2, x)
    with pytest.raises(TypeError, match="output 0 is a float"):
        sm.grad(1.0, x)


def test_a_backward_that_fails_midway_leaves_grad_unchanged():
    @primitive
    def fragile(x):
        return x * 1.0

    @fragile.vjp
    def _fragile_vjp(g, out, x):
        raise ArithmeticError("this VJP fails")

    w, b = t(2), t(2)
    w.grad = sm.tensor([5.0, 6.0])
    before = _snapshot(w, b)
    loss = (w * 3).sum() + fragile(b).sum()       # w's path is fine, b's fails
    with pytest.raises(ArithmeticError):
        loss.backward()
    _assert_unchanged([w, b], before)
    assert sm.is_grad_enabled()                   # the backward's no_grad mode was undone


def test_a_vjp_returning_the_wrong_shape_is_named():
    @primitive
    def forgetful(x, y):
        return x + y

    @forgetful.vjp
    def _forgetful_vjp(g, out, x, y):
        return g, g

    a, b = t(2, 3), t(3)
    with pytest.raises(RuntimeError, match=r"VJP of forgetful returned a gradient of shape "
                                           r"\(2, 3\) for an input of shape \(3,\)"):
        sm.grad(forgetful(a, b).sum(), [a, b])
    # only inputs on a path to what is asked for are checked: a alone is fine
    (ga,) = sm.grad(forgetful(a, b).sum(), a)
    np.testing.assert_array_equal(ga.numpy(), np.ones((2, 3)))


# ---------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("data", [[1, 2], np.array([1, 2], dtype=np.int32), [True, False]])
def test_requires_grad_on_an_integer_tensor(data):
    with pytest.raises(ValueError, match="only floating-point tensors can require gradients"):
        sm.tensor(data, requires_grad=True)
    i = sm.tensor(data)
    with pytest.raises(ValueError, match="only floating-point tensors can require gradients"):
        i.requires_grad_()
    assert not i.requires_grad


def test_unknown_dtypes():
    with pytest.raises(ValueError, match="unknown dtype 'bogus'"):
        sm.tensor([1.0], dtype="bogus")
    with pytest.raises(ValueError, match="unsupported default dtype"):
        sm.set_default_dtype("int64")
    assert sm.get_default_dtype() == np.float64


# ---------------------------------------------------------------------------
# arrays of the other backend (a stand-in whose type lives in a `cupy` module)
# ---------------------------------------------------------------------------
class FakeCupyArray:
    """Looks like a cupy.ndarray to scratchmeta.backend.foreign_backend."""

    shape, dtype, ndim = (2,), np.dtype("float64"), 1


FakeCupyArray.__module__ = "cupy._core.core"


def test_arrays_of_the_other_backend_are_refused():
    fake = FakeCupyArray()
    assert backend.foreign_backend(fake) == "cupy"
    with pytest.raises(TypeError, match=r"tensor\(\): got a cupy array while the active backend is 'numpy'"):
        sm.tensor(fake)
    x = t(2)
    before = _snapshot(x)
    with pytest.raises(TypeError, match="got a cupy array while the active backend is 'numpy'.*convert explicitly"):
        x + fake
    with pytest.raises(TypeError, match="cupy array"):
        F.linear(x, fake)
    _assert_unchanged([x], before)


# ---------------------------------------------------------------------------
# the checks
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("check", [sm.gradcheck, sm.gradgradcheck, sm.check_grads],
                         ids=["gradcheck", "gradgradcheck", "check_grads"])
def test_nan_inputs_to_the_checks_change_nothing(check):
    x = sm.tensor([0.5, np.nan], requires_grad=True)
    calls = []

    def fn(a):
        calls.append(1)
        return a * 2

    before = _snapshot(x)
    with pytest.raises(ValueError, match=r"input 0 \(shape \(2,\)\) contains NaN or inf"):
        check(fn, [x])
    assert calls == []                            # refused before running anything
    _assert_unchanged([x], before)
