"""The engine on CuPy (float64), compared with the NumPy backend.

Marked `gpu`: skipped unless CuPy imports and sees a CUDA device (see
conftest.py). scripts/gpu_check.sh runs these with SCRATCHMETA_BACKEND=cupy,
so the package also starts on CuPy from the environment variable; the tests
switch backends explicitly to compute the NumPy reference.

Every row of OP_TABLE and FN_TABLE is run on both backends (forward value,
first and second derivatives along fixed probes); a representative subset is
also checked against finite differences on the device to third order.
"""
import os

import numpy as np
import pytest

import scratchmeta as sm
from scratchmeta import backend

from helpers import assert_matches
from test_backend import _derivatives, _maml_step
from test_functional import FN_TABLE
from test_ops import OP_TABLE, device

pytestmark = pytest.mark.gpu

ENV_BACKEND = os.environ.get("SCRATCHMETA_BACKEND", "").strip().lower()
ROWS = OP_TABLE + FN_TABLE
CHECKED_ON_DEVICE = ["add", "matmul", "max", "getitem_int_array", "getitem_bool", "where",
                     "concatenate", "tanh", "sigmoid", "unfold", "fold", "cross_entropy",
                     "conv2d", "max_pool2d_k3s2", "batch_norm", "logsumexp"]


@pytest.fixture
def cupy():
    sm.set_backend("cupy")
    import cupy
    yield cupy


def _assert_matches(expected, got, rtol=1e-10, atol=1e-12):
    assert_matches(expected, got, rtol=rtol, atol=atol, same_dtype=True)


def test_environment_selects_cupy():
    """With SCRATCHMETA_BACKEND=cupy the package starts on CuPy (conftest keeps it per test)."""
    if ENV_BACKEND != "cupy":
        pytest.skip("SCRATCHMETA_BACKEND is not cupy")
    assert sm.get_backend() == "cupy"
    x = sm.tensor([1.0, 2.0])
    assert type(x.data).__module__.startswith("cupy")


@pytest.mark.parametrize("spec", ROWS, ids=lambda s: s.name)
def test_row_matches_numpy(spec, cupy):
    arrays, kw = spec.sample(seed=4)
    sm.set_backend("numpy")
    expected = _derivatives(spec, arrays, kw)
    sm.set_backend("cupy")
    got = _derivatives(spec, arrays, kw)
    _assert_matches(expected, got)


@pytest.mark.parametrize("name", CHECKED_ON_DEVICE)
def test_finite_differences_on_the_device(name, cupy):
    spec = {s.name: s for s in ROWS}[name]
    arrays, kw = spec.sample(seed=5)
    xs = device(arrays)
    assert all(isinstance(a, cupy.ndarray) for a in xs)
    order = 3 if name in ("matmul", "tanh", "cross_entropy") else 2
    assert sm.check_grads(spec.bind(kw), xs, order=order, name=name)


def test_maml_double_backward_matches_numpy(cupy):
    sm.set_backend("numpy")
    expected_loss, expected_meta = _maml_step()
    sm.set_backend("cupy")
    loss, meta = _maml_step()
    _assert_matches([expected_loss, expected_meta], [loss, meta], rtol=1e-9)


def test_float32_on_the_device(cupy):
    sm.set_default_dtype("float32")
    x = sm.tensor([[0.5, -1.0, 2.0]], requires_grad=True)
    y = sm.functional.cross_entropy(x * 2.0, backend.asarray(np.array([1])))
    (g,) = sm.grad(y, x, create_graph=True)
    (h,) = sm.grad((g * g).sum(), x)
    assert isinstance(h.data, cupy.ndarray) and h.dtype == np.float32


def test_host_arrays_are_refused_and_numpy_is_the_door_back(cupy):
    uploaded = sm.tensor(np.ones(2))                 # tensor() is the explicit upload
    assert isinstance(uploaded.data, cupy.ndarray)
    x = sm.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(TypeError, match="got a numpy array while the active backend is 'cupy'"):
        x + np.ones(2)                               # an operation never mixes in host arrays
    out = (x * 3).numpy()
    assert type(out) is np.ndarray and out.tolist() == [3.0, 6.0]
    backend.synchronize()


def test_hvp_worked_example_on_the_device(cupy):
    value, hv = sm.hvp(lambda t: t[0] ** 2 * t[1] + t[1] ** 3, sm.tensor([1.0, 2.0]),
                       sm.tensor([1.0, -1.0]))
    assert isinstance(hv.data, cupy.ndarray)
    np.testing.assert_allclose(hv.numpy(), [2.0, -10.0])
    assert value.item() == 10.0
