"""The engine's fast paths agree with the plain formulas they stand for.

Batch norm's VJP exists twice (Tensor ops for a recorded backward, raw arrays
for a plain one); large convolutions build their im2col matrix a slice of the
batch at a time; a stride-1 conv_transpose is a correlation with the flipped
kernel; max pooling splits the gradient between tied maxima. The op tables
(test_ops.py, test_functional.py) check each to second order against finite
differences; these tests check that the two ways of computing agree exactly
where they should, on inputs big enough to take the fast path.
"""
import numpy as np
import pytest

import scratchmeta as sm
from scratchmeta import backend, windows

from test_ops import device

F = sm.functional


def _tensors(rng, *shapes):
    return [sm.tensor(a, requires_grad=True) for a in device([rng.standard_normal(s) for s in shapes])]


def _grads(loss_fn, xs, create_graph):
    return [g.numpy() for g in sm.grad(loss_fn(*xs), xs, create_graph=create_graph)]


@pytest.mark.parametrize("layout", ["nchw", "tasks_cnhw", "shared_params", "no_affine"])
def test_batch_norm_array_vjp_equals_the_differentiable_one(layout):
    """create_graph=False runs the raw-array VJP, create_graph=True the Tensor-op
    one (normalization.py); both must give the same gradients."""
    rng = np.random.default_rng(0)
    if layout == "nchw":
        shapes, kw = [(6, 3, 4, 5), (3,), (3,)], {}
    elif layout == "tasks_cnhw":                  # Conv4's layout: (T, C, N, H, W), per-task params
        shapes, kw = [(2, 3, 4, 5, 5), (2, 3), (2, 3)], {"channel_axis": -4, "batch_axis": -3}
    elif layout == "shared_params":               # groups (tasks) sharing one weight and bias
        shapes, kw = [(2, 3, 4, 5, 5), (3,), (3,)], {"channel_axis": -4, "batch_axis": -3}
    else:
        shapes, kw = [(5, 4, 3)], {}
    xs = _tensors(rng, *shapes)
    u = sm.tensor(device([rng.standard_normal(shapes[0])])[0])       # a fixed random cotangent

    def loss(*args):
        return (F.batch_norm(*args, **kw) * u).sum()

    fast = _grads(loss, xs, create_graph=False)
    recorded = _grads(loss, xs, create_graph=True)
    for a, b in zip(fast, recorded):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("param_shape", [(7,), (2, 1, 7)])
def test_layer_norm_array_vjp_equals_the_differentiable_one(param_shape):
    """Layer norm's gains vary along its statistics' axis: the raw-array VJP for
    that case (_vjp_arrays_affine) against the Tensor-op one, with shared and
    per-task (batched) parameters."""
    rng = np.random.default_rng(3)
    xs = _tensors(rng, (2, 5, 7), param_shape, param_shape)
    u = sm.tensor(device([rng.standard_normal((2, 5, 7))])[0])

    def loss(x, w, b):
        return (F.layer_norm(x * 3.0 + 1.5, w, b) * u).sum()

    fast = _grads(loss, xs, create_graph=False)
    recorded = _grads(loss, xs, create_graph=True)
    for a, b in zip(fast, recorded):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_batch_norm_matches_the_textbook_formula():
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((3, 4, 6, 2, 2)), rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    y = F.batch_norm(*device([x, w, b]), channel_axis=1, batch_axis=2).numpy()
    mean = x.mean(axis=(2, 3, 4), keepdims=True)
    var = x.var(axis=(2, 3, 4), keepdims=True)
    expect = (x - mean) / np.sqrt(var + 1e-5) * w[:, :, None, None, None] + b[:, :, None, None, None]
    np.testing.assert_allclose(y, expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride,padding", [(1, 1), (1, 0), (2, 1)])
def test_convolutions_built_in_slices_equal_the_whole_batch(monkeypatch, stride, padding):
    """With a tiny COLS_BUDGET every im2col matrix is built one image at a time:
    forward values and first and second derivatives must not change."""
    rng = np.random.default_rng(2)
    xs = _tensors(rng, (2, 5, 3, 6, 6), (2, 4, 3, 3, 3), (2, 4))
    u = sm.tensor(device([rng.standard_normal((2, 5, 4) + ((6 + 2 * padding - 3) // stride + 1,) * 2)])[0])

    def run():
        def loss(x, w, b):
            y = F.conv2d(x, w, b, stride=stride, padding=padding)
            return (y * u).sum()
        first = sm.grad(loss(*xs), xs, create_graph=True)
        second = sm.grad(sum((g * g).sum() for g in first), xs, allow_unused=True)
        return [g.numpy() for g in first] + [g.numpy() for g in second if g is not None]

    whole = run()
    monkeypatch.setattr(windows, "COLS_BUDGET", 1)
    assert len(windows._batch_slices((2,), 27, 5, 36)) == 5         # really one image per slice
    sliced = run()
    for a, b in zip(whole, sliced):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride,padding", [(1, 0), (1, 1), (1, 2), (2, 1)])
def test_conv_transpose_is_the_adjoint_of_conv(stride, padding):
    """<conv(a, w), g> = <a, conv_transpose(g, w)>, through the flipped-kernel
    correlation (stride 1) and through fold (stride 2)."""
    rng = np.random.default_rng(3)
    a, w = device([rng.standard_normal((3, 2, 7, 7)), rng.standard_normal((4, 3, 3, 3))])
    y = windows.conv.forward(a, w, stride, padding)
    g = device([rng.standard_normal(tuple(y.shape))])[0]
    at = windows.conv_transpose.forward(g, w, (7, 7), stride, padding)
    lhs = float(backend.to_numpy((y * g).sum()))
    rhs = float(backend.to_numpy((a * at).sum()))
    assert at.shape == a.shape
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))


def test_max_pool_splits_the_gradient_between_tied_maxima():
    # one 2x2 window with a two-way tie, one with a four-way tie, one without
    x = np.array([[[[1.0, 1.0, 2.0, 2.0, 0.0, 5.0],
                    [0.0, 0.5, 2.0, 2.0, 1.0, 3.0]]]])
    xt = sm.tensor(device([x])[0], requires_grad=True)
    (g,) = sm.grad(F.max_pool2d(xt, 2).sum(), [xt])
    expect = np.array([[[[0.5, 0.5, 0.25, 0.25, 0.0, 1.0],
                         [0.0, 0.0, 0.25, 0.25, 0.0, 0.0]]]])
    np.testing.assert_array_equal(g.numpy(), expect)


@pytest.mark.parametrize("padding", [0, 1, 2])
@pytest.mark.parametrize("leads", [((), ()), ((2,), (2,)), ((), (2,)), ((2,), ())])
def test_conv_first_order_vjp_from_one_im2col_equals_the_two_primitives(padding, leads):
    """A plain backward computes x_bar and W_bar from one im2col of g
    (windows._conv_grads_arrays); a recorded one uses conv_transpose and
    conv_weight_grad. Same numbers, also when x or w carries task axes the other lacks."""
    rng = np.random.default_rng(4)
    x_lead, w_lead = leads
    x, w = _tensors(rng, x_lead + (3, 4, 6, 5), w_lead + (5, 3, 3, 3))
    out_lead = x_lead if len(x_lead) >= len(w_lead) else w_lead
    u = sm.tensor(device([rng.standard_normal(out_lead + (5, 4, 4 + 2 * padding, 3 + 2 * padding))])[0])

    def loss(x, w):
        return (sm.ops.conv(x, w, padding=padding) * u).sum()

    fast = _grads(loss, [x, w], create_graph=False)
    recorded = _grads(loss, [x, w], create_graph=True)
    for a, b in zip(fast, recorded):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batch_norm_with_a_large_mean_keeps_its_precision(dtype):
    """mean(x^2) - mean^2 would cancel catastrophically at x = 1e4 + N(0, 1);
    batch_norm notices and takes the two-pass route."""
    rng = np.random.default_rng(6)
    x = 1e4 + rng.standard_normal((8, 3, 4, 4))
    y = F.batch_norm(sm.tensor(device([x])[0], dtype=dtype)).numpy()
    mean, var = x.mean(axis=(0, 2, 3), keepdims=True), x.var(axis=(0, 2, 3), keepdims=True)
    expect = (x - mean) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(y, expect, atol=1e-2 if dtype == "float32" else 1e-10)


@pytest.mark.parametrize("b_lead", [(2,), ()])
def test_conv_bias_in_the_product_equals_adding_it_after(monkeypatch, b_lead):
    """conv_bias puts b in the matrix product (a row of ones under U(x)) when b
    has w's leading axes, and adds it afterwards otherwise; whole or sliced."""
    rng = np.random.default_rng(7)
    x, w = device([rng.standard_normal((2, 3, 4, 6, 6)), rng.standard_normal((2, 5, 3, 3, 3))])
    b = device([rng.standard_normal(b_lead + (5, 1, 1, 1))])[0]
    expect = backend.to_numpy(windows.conv.forward(x, w, 1, 1) + b)
    for budget in (windows.COLS_BUDGET, 1):
        monkeypatch.setattr(windows, "COLS_BUDGET", budget)
        got = backend.to_numpy(windows.conv_bias.forward(x, w, b, 1, 1))
        np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-12)


def _conv_bn_inputs(rng, x_lead, w_lead, out_c=20, in_c=1, k=3, n=4, size=5):
    return _tensors(rng, x_lead + (in_c, n, size, size), w_lead + (out_c, in_c, k, k),
                    w_lead + (out_c,), w_lead + (out_c,), w_lead + (out_c,))


@pytest.mark.parametrize("leads", [((2,), (2,)), ((), ()), ((), (2,)), ((2,), ())])
def test_conv_batch_norm_fused_equals_the_two_ops(leads):
    """ops.conv_batch_norm (statistics from the im2col matrix's moments) against
    conv_bias then batch_norm: forward values and first-order gradients; the
    conv bias's gradient is exactly zero (batch norm cancels it)."""
    from scratchmeta.normalization import _conv_batch_norm_composite
    rng = np.random.default_rng(8)
    xs = _conv_bn_inputs(rng, *leads)
    xs[0].requires_grad = False                    # images: the fused VJP's own case
    params = xs[1:]
    fused = F.conv2d_batch_norm_cnhw(*xs, padding=1)
    assert fused._op.name == "conv_batch_norm"
    plain = _conv_batch_norm_composite(*xs, padding=1, eps=1e-5)
    np.testing.assert_allclose(fused.numpy(), plain.numpy(), rtol=1e-10, atol=1e-10)
    u = sm.tensor(device([rng.standard_normal(fused.shape)])[0])
    g_fused = sm.grad((fused * u).sum(), params)
    g_plain = sm.grad((plain * u).sum(), params)
    for a, b in zip(g_fused, g_plain):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-10)
    if leads[0] == leads[1]:                       # the raw-array VJP (else the composite one)
        assert not g_fused[1].numpy().any()


def test_conv_batch_norm_recorded_and_input_gradients_go_through_the_two_ops():
    """create_graph=True, or a gradient for x, differentiate the recomputed pair."""
    rng = np.random.default_rng(9)
    xs = _conv_bn_inputs(rng, (2,), (2,))
    u = sm.tensor(device([rng.standard_normal((2, 20, 4, 5, 5))])[0])

    def loss(*args):
        return (F.conv2d_batch_norm_cnhw(*args, padding=1) * u).sum()

    plain = [g.numpy() for g in sm.grad(loss(*xs), xs)]
    recorded = sm.grad(loss(*xs), xs, create_graph=True)
    for a, b in zip(plain, recorded):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-9, atol=1e-10)
    assert recorded[1].requires_grad                          # differentiable again
    assert sm.check_grads(lambda *a: loss(*a), [t.data for t in xs], order=2)


def test_conv_batch_norm_is_used_only_for_thin_im2col_matrices():
    rng = np.random.default_rng(10)
    thin = _conv_bn_inputs(rng, (2,), (2,), out_c=20, in_c=1)
    wide = _conv_bn_inputs(rng, (2,), (2,), out_c=8, in_c=3)      # 27 rows > 8 // 2
    assert F.conv2d_batch_norm_cnhw(*thin, padding=1)._op.name == "conv_batch_norm"
    assert F.conv2d_batch_norm_cnhw(*wide, padding=1)._op.name == "batch_norm"


def test_gelu_array_vjp_equals_the_differentiable_one_and_the_formula():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 5, 7)) * 3
    xt = sm.tensor(device([x])[0], requires_grad=True)
    u = sm.tensor(device([rng.standard_normal(x.shape)])[0])
    y = F.gelu(xt)
    t = np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))
    np.testing.assert_allclose(y.numpy(), 0.5 * x * (1 + t), rtol=1e-13, atol=1e-13)
    fast = _grads(lambda v: (F.gelu(v) * u).sum(), [xt], create_graph=False)
    recorded = _grads(lambda v: (F.gelu(v) * u).sum(), [xt], create_graph=True)
    np.testing.assert_allclose(fast[0], recorded[0], rtol=1e-12, atol=1e-13)


def test_softmax_and_layer_norm_match_their_formulas():
    rng = np.random.default_rng(12)
    x, w, b = rng.standard_normal((4, 6)) * 5, rng.standard_normal(6), rng.standard_normal(6)
    s = F.softmax(sm.tensor(device([x])[0]), axis=-1).numpy()
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(s, e / e.sum(axis=-1, keepdims=True), rtol=1e-13)
    y = F.layer_norm(*[sm.tensor(a) for a in device([x, w, b])]).numpy()
    z = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, z * w + b, rtol=1e-12, atol=1e-12)
