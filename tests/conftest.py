"""Shared test set-up: Hypothesis profile, markers, and a clean engine state per test.

- Hypothesis runs derandomized (the same examples on every run and machine)
  with no deadline; HYPOTHESIS_PROFILE=thorough draws at random, and eight times as many
  examples in the table tests (test_ops.examples).
- `slow` tests run only with --runslow; `gpu` tests only where CuPy sees a device.
- After every test the backend, the default dtype, grad mode and the fast-path
  switch are put back
  as they were when the test started (that is, as SCRATCHMETA_BACKEND,
  SCRATCHMETA_DTYPE and SCRATCHMETA_FAST set them at import).
"""
import functools
import importlib
import os
import tempfile

# caches (glyph set, pretrained baselines) go to a fresh folder, not the user's home
os.environ.setdefault("SCRATCHMETA_CACHE", tempfile.mkdtemp(prefix="scratchmeta-test-cache-"))

import pytest
from hypothesis import HealthCheck, settings

from scratchmeta import backend

# the module, not the function sm.tensor that shadows it as an attribute
tensor_module = importlib.import_module("scratchmeta.tensor")

settings.register_profile(
    "scratchmeta", derandomize=True, deadline=None, max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large])
settings.register_profile(
    "thorough", derandomize=False, deadline=None, max_examples=200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "scratchmeta"))


@functools.lru_cache(maxsize=None)
def cuda_available():
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run tests marked slow (long reproduction runs)")


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow: pass --runslow to run")
    skip_gpu = pytest.mark.skip(reason="gpu: needs CuPy and a CUDA device")
    run_slow = config.getoption("--runslow")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not cuda_available():
            item.add_marker(skip_gpu)


def _engine_state():
    state = backend._state
    return (state["name"], state["module"], state["dtype"], tensor_module._grad_enabled[0],
            tensor_module._fast_paths[0])


def _set_engine_state(saved):
    state = backend._state
    state["name"], state["module"], state["dtype"] = saved[:3]
    tensor_module._grad_enabled[0], tensor_module._fast_paths[0] = saved[3:]


_SESSION_ENGINE_STATE = _engine_state()


@pytest.fixture(autouse=True)
def _restore_engine_state():
    """Give every test the backend, default dtype and grad mode the session started
    with, before it and after it: a module-scoped fixture (a training run, which sets
    the run's dtype) is set up before this fixture, so saving the state at the test's
    start would keep what that fixture changed for the rest of the session."""
    _set_engine_state(_SESSION_ENGINE_STATE)
    yield
    _set_engine_state(_SESSION_ENGINE_STATE)
