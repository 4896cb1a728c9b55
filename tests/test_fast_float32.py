"""float32 stays float32, and the overlay entries added for it equal the reference.

ENTRY_TABLE holds this file's overlay entries (scratchmeta/fast/pooling.py) in
the form tests/test_fast_paths.py uses; that file merges it into its own
table, so every entry here is compared there with the fast paths on and off
at orders 1 and 2 (Hypothesis shapes, and the strict CuPy stand-in). The
tests below add fixed cases the drawn ones rarely reach (ties after a ReLU)
and the dtype checks: a float32 step must not compute anything in float64.
"""
import numpy as np
import pytest

import scratchmeta as sm
from scratchmeta import backend
from scratchmeta.tensor import Tensor

from test_functional import axis_shapes, pool_shapes
from test_ops import Spec, device

F = sm.functional


def _relu_pool(x, kernel_size, stride):
    """Max pooling after a ReLU: whole windows of zeros, so ties of 2, 3, 4 and more."""
    return F.max_pool2d(x.relu(), kernel_size, stride)


ENTRY_TABLE = {
    # pool_route is max pooling's first-order VJP, pool_pick appears at second order
    "pool_route": [Spec("max_pool2d_k2", F.max_pool2d, pool_shapes(2, None), domains="distinct"),
                   Spec("relu_max_pool2d_k2", _relu_pool, pool_shapes(2, None)),
                   Spec("relu_max_pool2d_k3", _relu_pool, pool_shapes(3, None))],
    "pool_pick": [Spec("max_pool2d_k3", F.max_pool2d, pool_shapes(3, None), domains="distinct"),
                  Spec("relu_max_pool2d_k2_pick", _relu_pool, pool_shapes(2, None))],
}


@pytest.mark.parametrize("composite", [False, True], ids=["relu_then_pool", "relu_max_pool2d"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k,shape", [(2, (2, 3, 6, 6)), (2, (1, 2, 7, 5)), (3, (2, 2, 7, 8))])
def test_pooling_with_ties_equals_the_reference_to_second_order(k, shape, dtype, composite):
    """Also F.relu_max_pool2d, which the overlay turns into pooling first, then ReLU."""
    from test_fast_paths import _close, _derivatives
    rng = np.random.default_rng(k + shape[-1])
    x = rng.standard_normal(shape)
    x[..., :k, :k] = -1.0                   # one whole window of zeros after the ReLU: a k*k tie
    x[0, 0, k:k + 2, :k] = 0.5              # a two-way tie among positive values
    x = x.astype(dtype)
    pool = F.relu_max_pool2d if composite else _relu_pool
    fn = lambda t: pool(t, k, None)         # noqa: E731
    plain, fast = _derivatives(fn, [x], on=False), _derivatives(fn, [x], on=True)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    for expected, got in zip(plain, fast):
        _close(expected, got, rtol)
        for e, g in zip(expected, got):
            assert e is None or g.dtype == e.dtype == dtype


# ---------------------------------------------------------------------------
# dtype: every array a float32 step computes is float32
# ---------------------------------------------------------------------------
@pytest.fixture
def created_dtypes(monkeypatch):
    """Counts the dtype of every Tensor made while the test runs."""
    seen = {}
    init = Tensor.__init__

    def counting(self, data, *args, **kw):
        init(self, data, *args, **kw)
        dtype = getattr(data, "dtype", None)
        if dtype is not None and dtype.kind == "f":
            seen[dtype.name] = seen.get(dtype.name, 0) + 1

    monkeypatch.setattr(Tensor, "__init__", counting)
    return seen


def _conv4(p, x):
    """A user's Conv4 through the public API (hidden 4, 16x16 images: 16 -> 8 -> 4 -> 2 -> 1)."""
    for i in range(4):
        x = F.conv2d(x, p[f"conv{i}.w"], p[f"conv{i}.b"], padding=1)
        x = F.batch_norm(x, p[f"bn{i}.w"], p[f"bn{i}.b"])
        x = F.max_pool2d(x.relu(), 2)
    return F.linear(x.reshape(x.shape[0], -1), p["head.w"], p["head.b"])


def _maml_step(dtype, rng):
    """Second-order MAML (Finn et al. 2017, Eq. 1 inside) over two tasks, as a user writes it."""
    hidden, c = 4, 1
    p = {}
    for i in range(4):
        p[f"conv{i}.w"] = rng.standard_normal((hidden, c, 3, 3)) * 0.5
        p[f"conv{i}.b"] = rng.standard_normal(hidden) * 0.1
        p[f"bn{i}.w"] = 1 + 0.1 * rng.standard_normal(hidden)
        p[f"bn{i}.b"] = 0.1 * rng.standard_normal(hidden)
        c = hidden
    p["head.w"], p["head.b"] = rng.standard_normal((3, hidden)), rng.standard_normal(3)
    theta = {k: sm.tensor(v, dtype=dtype, requires_grad=True) for k, v in p.items()}
    total = 0
    for _ in range(2):
        xs, xq = (sm.tensor(rng.random((n, 1, 16, 16)), dtype=dtype) for n in (3, 6))
        ys, yq = backend.asarray(np.arange(3)), backend.asarray(np.arange(6) % 3)
        grads = sm.grad(F.cross_entropy(_conv4(theta, xs), ys), list(theta.values()), create_graph=True)
        phi = {k: w - 0.4 * g for (k, w), g in zip(theta.items(), grads)}
        total = total + F.cross_entropy(_conv4(phi, xq), yq)
    return sm.grad(total / 2, list(theta.values()))


@pytest.mark.parametrize("fast_on", [True, False])
def test_float32_maml_through_the_public_api_never_computes_in_float64(created_dtypes, fast_on):
    """A float64 constant or an int/bool division (pooling's tie shares once were one)
    would promote the backward pass, and through phi the query's forward pass too."""
    previous = sm.use_fast_paths(fast_on)
    try:
        grads = _maml_step("float32", np.random.default_rng(0))
    finally:
        sm.use_fast_paths(previous)
    assert all(g.dtype == np.float32 for g in grads)
    assert created_dtypes.get("float32", 0) > 1000
    assert created_dtypes.get("float64", 0) == 0, created_dtypes


def test_float32_maml_agrees_with_float64(created_dtypes):
    """The same step in both dtypes: float32 is float64 rounded, not something else."""
    g32 = _maml_step("float32", np.random.default_rng(1))
    g64 = _maml_step("float64", np.random.default_rng(1))
    # one scale for all: a conv bias before batch norm has a zero gradient (float32 noise)
    scale = max(float(np.abs(b.numpy()).max()) for b in g64)
    for a, b in zip(g32, g64):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-3, atol=2e-3 * scale)


@pytest.mark.parametrize("fast_on", [True, False])
def test_float32_protonet_and_icl_steps_never_compute_in_float64(created_dtypes, fast_on):
    from scratchmeta import nn
    from scratchmeta.algorithms import icl, protonet
    previous, default = sm.use_fast_paths(fast_on), backend.get_default_dtype()
    sm.set_default_dtype("float32")
    try:
        rng = np.random.default_rng(2)
        learner = protonet.ProtoNet(nn.build_model({"model": "conv4", "in_channels": 1, "hidden": 4,
                                                    "n_classes": None, "image_size": 16}))
        batch = {"support_x": backend.asarray(rng.random((1, 3, 1, 16, 16)), dtype=np.float32),
                 "support_y": backend.asarray(np.arange(3)[None]),
                 "query_x": backend.asarray(rng.random((1, 6, 1, 16, 16)), dtype=np.float32),
                 "query_y": backend.asarray((np.arange(6) % 3)[None])}
        loss, grads, _ = learner.meta_step(learner.init(0), batch)
        assert loss.dtype == np.float32 and all(g.dtype == np.float32 for g in grads.values())
        model = {"width": 8, "depth": 1, "heads": 2, "positions": "learned", "mlp_ratio": 2}
        learner = icl.InContextLearner(model=model, task={"n_dims": 3, "n_points": 4})
        batch = {"x": backend.asarray(rng.standard_normal((2, 4, 3)), dtype=np.float32),
                 "y": backend.asarray(rng.standard_normal((2, 4)), dtype=np.float32)}
        loss, grads, _ = learner.meta_step(learner.model.init(0, dtype=np.float32), batch)
        assert loss.dtype == np.float32 and all(g.dtype == np.float32 for g in grads.values())
    finally:
        sm.use_fast_paths(previous)
        sm.set_default_dtype(default)
    assert created_dtypes.get("float64", 0) == 0, created_dtypes


# ---------------------------------------------------------------------------
# masked softmax (scratchmeta/fast/attention.py)
# ---------------------------------------------------------------------------
def _mask_for(shape, axis):
    """A fixed boolean mask of `shape` with some False, and a True first along `axis`."""
    mask = np.indices(shape).sum(axis=0) % 3 != 1
    np.moveaxis(mask, axis, 0)[0] = True
    return mask


def _masked_softmax(x, axis):
    return F.softmax(x, axis=axis, mask=_mask_for(x.shape, axis))


ENTRY_TABLE["softmax"] = [Spec("masked_softmax", _masked_softmax, axis_shapes())]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_causal_softmax_equals_the_reference_to_second_order(dtype):
    from scratchmeta import transformer
    from test_fast_paths import _close, _derivatives
    rng = np.random.default_rng(4)
    q, k, v = (rng.standard_normal((2, 3, 5, 4)).astype(dtype) for _ in range(3))
    fn = lambda q, k, v: transformer.attention(q, k, v)    # noqa: E731
    plain, fast = _derivatives(fn, [q, k, v], on=False), _derivatives(fn, [q, k, v], on=True)
    for expected, got in zip(plain, fast):
        _close(expected, got, 1e-12 if dtype == np.float64 else 1e-5)
    # the fused primitive ran, and a later key got no weight
    scores = sm.tensor(rng.standard_normal((2, 5, 5)).astype(dtype), requires_grad=True)
    s = F.softmax(scores, mask=np.tril(np.ones((5, 5), bool)))
    assert s._op.name == ("masked_softmax" if sm.fast_paths_enabled() else "softmax")
    assert np.all(np.triu(s.numpy(), 1) == 0)


def test_masked_softmax_refuses_a_mask_that_does_not_broadcast():
    with pytest.raises(ValueError, match="does not broadcast"):
        F.softmax(sm.tensor(np.zeros((2, 3))), mask=np.ones((4,), bool))
