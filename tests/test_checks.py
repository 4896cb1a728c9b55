"""The checker itself: it must catch wrong VJPs, and cut graphs at the order they show up.

Deliberately broken primitives, built with scratchmeta.tensor.primitive:
- a VJP off by a constant fails at order 1;
- an exp whose VJP reads `.data` passes order 1 and fails order 2;
- a leak one level deeper passes orders 1 and 2 and fails order 3;
- a VJP that forgets to sum over broadcast axes is refused by its shape.
Also: hessian is symmetric and equals finite differences of the gradient,
hvp equals the finite difference of gradients, the error message names the
function, the worst element and both values, and NaN inputs are refused.
"""
import re

import numpy as np
import pytest

import scratchmeta as sm
from scratchmeta import backend
from scratchmeta.backend import xp
from scratchmeta.tensor import Tensor, primitive

from test_ops import device


# ---------------------------------------------------------------------------
# deliberately broken primitives
# ---------------------------------------------------------------------------
@primitive
def square_plus_const(x):
    return x * x


@square_plus_const.vjp
def _square_plus_const_vjp(g, out, x):
    return (g * (2 * x + 0.5),)                 # wrong: d x^2/dx is 2x, not 2x + 0.5


@primitive
def square_scaled(x):
    return x * x


@square_scaled.vjp
def _square_scaled_vjp(g, out, x):
    return (g * 2.02 * x,)                      # wrong by a constant factor 1.01


@primitive
def square_one_bad_entry(x):
    return x * x


@square_one_bad_entry.vjp
def _square_one_bad_entry_vjp(g, out, x):
    mask = xp.zeros(x.shape)
    mask[(1,) * x.ndim] = 1.0                   # only entry (1, 1, ...) is off
    return (g * (2 * x + Tensor(mask)),)


@primitive
def exp_reads_data(x):
    return xp.exp(x)


@exp_reads_data.vjp
def _exp_reads_data_vjp(g, out, x):
    # the right value, but a constant: the graph is cut at exp(x)
    return (g * Tensor(xp.exp(x.data)),)


@primitive
def exp_leaks_in_vjp_of_vjp(x):
    return xp.exp(x)


@exp_leaks_in_vjp_of_vjp.vjp
def _exp_leaks_vjp(g, out, x):
    return (g * exp_reads_data(x),)             # right to second order, cut at third


@primitive
def add_without_unbroadcast(x, y):
    return x + y


@add_without_unbroadcast.vjp
def _add_without_unbroadcast_vjp(g, out, x, y):
    return (g, g)                               # forgets to sum over broadcast axes


def _x(shape=(2, 3), seed=0):
    return backend.asarray(np.random.default_rng(seed).uniform(-1.5, 1.5, shape))


# ---------------------------------------------------------------------------
# wrong derivatives are caught at the order where they are wrong
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("op", [square_plus_const, square_scaled], ids=lambda p: p.name)
def test_vjp_off_by_a_constant_fails_at_order_1(op):
    with pytest.raises(sm.GradcheckError, match="order 1"):
        sm.check_grads(lambda x: op(x), [_x()], order=1, name=op.name)
    with pytest.raises(sm.GradcheckError):
        sm.gradcheck(lambda x: op(x).sum(), [_x()])


def test_exp_vjp_reading_data_passes_order_1_and_fails_order_2():
    args = [_x()]
    assert sm.gradcheck(exp_reads_data, args)
    assert sm.check_grads(exp_reads_data, args, order=1)
    with pytest.raises(sm.GradcheckError, match=r"order 2"):
        sm.check_grads(exp_reads_data, args, order=2)
    with pytest.raises(sm.GradcheckError):
        sm.gradgradcheck(exp_reads_data, args)
    # the correct exp passes both
    assert sm.gradgradcheck(lambda x: x.exp(), args)


def test_a_leak_one_level_deeper_fails_only_at_order_3():
    args = [_x((3,))]
    assert sm.check_grads(exp_leaks_in_vjp_of_vjp, args, order=2)
    with pytest.raises(sm.GradcheckError, match=r"order 3"):
        sm.check_grads(exp_leaks_in_vjp_of_vjp, args, order=3)
    assert sm.check_grads(lambda x: x.exp(), args, order=3)


def test_a_vjp_that_forgets_to_unbroadcast_is_refused_by_shape():
    x, y = _x((2, 3)), _x((3,), seed=1)
    with pytest.raises(RuntimeError, match=r"VJP of add_without_unbroadcast .*\(2, 3\).*\(3,\)"):
        sm.gradcheck(add_without_unbroadcast, [x, y])


def test_gradcheck_error_names_function_worst_element_and_both_values():
    x = np.array([[0.3, -0.7], [2.0, 0.9]])      # the bad entry (1, 1) has x = 0.9

    def my_broken_square(t):
        return square_one_bad_entry(t).sum()

    with pytest.raises(sm.GradcheckError) as info:
        sm.gradcheck(my_broken_square, device([x]))
    msg = str(info.value)
    assert "my_broken_square" in msg
    assert "input 0 (shape (2, 2))" in msg
    assert "worst element (1, 1)" in msg
    analytic = float(re.search(r"analytic (\S+),", msg).group(1))
    numeric = float(re.search(r"numeric (\S+) ", msg).group(1))
    # the probe v scales both; their ratio is (2x + 1) / 2x at x = 0.9
    assert numeric != 0
    np.testing.assert_allclose(analytic / numeric, (2 * 0.9 + 1) / (2 * 0.9), rtol=1e-6)
    assert "1 of 4 elements out of tolerance" in msg


def test_large_inputs_are_probed_along_random_directions():
    """Past 4096 elements gradcheck compares directional derivatives; it still catches bugs."""
    big = _x((65, 65))
    assert sm.gradcheck(lambda x: x.tanh(), [big])
    with pytest.raises(sm.GradcheckError, match="random direction"):
        sm.gradcheck(square_scaled, [big])


def test_integer_inputs_are_held_fixed():
    logits = _x((4, 3))
    labels = backend.asarray(np.array([0, 2, 1, 1]))
    assert sm.check_grads(sm.functional.cross_entropy, [logits, labels], order=2)


def test_several_outputs_and_unused_inputs():
    def two_outputs(x, unused):
        return x.tanh(), (x * x).sum()

    assert sm.check_grads(two_outputs, [_x(), _x((2,))], order=2)


# ---------------------------------------------------------------------------
# Hessians and Hessian-vector products
# ---------------------------------------------------------------------------
A = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.8]])


def _scalar_fn(x):
    """A scalar function with a dense, non-trivial Hessian."""
    a = sm.tensor(backend.asarray(A))
    return ((a @ x).tanh() ** 2).sum() + (x.exp() * x).sum() + x[0] * x[2] ** 3


def _numeric_grad(fn, x, eps=1e-6):
    x = np.asarray(x, dtype=np.float64)
    g = np.zeros_like(x)
    for j in range(x.size):
        e = np.zeros_like(x)
        e.flat[j] = eps
        g.flat[j] = (fn(sm.tensor(backend.asarray(x + e))).item()
                     - fn(sm.tensor(backend.asarray(x - e))).item()) / (2 * eps)
    return g


def _grad_at(fn, x):
    t = sm.tensor(backend.asarray(x), requires_grad=True)
    (g,) = sm.grad(fn(t), t)
    return g.numpy()


def test_hessian_is_symmetric_and_matches_finite_differences_of_the_gradient():
    x0 = np.array([0.4, -0.3, 0.9])
    H = sm.hessian(_scalar_fn, backend.asarray(x0)).numpy()
    assert H.shape == (3, 3)
    np.testing.assert_allclose(H, H.T, rtol=1e-12, atol=1e-12)
    eps = 1e-5
    fd = np.stack([(_grad_at(_scalar_fn, x0 + eps * e) - _grad_at(_scalar_fn, x0 - eps * e))
                   / (2 * eps) for e in np.eye(3)])
    np.testing.assert_allclose(H, fd, rtol=1e-6, atol=1e-7)
    # the gradient itself agrees with finite differences of the value
    np.testing.assert_allclose(_grad_at(_scalar_fn, x0), _numeric_grad(_scalar_fn, x0),
                               rtol=1e-7, atol=1e-8)


def test_hessian_of_a_matrix_input_has_shape_x_by_x():
    x = _x((2, 2))
    H = sm.hessian(lambda t: (t.tanh() * t).sum() + (t @ t).sum(), x).numpy()
    assert H.shape == (2, 2, 2, 2)
    flat = H.reshape(4, 4)
    np.testing.assert_allclose(flat, flat.T, atol=1e-12)


def test_hvp_equals_finite_difference_of_gradients():
    x0, v = np.array([0.4, -0.3, 0.9]), np.array([1.0, -2.0, 0.5])
    value, hv = sm.hvp(_scalar_fn, backend.asarray(x0), backend.asarray(v))
    np.testing.assert_allclose(value.item(), _scalar_fn(sm.tensor(backend.asarray(x0))).item())
    eps = 1e-5
    fd = (_grad_at(_scalar_fn, x0 + eps * v) - _grad_at(_scalar_fn, x0 - eps * v)) / (2 * eps)
    np.testing.assert_allclose(hv.numpy(), fd, rtol=1e-6, atol=1e-7)
    H = sm.hessian(_scalar_fn, backend.asarray(x0)).numpy()
    np.testing.assert_allclose(hv.numpy(), H @ v, rtol=1e-12, atol=1e-12)


def test_hvp_with_several_inputs_and_an_unused_one():
    def fn(a, b, unused):
        return (a * b.exp()).sum() + (a ** 2).sum()

    a0, b0, c0 = np.array([0.5, -1.0]), np.array([0.2, 0.3]), np.array([1.0])
    va, vb, vc = np.array([1.0, 2.0]), np.array([-1.0, 0.5]), np.array([3.0])
    _, (ha, hb, hc) = sm.hvp(fn, device([a0, b0, c0]), device([va, vb, vc]))
    # H = [[2I, diag(e^b)], [diag(e^b), diag(a e^b)]]
    eb = np.exp(b0)
    np.testing.assert_allclose(ha.numpy(), 2 * va + eb * vb, rtol=1e-12)
    np.testing.assert_allclose(hb.numpy(), eb * va + a0 * eb * vb, rtol=1e-12)
    np.testing.assert_array_equal(hc.numpy(), [0.0])


# ---------------------------------------------------------------------------
# bad input to the checks
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("check", ["gradcheck", "gradgradcheck", "check_grads"])
def test_non_finite_inputs_are_refused(check, bad):
    x = backend.asarray(np.array([1.0, bad, 2.0]))
    with pytest.raises(ValueError, match=r"input 0 \(shape \(3,\)\) contains NaN or inf"):
        getattr(sm, check)(lambda t: t.tanh(), [x])


@pytest.mark.parametrize("check", ["hvp", "hessian"])
def test_non_finite_inputs_are_refused_by_hvp_and_hessian(check):
    x = backend.asarray(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="NaN or inf"):
        if check == "hvp":
            sm.hvp(lambda t: (t * t).sum(), x, backend.asarray(np.ones(2)))
        else:
            sm.hessian(lambda t: (t * t).sum(), x)


def test_checks_need_a_floating_input_and_scalar_outputs_for_hvp():
    with pytest.raises(ValueError, match="no floating-point input"):
        sm.gradcheck(lambda i: i, [backend.asarray(np.array([1, 2]))])
    with pytest.raises(ValueError, match=r"hvp: fn must return a scalar, got shape \(2,\)"):
        sm.hvp(lambda t: t * t, _x((2,)), _x((2,)))
    with pytest.raises(ValueError, match=r"hvp: vector 0 has shape \(3,\), input has shape \(2,\)"):
        sm.hvp(lambda t: (t * t).sum(), _x((2,)), _x((3,)))
    with pytest.raises(ValueError, match=r"hessian: fn must return a scalar"):
        sm.hessian(lambda t: t * t, _x((2,)))


def test_checks_leave_the_callers_tensors_alone():
    x = sm.tensor(backend.asarray(np.array([0.5, -0.25])), requires_grad=True)
    before = x.numpy()
    sm.check_grads(lambda t: (t * t).tanh(), [x], order=2)
    sm.hvp(lambda t: (t ** 3).sum(), x, backend.asarray(np.ones(2)))
    np.testing.assert_array_equal(x.numpy(), before)
    assert x.grad is None and x.requires_grad
