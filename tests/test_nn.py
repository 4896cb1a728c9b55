"""Functional models: initialisation schemes, batched parameters, bad arguments."""
import numpy as np
import pytest

import scratchmeta as sm
from scratchmeta import nn


def test_pytorch_init_is_uniform_within_one_over_sqrt_fan_in():
    params = nn.MLP((3, 50, 2)).init(0)
    for name, fan_in in (("w0", 3), ("b0", 3), ("w1", 50)):         # enough values to fill the range
        values = params[name].numpy()
        assert np.abs(values).max() <= 1 / np.sqrt(fan_in)
        assert np.abs(values).max() > 0.8 / np.sqrt(fan_in)    # the whole range is used


def test_maml_init_is_a_truncated_normal_with_zero_biases():
    params = nn.MLP((1, 400, 400, 1), init="maml").init(0)
    w = params["w1"].numpy()
    assert np.abs(w).max() <= 0.02                              # truncated at two std
    assert 0.8 * 0.01 < w.std() < 0.01                          # truncation shrinks the std a little
    assert all(not params[b].numpy().any() for b in ("b0", "b1", "b2"))
    assert nn.build_model(nn.MLP(init="maml").config()).init_scheme == "maml"


def test_unknown_init_and_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="unknown init 'xavier'"):
        nn.MLP(init="xavier")
    with pytest.raises(ValueError, match="at least two positive widths"):
        nn.MLP((1,))


def test_batched_parameters_run_every_task_at_once():
    model = nn.MLP((1, 8, 1))
    theta = model.init(0)
    x = np.random.default_rng(0).standard_normal((3, 5, 1))
    batched = model(nn.batched(theta, 3), sm.tensor(x)).numpy()
    for t in range(3):
        np.testing.assert_allclose(batched[t], model(theta, sm.tensor(x[t])).numpy(), rtol=1e-14)
