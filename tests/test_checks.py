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


# ---------------------------------------------------------------------------
# checks that cannot fail are refused
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("check", ["gradcheck", "gradgradcheck", "check_grads"])
@pytest.mark.parametrize("returns, what", [
    (lambda t: None, "NoneType None"),
    (lambda t: 3.0, "float 3.0"),
    (lambda t: t.data * 2, "ndarray"),
    (lambda t: sm.tensor(backend.asarray(np.array([1, 2]))), "dtype int64"),
    (lambda t: (t.tanh(), None), "output 1 of fn returned NoneType"),
    (lambda t: (), "empty tuple"),
])
def test_checks_refuse_a_function_that_returns_no_float_tensor(check, returns, what):
    with pytest.raises(TypeError, match=re.escape(what)):
        getattr(sm, check)(returns, [_x((3,))])


@pytest.mark.parametrize("check", ["gradcheck", "gradgradcheck", "check_grads"])
@pytest.mark.parametrize("cut", [
    lambda t: sm.tensor(t.data * 2.0),                        # rebuilt from raw data
    lambda t: sm.tensor(backend.asarray(np.ones(3))),          # ignores its input
])
def test_checks_refuse_outputs_cut_off_from_every_input(check, cut):
    with pytest.raises(sm.GradcheckError, match="no output is connected to any input"):
        getattr(sm, check)(cut, [_x((3,))])


def test_a_zero_gradient_is_legitimate_and_checked():
    """An input the outputs ignore, beside one they use: its zero Jacobian is compared."""
    assert sm.gradcheck(lambda a, b: a.tanh(), [_x((3,)), _x((2,))])
    assert sm.check_grads(lambda a, b: (a * 0.0).sum(), [_x((3,)), _x((2,))], order=2)

    @primitive
    def ignores_b_wrongly(a, b):
        return a * 1.0 + b * 0.0

    @ignores_b_wrongly.vjp
    def _vjp(g, out, a, b):
        return (g, g * 0.0)                   # right: d/db is 0

    assert sm.gradcheck(ignores_b_wrongly, [_x((2,)), _x((2,), seed=1)])

    @primitive
    def uses_b(a, b):
        return a + b

    @uses_b.vjp
    def _vjp_zero(g, out, a, b):
        return (g, g * 0.0)                   # wrong: claims d/db = 0
    with pytest.raises(sm.GradcheckError, match="input 1"):
        sm.gradcheck(uses_b, [_x((2,)), _x((2,), seed=1)])


@pytest.mark.parametrize("check", ["hvp", "hessian", "jvp"])
def test_hvp_hessian_jvp_refuse_a_function_that_returns_no_float_tensor(check):
    x = _x((2,))
    with pytest.raises(TypeError, match="must return"):
        if check == "hvp":
            sm.hvp(lambda t: None, x, x)
        elif check == "hessian":
            sm.hessian(lambda t: 1.0, x)
        else:
            sm.jvp(lambda t: t.data, x, x)


# ---------------------------------------------------------------------------
# the Hessian over several inputs: a tuple of tuples of blocks, as in PyTorch
# ---------------------------------------------------------------------------
def _two_input_fn(a, b):
    return ((a @ b).tanh() ** 2).sum() + (a.exp() * a).sum() * b[0] + (b ** 3).sum()


def _flat_fn(z):
    return _two_input_fn(z[:6].reshape(2, 3), z[6:])


def test_hessian_of_several_inputs_is_the_block_hessian():
    a0, b0 = _x((2, 3)), _x((3,), seed=1)
    H = sm.hessian(_two_input_fn, [a0, b0])
    assert isinstance(H, tuple) and len(H) == 2 and all(len(row) == 2 for row in H)
    assert [[blk.shape for blk in row] for row in H] == [[(2, 3, 2, 3), (2, 3, 3)],
                                                       [(3, 2, 3), (3, 3)]]
    # the blocks are the single-input Hessian of the concatenated vector, cut up
    z0 = np.concatenate([backend.to_numpy(a0).ravel(), backend.to_numpy(b0)])
    full = sm.hessian(_flat_fn, backend.asarray(z0)).numpy()
    assembled = np.block([[H[0][0].numpy().reshape(6, 6), H[0][1].numpy().reshape(6, 3)],
                          [H[1][0].numpy().reshape(3, 6), H[1][1].numpy().reshape(3, 3)]])
    np.testing.assert_allclose(assembled, full, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(H[0][1].numpy().reshape(6, 3), H[1][0].numpy().reshape(3, 6).T,
                               rtol=1e-12, atol=1e-12)
    # and finite differences of the gradient
    eps = 1e-5
    fd = np.stack([(_grad_at(_flat_fn, z0 + eps * e) - _grad_at(_flat_fn, z0 - eps * e))
                   / (2 * eps) for e in np.eye(9)])
    np.testing.assert_allclose(assembled, fd, rtol=1e-6, atol=1e-7)


def test_hessian_of_one_input_in_a_list_is_a_one_by_one_block():
    x0 = backend.asarray(np.array([0.4, -0.3, 0.9]))
    (row,) = sm.hessian(_scalar_fn, [x0])
    (block,) = row
    np.testing.assert_allclose(block.numpy(), sm.hessian(_scalar_fn, x0).numpy(), rtol=0, atol=0)


def test_hessian_blocks_of_an_ignored_input_are_zero():
    H = sm.hessian(lambda a, unused: (a ** 3).sum(), [_x((2,)), _x((3,))])
    np.testing.assert_array_equal(H[0][1].numpy(), np.zeros((2, 3)))
    np.testing.assert_array_equal(H[1][1].numpy(), np.zeros((3, 3)))
    np.testing.assert_allclose(H[0][0].numpy(), np.diag(6 * backend.to_numpy(_x((2,)))))


# ---------------------------------------------------------------------------
# forward mode by the double-VJP trick
# ---------------------------------------------------------------------------
def _vector_fn(a, b):
    return (a @ b).tanh() * b.sum() + a.sum(axis=1) ** 2


def test_jvp_matches_finite_differences():
    a0, b0 = _x((2, 3)), _x((3,), seed=1)
    va, vb = _x((2, 3), seed=2), _x((3,), seed=3)
    value, tangent = sm.jvp(_vector_fn, (a0, b0), (va, vb))
    assert isinstance(value, sm.Tensor) and isinstance(tangent, sm.Tensor)
    np.testing.assert_allclose(value.numpy(), _vector_fn(sm.tensor(a0), sm.tensor(b0)).numpy())
    eps = 1e-6
    plus = _vector_fn(sm.tensor(a0 + eps * va), sm.tensor(b0 + eps * vb)).numpy()
    minus = _vector_fn(sm.tensor(a0 - eps * va), sm.tensor(b0 - eps * vb)).numpy()
    np.testing.assert_allclose(tangent.numpy(), (plus - minus) / (2 * eps), rtol=1e-7, atol=1e-9)


def test_jvp_is_the_jacobian_times_the_tangent():
    """Column by column: the JVP along e_j is column j of the Jacobian from reverse mode."""
    x0 = _x((3,))
    fn = lambda t: (t.exp() * t[0]).tanh()                      # noqa: E731
    J = np.stack([np.asarray(sm.grad(fn(t), t, grad_outputs=sm.tensor(backend.asarray(e)))[0]
                             .numpy())
                  for t in [sm.tensor(x0, requires_grad=True)] for e in np.eye(3)])
    for j, e in enumerate(np.eye(3)):
        _, col = sm.jvp(fn, x0, backend.asarray(e))
        np.testing.assert_allclose(col.numpy(), J[:, j], rtol=1e-12, atol=1e-14)


def test_forward_over_reverse_hvp_equals_reverse_over_reverse():
    """H v as the JVP of the gradient (forward-over-reverse) equals sm.hvp (reverse-over-reverse)."""
    x0, v = backend.asarray(np.array([0.4, -0.3, 0.9])), backend.asarray(np.array([1.0, -2.0, 0.5]))

    def gradient(t):
        (g,) = sm.grad(_scalar_fn(t), t, create_graph=True)
        return g

    _, hv_forward = sm.jvp(gradient, x0, v)
    _, hv_reverse = sm.hvp(_scalar_fn, x0, v)
    np.testing.assert_allclose(hv_forward.numpy(), hv_reverse.numpy(), rtol=1e-12, atol=1e-13)


def test_jvp_of_several_outputs_and_an_unreached_one():
    def fn(a, b):
        return a * b, (a ** 2).sum(), sm.tensor(backend.asarray(np.ones(2)))

    a0, b0 = _x((2,)), _x((2,), seed=1)
    va, vb = _x((2,), seed=2), _x((2,), seed=3)
    values, tangents = sm.jvp(fn, [a0, b0], [va, vb])
    assert len(values) == len(tangents) == 3
    a, b, va_, vb_ = (backend.to_numpy(t) for t in (a0, b0, va, vb))
    np.testing.assert_allclose(tangents[0].numpy(), va_ * b + a * vb_, rtol=1e-12)
    np.testing.assert_allclose(tangents[1].numpy(), np.sum(2 * a * va_), rtol=1e-12)
    np.testing.assert_array_equal(tangents[2].numpy(), np.zeros(2))


def test_jvp_bad_tangents():
    with pytest.raises(ValueError, match=r"jvp: tangent 0 has shape \(3,\), input has shape \(2,\)"):
        sm.jvp(lambda t: t * t, _x((2,)), _x((3,)))
    with pytest.raises(ValueError, match="jvp: 2 inputs but 1 tangents"):
        sm.jvp(lambda a, b: a * b, [_x((2,)), _x((2,))], [_x((2,))])
    with pytest.raises(ValueError, match="NaN or inf"):
        sm.jvp(lambda t: t * t, backend.asarray(np.array([np.nan])), backend.asarray(np.ones(1)))
