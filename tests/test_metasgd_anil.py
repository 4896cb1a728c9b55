"""Meta-SGD (Li et al. 2017, arXiv:1707.09835v2) and ANIL (Raghu et al. 2020, arXiv:1909.09157v2)."""
from collections import OrderedDict

import numpy as np
import pytest

import scratchmeta as sm
from scratchmeta.train import build_config
from scratchmeta import backend, nn
from scratchmeta.algorithms import make_learner
from scratchmeta.algorithms import anil as A
from scratchmeta.algorithms import maml as M
from scratchmeta.algorithms import metasgd as S
from scratchmeta.tasks.regression import Sinusoid

from test_maml import directional_check, image_batch, tiny_conv


def host(t):
    return backend.to_numpy(t.data if isinstance(t, sm.Tensor) else t)


def flat(grads, names=None):
    names = list(grads) if names is None else names
    return np.concatenate([host(grads[k]).ravel() for k in names])


# -- Meta-SGD ----------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 2])
def test_metasgd_with_rates_frozen_at_alpha_is_maml(steps):
    model = nn.MLP((1, 10, 10, 1))
    batch = Sinusoid(seed=0).sample(4)
    frozen = S.MetaSGD(model, inner_lr=0.05, inner_steps=steps, learn_lr=False)
    theta = frozen.init(0)
    assert not any(k.startswith(S.PREFIX) for k in theta)
    _, grads, _ = frozen.meta_step(theta, batch)
    expected = M.meta_gradient(model, theta, batch, 0.05, steps)
    np.testing.assert_allclose(flat(grads), flat(expected), atol=1e-14)
    # learned rates initialised at alpha give the same theta-gradient as MAML
    learned = S.MetaSGD(model, inner_lr=0.05, inner_steps=steps)
    params = learned.init(0)
    _, grads, _ = learned.meta_step(params, batch)
    np.testing.assert_allclose(flat(grads, list(theta)), flat(expected), atol=1e-14)
    assert set(grads) == set(params)


def test_metasgd_rate_gradient_closed_form():
    """k = 1: d/d lr L_query(theta - lr (.) g_s) = -g_s (.) grad L_query(phi), per task, averaged."""
    model = nn.MLP((1, 8, 8, 1))
    learner = S.MetaSGD(model, inner_lr=0.03)
    params = learner.init(1)
    batch = Sinusoid(seed=2).sample(3)
    _, grads, _ = learner.meta_step(params, batch)
    theta, _ = S.split(params)
    expected = OrderedDict((k, 0.0) for k in theta)
    for t in range(3):
        def loss(p, x, y):
            return sm.F.mse_loss(model(p, x), y)
        g_s = sm.grad(loss(theta, batch["support_x"][t], batch["support_y"][t]), list(theta.values()))
        phi = OrderedDict((k, sm.tensor(host(theta[k]) - 0.03 * host(g), requires_grad=True))
                          for k, g in zip(theta, g_s))
        g_q = sm.grad(loss(phi, batch["query_x"][t], batch["query_y"][t]), list(phi.values()))
        for k, a, b in zip(theta, g_s, g_q):
            expected[k] = expected[k] - host(a) * host(b) / 3
    for k in theta:
        np.testing.assert_allclose(host(grads[S.PREFIX + k]), expected[k], atol=1e-13)


def test_metasgd_meta_gradient_matches_finite_differences():
    model = nn.MLP((1, 5, 1))
    learner = S.MetaSGD(model, inner_lr=0.05, inner_steps=2)
    params = learner.init(0)
    batch = Sinusoid(k_support=5, k_query=5, seed=3).sample(3)
    names = list(params)

    def fn(*values):
        p = OrderedDict(zip(names, values))
        theta, lrs = learner.inner_rates(p)
        return M.meta_objective(model, theta, batch, lrs, 2)
    assert sm.gradcheck(fn, list(params.values()), atol=1e-8, rtol=1e-5)


def test_metasgd_config_and_evaluate():
    cfg = build_config("metasgd", "sinusoid")
    cfg["algorithm"] = "metasgd"
    learner = make_learner(cfg)
    assert learner.learn_lr and learner.name == "metasgd"
    params = learner.init(0)
    assert params["lr/w0"].shape == params["w0"].shape
    np.testing.assert_array_equal(host(params["lr/w0"]), 0.01)
    out = learner.evaluate(params, Sinusoid(seed=4).sample(5))
    assert out["mse"].shape == (5,)


# -- ANIL -----------------------------------------------------------------------------
def test_anil_adapts_only_the_head():
    model = nn.MLP((1, 10, 10, 1))
    theta = model.init(0)
    batch = Sinusoid(seed=0).sample(4)
    phi = M.adapt(model, theta, batch["support_x"], batch["support_y"], 0.1, 3,
                  names=model.head_names())
    for k in theta:
        moved = np.abs(host(phi[k]) - host(theta[k])[None]).max()
        assert (moved > 0) == (k in model.head_names()), k


def test_anil_meta_gradient_reaches_the_body_and_matches_finite_differences():
    model = tiny_conv()
    learner = A.ANIL(model, inner_lr=0.3, inner_steps=2, loss="cross_entropy")
    theta = learner.init(0)
    batch = image_batch()
    _, grads, _ = learner.meta_step(theta, batch)
    assert set(grads) == set(theta) and np.abs(host(grads["conv0.w"])).max() > 0
    names = list(theta)

    def fn(*values):
        return M.meta_objective(model, OrderedDict(zip(names, values)), batch, 0.3, 2,
                                loss="cross_entropy", names=model.head_names())
    assert directional_check(fn, theta)


def test_anil_equals_maml_when_only_the_head_has_parameters():
    """A one-layer MLP is all head: ANIL and MAML are the same algorithm."""
    model = nn.MLP((3, 1))
    batch = {k: v[..., :1].repeat(3, axis=-1) if k.endswith("_x") else v
             for k, v in Sinusoid(seed=0).sample(3).items()}
    anil, maml = A.ANIL(model, 0.1), M.MAML(model, 0.1)
    theta = model.init(0)
    np.testing.assert_allclose(flat(anil.meta_step(theta, batch)[1]),
                               flat(maml.meta_step(theta, batch)[1]), atol=1e-14)


def test_anil_config_and_bad_model():
    cfg = build_config("anil", "sinusoid")
    cfg["algorithm"] = "anil"
    learner = make_learner(cfg)
    assert learner.adapt_names == ("w2", "b2")
    out = learner.evaluate(learner.init(0), Sinusoid(seed=1).sample(3))
    assert out["mse_step10"].shape == (3,)
    with pytest.raises(ValueError, match="no head"):
        A.ANIL(nn.Conv4(hidden=4, image_size=8, blocks=2, n_classes=None))
