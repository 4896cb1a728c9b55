"""Conditional Neural Processes: the pieces in closed form, the learner, bad input."""
import math

import numpy as np
import pytest

import scratchmeta as sm
from scratchmeta.train import build_config
from scratchmeta.algorithms import cnp, make_learner
from scratchmeta.optim import Adam
from scratchmeta.tasks.regression import Sinusoid


def test_softplus_is_stable_and_exact():
    x = np.array([-1000.0, -30.0, -1.0, 0.0, 2.0, 30.0, 1000.0])
    out = cnp.softplus(sm.tensor(x)).numpy()
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[2:-1], np.log1p(np.exp(x[2:-1])), rtol=1e-12)
    # far in the left tail log(1 + tiny) keeps absolute, not relative, precision
    np.testing.assert_allclose(out[[0, 1, -1]], [0.0, np.exp(-30.0), 1000.0], rtol=0, atol=1e-15)


def test_softplus_grads_order2():
    # d/dx softplus = sigmoid(x); checked numerically away from the kink of |x| at 0
    sm.check_grads(cnp.softplus, (np.array([-3.0, -0.7, 0.4, 2.5]),), order=2)
    x = sm.tensor(np.array([-2.0, 0.5, 3.0]), requires_grad=True)
    (g,) = sm.grad(cnp.softplus(x).sum(), x)
    np.testing.assert_allclose(g.numpy(), 1 / (1 + np.exp(-x.numpy())), rtol=1e-12)


def test_gaussian_nll_closed_form_and_grads():
    y, mu, sigma = np.array([0.3, -1.0]), np.array([0.0, 0.5]), np.array([0.5, 2.0])
    want = np.log(sigma) + (y - mu) ** 2 / (2 * sigma ** 2) + 0.5 * math.log(2 * math.pi)
    got = cnp.gaussian_nll(sm.tensor(y), sm.tensor(mu), sm.tensor(sigma)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12)
    sm.check_grads(lambda m, s: cnp.gaussian_nll(sm.tensor(y), m, s), (mu, sigma), order=2)


def _learner(**kw):
    cfg = build_config("cnp", "sinusoid")
    cfg["model"].update(r_dim=8, encoder=[16], decoder=[16])
    cfg["algo"].update(kw)
    return make_learner(cfg)


def test_representation_is_a_mean_over_the_context():
    """Eq. 2: r does not depend on the order of the context; the mask picks a subset."""
    learner = _learner()
    theta = learner.init(0)
    b = Sinusoid(k_support=6, k_query=3, seed=1).sample(4)
    x, y = b["support_x"], b["support_y"]
    perm = np.random.default_rng(0).permutation(6)
    r = learner.represent(theta, x, y).numpy()
    np.testing.assert_allclose(learner.represent(theta, x[:, perm], y[:, perm]).numpy(), r, rtol=1e-12)
    mask = (np.arange(6)[None, :] < np.array([[1], [2], [3], [6]])).astype(float)
    masked = learner.represent(theta, x, y, mask).numpy()
    for t, n in enumerate([1, 2, 3, 6]):
        np.testing.assert_allclose(masked[t], learner.represent(theta, x[t:t + 1, :n], y[t:t + 1, :n]).numpy()[0],
                                   rtol=1e-12)


def test_sigma_is_bounded_below():
    learner = _learner()
    theta = learner.init(0)
    r = sm.tensor(100 * np.random.default_rng(2).standard_normal((3, 1, 8)))
    _, sigma = learner.decode(theta, r, np.linspace(-5, 5, 21).reshape(1, 21, 1).repeat(3, 0))
    assert np.all(sigma.numpy() >= 0.1)


def test_meta_step_loss_and_mean_bias_gradient():
    """L = mean NLL over all points, so dL/d(bias of mu) = mean((mu - y) / sigma^2)."""
    learner = _learner(random_context=False)
    theta = learner.init(0)
    b = Sinusoid(k_support=5, k_query=4, seed=3).sample(6)
    loss, grads, metrics = learner.meta_step(theta, b)
    r = learner.represent(theta, b["support_x"], b["support_y"])
    x_all = np.concatenate([b["support_x"], b["query_x"]], 1)
    y_all = np.concatenate([b["support_y"], b["query_y"]], 1)
    mu, sigma = (t.numpy() for t in learner.decode(theta, r, x_all))
    nll = np.log(sigma) + (y_all - mu) ** 2 / (2 * sigma ** 2) + 0.5 * math.log(2 * math.pi)
    np.testing.assert_allclose(loss.item(), nll.mean(), rtol=1e-12)
    last = f"decoder.b{len(learner.decoder.sizes) - 2}"
    np.testing.assert_allclose(grads[last].numpy()[0], ((mu - y_all) / sigma ** 2).mean(), rtol=1e-10)
    np.testing.assert_allclose(metrics["mse"].item(), ((mu - y_all) ** 2).mean(), rtol=1e-12)
    assert set(grads) == set(theta)


def test_evaluate_per_task_mse_and_nll():
    learner = _learner()
    theta = learner.init(0)
    b = Sinusoid(k_support=5, k_query=7, seed=4).sample(3)
    out = learner.evaluate(theta, b)
    r = learner.represent(theta, b["support_x"], b["support_y"])
    mu, sigma = (t.numpy() for t in learner.decode(theta, r, b["query_x"]))
    np.testing.assert_allclose(out["mse"], ((mu - b["query_y"]) ** 2).mean(axis=(1, 2)), rtol=1e-12)
    assert out["nll"].shape == (3,)
    with pytest.raises(ValueError, match="inner_steps"):
        learner.evaluate(theta, b, inner_steps=2)


def test_training_lowers_the_query_mse():
    cfg = build_config("cnp", "sinusoid")
    cfg["model"].update(r_dim=32, encoder=[32, 32], decoder=[32, 32])
    learner = make_learner(cfg)
    theta = learner.init(0)
    held = Sinusoid(k_support=10, k_query=10, seed=99).sample(200)
    before = learner.evaluate(theta, held)["mse"].mean()
    train, opt = Sinusoid(k_support=10, k_query=10, seed=0), Adam(lr=3e-3)
    for _ in range(300):
        _, g, _ = learner.meta_step(theta, train.sample(16))
        theta = opt.step(theta, g)
    after = learner.evaluate(theta, held)["mse"].mean()
    assert after < 0.85 * before, (before, after)


def test_bad_batches_raise_clear_errors():
    learner = _learner()
    theta = learner.init(0)
    b = Sinusoid(k_support=3, k_query=2, seed=5).sample(2)
    with pytest.raises(ValueError, match="context is empty"):
        learner.evaluate(theta, dict(b, support_x=b["support_x"][:, :0], support_y=b["support_y"][:, :0]))
    with pytest.raises(ValueError, match="x_dim=2"):
        learner.evaluate(theta, dict(b, query_x=np.zeros((2, 2, 2))))
    with pytest.raises(ValueError, match="tasks and points must match"):
        learner.meta_step(theta, dict(b, support_y=b["support_y"][:, :2]))
    with pytest.raises(ValueError, match=r"expected x \(T, n, x_dim\)"):
        learner.meta_step(theta, dict(b, query_x=b["query_x"][..., None]))
    with pytest.raises(ValueError, match=r"no default config for task 'glyphs'; choose one of \['sinusoid'\]"):
        build_config("cnp", "glyphs")


def test_example_08_smoke():
    from helpers import load_example
    ex = load_example("08_cnp_sine.py")
    results = ex.main(steps=5, maml_steps=3, eval_tasks=20, progress=False)
    scores, seconds = results["cnp"]
    assert set(scores) == {5, 10} and scores[5]["mse"]["tasks"] == 20
    assert np.isfinite(scores[10]["nll"]["mean"]) and seconds >= 0


@pytest.mark.parametrize("n_context", [None, [1, 4, 2, 5]])
def test_batched_loss_equals_the_per_task_loop(n_context):
    """Eqs. 1-4 one task at a time (unbatched) == every task at once with a context mask."""
    learner = _learner()
    theta = learner.init(0)
    batch = Sinusoid(k_support=5, k_query=3, seed=7).sample(4)
    batched, _, _ = learner.meta_loss(theta, batch, n_context)
    loop = cnp.meta_loss_loop(learner, theta, batch, n_context)
    assert batched.item() == pytest.approx(loop.item(), rel=1e-12)
    names = list(theta)
    g_batched = sm.grad(batched, [theta[k] for k in names])
    g_loop = sm.grad(loop, [theta[k] for k in names])
    for a, b in zip(g_batched, g_loop):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-12)
