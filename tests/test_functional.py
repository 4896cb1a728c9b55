"""The functional layer (sm.functional), to second order, against finite differences.

FN_TABLE is built like test_ops.OP_TABLE: a row per function of the contract
(and a row per form worth its own check: batched weights, strides, padding,
overlapping pools), a Hypothesis strategy for shapes and static arguments,
and input domains. Composites carry no VJP of their own, so these checks test
that the primitives compose. Forward values are compared with direct NumPy
formulas, and the stable functions with logits of 1e4.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import scratchmeta as sm
from scratchmeta import backend

from test_ops import Spec, device, examples

F = sm.functional


# ---------------------------------------------------------------------------
# shape strategies: (input shapes, static kwargs)
# ---------------------------------------------------------------------------
def side(lo=1, hi=3):
    return st.integers(lo, hi)


@st.composite
def linear_shapes(draw, batched=False, bias=None):
    """x (..., in) with w (out, in); or per-task x (T, n, in), w (T, out, in), b (T, out)."""
    n_in, n_out = draw(side()), draw(side())
    with_bias = draw(st.booleans()) if bias is None else bias
    if batched:
        T, n = draw(side(1, 2)), draw(side())
        shapes = [(T, n, n_in), (T, n_out, n_in)] + ([(T, n_out)] if with_bias else [])
    else:
        lead = draw(hnp.array_shapes(min_dims=0, max_dims=2, max_side=3))
        shapes = [lead + (n_in,), (n_out, n_in)] + ([(n_out,)] if with_bias else [])
    return tuple(shapes), {}


@st.composite
def axis_shapes(draw, keepdims=False):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=3))
    kw = {"axis": draw(st.integers(-len(shape), len(shape) - 1))}
    if keepdims:
        kw["keepdims"] = draw(st.booleans())
    return (shape,), kw


@st.composite
def cross_entropy_shapes(draw):
    """logits (..., C) and integer labels (...), each in [0, C)."""
    lead = draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=3))
    C = draw(side(2, 4))
    labels = draw(hnp.arrays(np.int64, lead, elements=st.integers(0, C - 1)))
    return (lead + (C,),), {"labels": labels}


@st.composite
def same_shapes(draw, count=2):
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=3))
    return (shape,) * count, {}


@st.composite
def conv_shapes(draw, batched=False):
    """x (N, C, H, W) and w (O, C, kh, kw) [+ b (O,)]; per-task (T, ...) when batched."""
    N, C, O = draw(side(1, 2)), draw(side(1, 2)), draw(side(1, 2))
    k = draw(side(1, 3))
    stride, padding = draw(st.sampled_from([1, 2])), draw(st.sampled_from([0, 1]))
    H = draw(st.integers(max(1, k - 2 * padding), 5))
    W = draw(st.integers(max(1, k - 2 * padding), 5))
    x, w, b = (N, C, H, W), (O, C, k, k), (O,)
    if batched:
        T = draw(side(1, 2))
        x, w, b = (T,) + x, (T,) + w, (T, O)
    shapes = (x, w, b) if draw(st.booleans()) else (x, w)
    return shapes, {"stride": stride, "padding": padding}


@st.composite
def pool_shapes(draw, kernel, stride):
    """Odd sizes included: floor mode drops the last row/column when it does not fit."""
    lead = draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=2))
    H, W = draw(st.integers(kernel, 5)), draw(st.integers(kernel, 5))
    return (lead + (H, W),), {"kernel_size": kernel, "stride": stride}


@st.composite
def norm_shapes(draw, batch=True):
    """batch_norm: (N, C[, H, W]) with weight and bias (C,); layer_norm: (..., D) with (D,)."""
    if batch:
        shape = (draw(side(2, 3)), draw(side(1, 3))) + tuple(
            draw(st.lists(side(1, 2), min_size=0, max_size=2)))
        c = shape[1]
    else:
        shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=3).filter(
            lambda s: s[-1] >= 2))
        c = shape[-1]
    affine = draw(st.booleans())
    return ((shape, (c,), (c,)) if affine else (shape,)), {}


@st.composite
def task_norm_shapes(draw):
    """Per-task batch norm: x (T, N, C[, H, W]), channel_axis=2, weight and bias (T, C)."""
    T, N, C = draw(side(1, 2)), draw(side(2, 3)), draw(side(1, 2))
    space = tuple(draw(st.lists(side(1, 2), min_size=0, max_size=2)))
    return ((T, N, C) + space, (T, C), (T, C)), {"channel_axis": 2}


@st.composite
def cnhw_norm_shapes(draw):
    """Conv4's layout: x (T, C, N[, H, W]), channel_axis=1, batch_axis=2, weight and bias (T, C)."""
    T, C, N = draw(side(1, 2)), draw(side(1, 2)), draw(side(2, 3))
    space = tuple(draw(st.lists(side(1, 2), min_size=0, max_size=2)))
    return ((T, C, N) + space, (T, C), (T, C)), {"channel_axis": 1, "batch_axis": 2}


@st.composite
def sq_dist_shapes(draw):
    lead = draw(hnp.array_shapes(min_dims=0, max_dims=1, max_side=2))
    n, m, d = draw(side()), draw(side()), draw(side())
    return (lead + (n, d), lead + (m, d)), {}


# ---------------------------------------------------------------------------
# the rows
# ---------------------------------------------------------------------------
def _cross_entropy(logits, labels):
    return F.cross_entropy(logits, backend.asarray(labels))


def _conv(x, w, b=None, stride=1, padding=0):
    return F.conv2d(x, w, b, stride=stride, padding=padding)


def _batch_norm(x, weight=None, bias=None, channel_axis=1, batch_axis=None):
    return F.batch_norm(x, weight, bias, channel_axis=channel_axis, batch_axis=batch_axis)


def _layer_norm(x, weight=None, bias=None):
    return F.layer_norm(x, weight, bias)


FN_TABLE = [
    Spec("linear", F.linear, linear_shapes(), example=([(4, 3), (2, 3), (2,)], {})),
    Spec("linear_batched", F.linear, linear_shapes(batched=True),
         example=([(2, 3, 4), (2, 5, 4), (2, 5)], {})),
    Spec("softmax", F.softmax, axis_shapes(), example=([(3, 4)], {"axis": 0})),
    Spec("log_softmax", F.log_softmax, axis_shapes(), example=([(3, 4)], {"axis": -1})),
    Spec("logsumexp", F.logsumexp, axis_shapes(keepdims=True),
         example=([(2, 3, 2)], {"axis": 1, "keepdims": False})),
    Spec("cross_entropy", _cross_entropy, cross_entropy_shapes(),
         example=([(4, 3)], {"labels": np.array([0, 2, 1, 2])})),
    Spec("mse_loss", F.mse_loss, same_shapes(), example=([(3, 2), (3, 2)], {})),
    Spec("conv2d", _conv, conv_shapes(),
         example=([(2, 2, 5, 5), (3, 2, 3, 3), (3,)], {"stride": 2, "padding": 1})),
    Spec("conv2d_batched", _conv, conv_shapes(batched=True),
         example=([(2, 2, 1, 4, 4), (2, 3, 1, 2, 2), (2, 3)], {"stride": 1, "padding": 0})),
    Spec("max_pool2d_k2", F.max_pool2d, pool_shapes(2, None), domains="distinct",
         example=([(1, 2, 5, 5)], {"kernel_size": 2, "stride": None})),
    Spec("max_pool2d_k3s2", F.max_pool2d, pool_shapes(3, 2), domains="distinct",
         example=([(2, 1, 5, 4)], {"kernel_size": 3, "stride": 2})),
    Spec("batch_norm", _batch_norm, norm_shapes(), domains=("distinct", "real", "real"),
         example=([(4, 3, 2, 2), (3,), (3,)], {})),
    Spec("batch_norm_tasks", _batch_norm, task_norm_shapes(), domains=("distinct", "real", "real"),
         example=([(2, 3, 2, 2), (2, 2), (2, 2)], {"channel_axis": 2})),
    Spec("batch_norm_cnhw", _batch_norm, cnhw_norm_shapes(), domains=("distinct", "real", "real"),
         example=([(2, 2, 3, 2, 2), (2, 2), (2, 2)], {"channel_axis": 1, "batch_axis": 2})),
    Spec("layer_norm", _layer_norm, norm_shapes(batch=False),
         domains=("distinct", "real", "real"), example=([(4, 3), (3,), (3,)], {})),
    Spec("gelu", F.gelu, same_shapes(count=1), example=([(3, 2)], {})),
    Spec("sq_dist", F.sq_dist, sq_dist_shapes(), example=([(2, 3, 2), (2, 4, 2)], {})),
]

_BY_NAME = {s.name: s for s in FN_TABLE}
ORDER3 = ["linear", "log_softmax", "cross_entropy", "conv2d", "max_pool2d_k2", "gelu",
          "batch_norm_cnhw"]


@pytest.mark.parametrize("spec", FN_TABLE, ids=lambda s: s.name)
@settings(max_examples=examples(15))
@given(data=st.data())
def test_functional_grads(spec, data):
    arrays, kw = data.draw(spec.inputs(), label="inputs")
    assert sm.check_grads(spec.bind(kw), device(arrays), order=2, name=spec.name)


@pytest.mark.parametrize("spec", [_BY_NAME[n] for n in ORDER3], ids=lambda s: s.name)
@settings(max_examples=examples(3))
@given(data=st.data())
def test_functional_grads_order3(spec, data):
    arrays, kw = data.draw(spec.inputs(), label="inputs")
    assert sm.check_grads(spec.bind(kw), device(arrays), order=3, name=spec.name)


@pytest.mark.parametrize("spec", FN_TABLE, ids=lambda s: s.name)
def test_functional_example(spec):
    arrays, kw = spec.sample()
    assert sm.check_grads(spec.bind(kw), device(arrays), order=2, name=spec.name)


# ---------------------------------------------------------------------------
# forward values against direct NumPy formulas
# ---------------------------------------------------------------------------
def _np_conv(x, w, b, stride, padding):
    x = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(padding, padding)] * 2)
    O, C, kh, kw = w.shape
    N, _, H, W = x.shape
    oh, ow = (H - kh) // stride + 1, (W - kw) // stride + 1
    y = np.zeros((N, O, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            y[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w)
    return y + (0 if b is None else b[:, None, None])


def _np_pool(x, k, s):
    H, W = x.shape[-2:]
    oh, ow = (H - k) // s + 1, (W - k) // s + 1
    y = np.empty(x.shape[:-2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            y[..., i, j] = x[..., i * s:i * s + k, j * s:j * s + k].max(axis=(-2, -1))
    return y


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), (1, 1), (2, 0)])
def test_conv2d_matches_direct_loops(stride, padding):
    rng = np.random.default_rng(1)
    x, w, b = rng.normal(size=(2, 3, 5, 6)), rng.normal(size=(4, 3, 3, 2)), rng.normal(size=4)
    y = F.conv2d(*device([x, w, b]), stride=stride, padding=padding)
    np.testing.assert_allclose(y.numpy(), _np_conv(x, w, b, stride, padding), rtol=1e-12,
                               atol=1e-12)


def test_conv2d_batched_equals_per_task_conv():
    rng = np.random.default_rng(2)
    x, w, b = rng.normal(size=(3, 2, 2, 4, 4)), rng.normal(size=(3, 5, 2, 3, 3)), rng.normal(size=(3, 5))
    y = F.conv2d(*device([x, w, b]), stride=1, padding=1).numpy()
    for t in range(3):
        np.testing.assert_allclose(y[t], _np_conv(x[t], w[t], b[t], 1, 1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k,s,shape", [(2, None, (2, 3, 5, 5)), (3, 2, (1, 2, 7, 6)),
                                       (2, 1, (1, 1, 4, 3))])
def test_max_pool2d_matches_direct_loops(k, s, shape):
    x = np.random.default_rng(3).normal(size=shape)
    y = F.max_pool2d(*device([x]), k, s)
    np.testing.assert_array_equal(y.numpy(), _np_pool(x, k, k if s is None else s))


def test_linear_batched_matches_per_task_linear():
    rng = np.random.default_rng(4)
    x, w, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 4)), rng.normal(size=(2, 5))
    y = F.linear(*device([x, w, b])).numpy()
    for t in range(2):
        np.testing.assert_allclose(y[t], x[t] @ w[t].T + b[t], rtol=1e-12)


def test_batch_norm_per_task_equals_separate_batch_norms():
    rng = np.random.default_rng(9)
    x, g, b = rng.normal(size=(2, 4, 3, 2, 2)), rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    y = F.batch_norm(*device([x, g, b]), channel_axis=2).numpy()
    for t in range(2):
        one = F.batch_norm(*device([x[t], g[t], b[t]])).numpy()
        np.testing.assert_allclose(y[t], one, rtol=1e-12, atol=1e-12)


def test_norms_match_formulas():
    rng = np.random.default_rng(5)
    x, g, b = rng.normal(size=(4, 3, 2, 2)), rng.normal(size=3), rng.normal(size=3)
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    expect = (x - mean) / np.sqrt(var + 1e-5) * g[:, None, None] + b[:, None, None]
    np.testing.assert_allclose(F.batch_norm(*device([x, g, b])).numpy(), expect, rtol=1e-10)
    z = rng.normal(size=(2, 5))
    expect = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(F.layer_norm(*device([z])).numpy(), expect, rtol=1e-10)


def test_softmax_family_matches_formulas():
    x = np.random.default_rng(6).normal(size=(3, 4))
    e = np.exp(x)
    (t,) = device([x])
    np.testing.assert_allclose(F.softmax(t).numpy(), e / e.sum(-1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(F.log_softmax(t, axis=0).numpy(),
                               x - np.log(e.sum(0, keepdims=True)), rtol=1e-12)
    np.testing.assert_allclose(F.logsumexp(t).numpy(), np.log(e.sum(-1)), rtol=1e-12)
    labels = np.array([3, 0, 1])
    ce = -np.mean((x - np.log(e.sum(-1, keepdims=True)))[np.arange(3), labels])
    np.testing.assert_allclose(F.cross_entropy(t, backend.asarray(labels)).item(), ce,
                               rtol=1e-12)
    np.testing.assert_allclose(F.mse_loss(t, 1.0).item(), np.mean((x - 1.0) ** 2), rtol=1e-12)


def test_gelu_and_sq_dist_match_formulas():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(5,))
    expect = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(F.gelu(*device([x])).numpy(), expect, rtol=1e-12)
    a, b = rng.normal(size=(3, 2)), rng.normal(size=(4, 2))
    expect = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(F.sq_dist(*device([a, b])).numpy(), expect, rtol=1e-10,
                               atol=1e-12)


# ---------------------------------------------------------------------------
# numerical stability: logits of 1e4
# ---------------------------------------------------------------------------
def test_large_logits_give_finite_values_and_gradients():
    logits = sm.tensor([[1e4, 0.0, -1e4], [1e4, 1e4, 1e4]], requires_grad=True)
    labels = backend.asarray(np.array([1, 0]))
    loss = F.cross_entropy(logits, labels)
    (g,) = sm.grad(loss, logits, create_graph=True)
    (gg,) = sm.grad((g * g).sum(), logits)
    for t in (loss, g, gg, F.logsumexp(logits), F.log_softmax(logits), F.softmax(logits)):
        assert np.all(np.isfinite(t.numpy()))
    # row 0: -log softmax picks 1e4 (-log p = 1e4), row 1: uniform (-log p = log 3)
    np.testing.assert_allclose(loss.item(), (1e4 + np.log(3)) / 2, rtol=1e-12)
    np.testing.assert_allclose(g.numpy(), [[0.5, -0.5, 0.0], [-1 / 3, 1 / 6, 1 / 6]],
                               atol=1e-12)
    np.testing.assert_allclose(F.logsumexp(logits).numpy(), [1e4, 1e4 + np.log(3)], rtol=1e-15)


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp", "cross_entropy"])
def test_shift_by_1e4_is_checked_to_second_order(name):
    """The same checks pass on logits near 1e4 (shift-invariant, or shifted by the constant)."""
    spec = _BY_NAME[name]
    arrays, kw = spec.sample(seed=8)
    assert sm.check_grads(spec.bind(kw), device([arrays[0] + 1e4]), order=2, name=name)


def test_masked_softmax_is_the_softmax_of_the_kept_entries():
    """F.softmax(x, mask=m): probability 0 where m is False, the softmax of the
    rest elsewhere; no derivative of any order reaches a masked entry."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 4, 4))
    mask = np.tril(np.ones((4, 4), bool))                       # broadcast over the batch
    s = F.softmax(sm.tensor(x), axis=-1, mask=mask).numpy()
    e = np.where(mask, np.exp(x - x.max(-1, keepdims=True)), 0.0)
    np.testing.assert_allclose(s, e / e.sum(-1, keepdims=True), rtol=1e-12)
    xt = sm.tensor(x, requires_grad=True)
    u = sm.tensor(rng.standard_normal(x.shape))
    (g,) = sm.grad((F.softmax(xt, axis=-1, mask=mask) * u).sum() ** 2, xt, create_graph=True)
    (gg,) = sm.grad((g * u).sum(), xt)
    assert not g.numpy()[:, ~mask].any() and not gg.numpy()[:, ~mask].any()
    assert np.abs(g.numpy()[:, 1:][:, mask[1:]]).min() > 0     # row 0 keeps one entry: s = 1 there
    sm.check_grads(lambda t: F.softmax(t, axis=-1, mask=mask), (x,), order=2)
    with pytest.raises(ValueError, match=r"mask of shape \(3, 4\)"):
        F.softmax(sm.tensor(x), mask=np.ones((3, 4), bool))


@pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")   # log(0) = -inf is the answer
def test_logsumexp_all_minus_infinity_row_stays_minus_infinity():
    x = sm.tensor([[-np.inf, -np.inf], [0.0, 0.0]])
    out = F.logsumexp(x).numpy()
    assert out[0] == -np.inf and np.isclose(out[1], np.log(2))
