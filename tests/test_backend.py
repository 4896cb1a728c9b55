"""The backend switch, and proof on the CPU that no code path converts to host NumPy implicitly.

CuPy refuses implicit device <-> host conversion at run time. tests/strict_xp.py
is a stand-in namespace that refuses it the same way; here it is installed as
the backend, and every op and functional (the rows of OP_TABLE and FN_TABLE),
the checks, and a small MLP + conv net trained through a double backward run
under it, with results equal to the NumPy backend's. The explicit doors
(`backend.asarray` in, `backend.to_numpy` / `Tensor.numpy()` out) still work.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import scratchmeta as sm
from scratchmeta import backend

from helpers import assert_matches
from strict_xp import StrictArray, namespace as strict
from test_checks import square_scaled
from test_functional import FN_TABLE
from test_ops import OP_TABLE, device

F = sm.functional
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def strict_backend():
    """The strict namespace as the active backend (conftest restores the old one)."""
    backend._use_namespace("strict", strict)
    yield strict


# ---------------------------------------------------------------------------
# the stand-in itself refuses what CuPy refuses
# ---------------------------------------------------------------------------
def test_strict_arrays_refuse_implicit_host_conversion():
    a = strict.asarray(np.arange(3.0))            # explicit host -> device: allowed
    host = np.ones(3)
    refused = [
        lambda: a + host, lambda: host + a, lambda: a * host, lambda: a == host,
        lambda: np.asarray(a), lambda: np.array(a), lambda: a.__array__(),
        lambda: np.tanh(a), lambda: np.add(a, a), lambda: np.concatenate([a, a]),
        lambda: np.sum(a), lambda: strict.tanh(host), lambda: strict.where(a > 0, host, a),
        lambda: strict.add.at(a, strict.asarray([0]), host),
        lambda: a.__setitem__(0, host[:1]), lambda: a[np.array([0, 1])],
    ]
    for call in refused:
        with pytest.raises(TypeError, match="implicit conversion to host NumPy"):
            call()
    # through the namespace, with device arrays and Python scalars, it is NumPy
    b = strict.tanh(a * 2.0 + 1)
    assert isinstance(b, StrictArray)
    np.testing.assert_array_equal(b.get(), np.tanh(np.arange(3.0) * 2 + 1))
    assert isinstance(strict.sum(a), StrictArray) and strict.sum(a).ndim == 0   # 0-d, not a scalar
    assert float(strict.sum(a)) == 3.0 and int(a[1]) == 1 and bool(a[2])         # explicit scalars


def test_backend_helpers_under_the_strict_namespace(strict_backend):
    a = strict.asarray(np.arange(4.0).reshape(2, 2))
    assert backend.get_backend() == "strict"
    assert backend.is_array(a) and not backend.is_array(np.ones(2))
    assert backend.foreign_backend(a) is None
    assert backend.foreign_backend(np.ones(2)) == "numpy"
    host = backend.to_numpy(a)
    assert type(host) is np.ndarray
    np.testing.assert_array_equal(host, [[0.0, 1.0], [2.0, 3.0]])
    assert isinstance(backend.asarray(np.ones(2)), StrictArray)
    x = sm.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)   # lists go through xp.array
    assert isinstance(x.data, StrictArray)
    out = x.numpy()
    assert type(out) is np.ndarray and out.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert x.tolist() == [[1.0, 2.0], [3.0, 4.0]] and x.sum().item() == 10.0


def test_host_arrays_are_refused_under_the_strict_namespace(strict_backend):
    # sm.tensor is the explicit upload (like cupy.asarray): it copies onto the device
    uploaded = sm.tensor(np.ones(2))
    assert isinstance(uploaded.data, StrictArray)
    # but an operation never mixes a host array into device work
    x = sm.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(TypeError, match="got a numpy array while the active backend is 'strict'"):
        x + np.ones(2)
    with pytest.raises(TypeError, match="numpy array"):
        np.ones(2) * x                            # Tensor.__rmul__ runs first (priority)
    assert x.grad is None and isinstance(x.data, StrictArray)


# ---------------------------------------------------------------------------
# every op and functional, forward and two orders of reverse mode
# ---------------------------------------------------------------------------
def _derivatives(spec, arrays, kw):
    """y, first and second derivatives (probed by fixed v and u) as host arrays."""
    rng = np.random.default_rng(1)
    xs = [sm.tensor(a, requires_grad=True) for a in device(arrays)]
    y = spec.bind(kw)(*xs)
    v = sm.tensor(backend.asarray(rng.standard_normal(y.shape)))
    gs = sm.grad(y, xs, grad_outputs=v, create_graph=True, allow_unused=True)
    pairs = [(g, sm.tensor(backend.asarray(rng.standard_normal(g.shape))))
             for g in gs if g is not None and g.requires_grad]
    hs = ()
    if pairs:
        hs = sm.grad([g for g, _ in pairs], xs, grad_outputs=[u for _, u in pairs],
                     allow_unused=True)
    host = lambda ts: [None if t is None else t.numpy() for t in ts]
    return y.numpy(), host(gs), host(hs)


ROWS = OP_TABLE + FN_TABLE


@pytest.mark.parametrize("spec", ROWS, ids=lambda s: s.name)
def test_every_row_runs_under_the_strict_namespace_as_under_numpy(spec):
    arrays, kw = spec.sample(seed=2)
    expected = _derivatives(spec, arrays, kw)
    backend._use_namespace("strict", strict)
    got = _derivatives(spec, arrays, kw)
    assert sm.check_grads(spec.bind(kw), device(arrays), order=2, name=spec.name)
    assert_matches(expected, got)                        # bit for bit


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {"conv_w": rng.normal(0, 0.5, (3, 1, 3, 3)), "conv_b": rng.normal(0, 0.1, 3),
            "bn_w": 1 + rng.normal(0, 0.1, 3), "bn_b": rng.normal(0, 0.1, 3),
            "w1": rng.normal(0, 0.5, (8, 12)), "b1": rng.normal(0, 0.1, 8),
            "w2": rng.normal(0, 0.5, (4, 8)), "b2": rng.normal(0, 0.1, 4)}


def _net(p, images):
    """conv -> batch norm -> relu -> max pool -> MLP (tanh, gelu) -> logits."""
    h = F.conv2d(images, p["conv_w"], p["conv_b"], padding=1)       # (N, 3, 4, 4)
    h = F.batch_norm(h, p["bn_w"], p["bn_b"]).relu()
    h = F.max_pool2d(h, 2).reshape(images.shape[0], -1)             # (N, 12)
    h = F.linear(h, p["w1"], p["b1"]).tanh()
    return F.linear(F.gelu(h), p["w2"], p["b2"])                    # (N, 4)


def _maml_step(seed=0, alpha=0.1):
    """One MAML meta-gradient: grad of the query loss after an inner step (double backward)."""
    rng = np.random.default_rng(seed + 1)
    images = backend.asarray(rng.normal(size=(6, 1, 4, 4)))
    labels = backend.asarray(np.array([0, 1, 2, 3, 0, 1]))
    theta = {k: sm.tensor(backend.asarray(v), requires_grad=True) for k, v in _params(seed).items()}
    names = list(theta)
    support = F.cross_entropy(_net(theta, images[:3]), labels[:3])
    grads = sm.grad(support, [theta[k] for k in names], create_graph=True)
    phi = {k: theta[k] - alpha * g for k, g in zip(names, grads)}
    logits = _net(phi, images[3:])
    query = F.cross_entropy(logits, labels[3:]) + F.softmax(logits).max(axis=-1).mean() \
        + F.log_softmax(logits).mean() + F.logsumexp(logits).mean()
    meta = sm.grad(query, [theta[k] for k in names])
    return query.numpy(), [m.numpy() for m in meta]


def test_mlp_conv_net_double_backward_under_the_strict_namespace():
    expected_loss, expected_meta = _maml_step()
    backend._use_namespace("strict", strict)
    loss, meta = _maml_step()
    assert type(loss) is np.ndarray and np.isfinite(loss)
    np.testing.assert_array_equal(loss, expected_loss)
    for e, g in zip(expected_meta, meta):
        assert np.any(e != 0)
        np.testing.assert_array_equal(g, e)


def test_hvp_and_hessian_under_the_strict_namespace(strict_backend):
    x = sm.tensor([1.0, 2.0])
    value, hv = sm.hvp(lambda t: t[0] ** 2 * t[1] + t[1] ** 3, x, sm.tensor([1.0, -1.0]))
    assert isinstance(hv.data, StrictArray)
    np.testing.assert_array_equal(hv.numpy(), [2.0, -10.0])
    H = sm.hessian(lambda t: t[0] ** 2 * t[1] + t[1] ** 3, x)
    np.testing.assert_array_equal(H.numpy(), [[4.0, 2.0], [2.0, 12.0]])
    # the checker catches a wrong VJP on this backend as well
    with pytest.raises(sm.GradcheckError, match="square_scaled"):
        sm.gradcheck(square_scaled, [sm.tensor([1.0, 2.0])])


def test_float32_under_the_strict_namespace(strict_backend):
    sm.set_default_dtype("float32")
    x = sm.tensor([[0.5, -1.0]], requires_grad=True)
    y = F.cross_entropy(x * 2.0, backend.asarray(np.array([1])))
    (g,) = sm.grad(y, x, create_graph=True)
    (h,) = sm.grad(g.sum(), x)
    assert g.dtype == np.float32 and h.dtype == np.float32
    assert isinstance(h.data, StrictArray)


# ---------------------------------------------------------------------------
# the backend switch
# ---------------------------------------------------------------------------
def test_set_backend_refuses_unknown_names():
    with pytest.raises(ValueError, match=r"unknown backend 'bogus'; choose one of \('numpy', 'cupy'\)"):
        sm.set_backend("bogus")
    assert sm.get_backend() == "numpy"
    sm.set_backend("numpy")
    assert sm.get_backend() == "numpy" and backend.xp.ndarray is np.ndarray


def test_use_namespace_returns_the_previous_one():
    old = backend._use_namespace("strict", strict)
    assert old == ("numpy", np) and sm.get_backend() == "strict"
    assert backend.xp.tanh is strict.tanh and "strict" in repr(backend.xp)
    backend._use_namespace(*old)
    assert sm.get_backend() == "numpy" and backend.xp.tanh is np.tanh


def test_synchronize_is_a_no_op_on_numpy():
    assert backend.synchronize() is None


def test_set_backend_cupy_without_a_device_explains():
    from conftest import cuda_available
    if cuda_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(RuntimeError, match="backend 'cupy' (needs CuPy|found no usable CUDA device)"):
        sm.set_backend("cupy")
    assert sm.get_backend() == "numpy"


def _run_python(code, **env):
    full = dict(os.environ, PYTHONPATH=ROOT)
    full.pop("SCRATCHMETA_BACKEND", None)
    full.pop("SCRATCHMETA_DTYPE", None)
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full, cwd=ROOT, timeout=60)


def test_environment_variables_select_backend_and_dtype():
    show = "import scratchmeta as sm; print(sm.get_backend(), sm.get_default_dtype().__name__)"
    assert _run_python(show).stdout.split() == ["numpy", "float64"]
    out = _run_python(show, SCRATCHMETA_BACKEND=" NumPy ", SCRATCHMETA_DTYPE="float32")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["numpy", "float32"]
    bad = _run_python(show, SCRATCHMETA_BACKEND="bogus")
    assert bad.returncode != 0 and "unknown backend 'bogus'" in bad.stderr
    bad = _run_python(show, SCRATCHMETA_DTYPE="float16")
    assert bad.returncode != 0 and "unsupported default dtype" in bad.stderr


def test_environment_cupy_without_a_device_fails_clearly():
    from conftest import cuda_available
    show = "import scratchmeta as sm; print(sm.get_backend())"
    out = _run_python(show, SCRATCHMETA_BACKEND="cupy")
    if cuda_available():
        assert out.returncode == 0 and out.stdout.split() == ["cupy"]
    else:
        assert out.returncode != 0 and "backend 'cupy'" in out.stderr


def test_reuse_host_memory_serves_a_second_large_array_without_page_faults():
    code = (
        "import resource, numpy as np\n"
        "from scratchmeta import backend\n"
        "ok = backend.reuse_host_memory()\n"
        "a = np.ones(8_000_000); del a\n"
        "f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "b = np.ones(8_000_000)\n"
        "print(ok, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n")
    out = _run_python(code)
    assert out.returncode == 0, out.stderr
    ok, faults = out.stdout.split()
    if ok != "True":
        pytest.skip("not glibc: reuse_host_memory is a no-op here")
    assert int(faults) < 100    # 64 MB fresh from the OS: hundreds to thousands of page faults
