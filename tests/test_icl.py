"""In-context learning of linear functions: prompts, baselines, the learner, bad input."""
import numpy as np
import pytest

from helpers import needs

import scratchmeta as sm
from scratchmeta.train import build_config
from scratchmeta.algorithms import icl, make_learner
from scratchmeta.algorithms import icl_baselines as B
from scratchmeta.optim import Adam
from scratchmeta.tasks.linreg import LinearRegressionPrompts, curriculum_value


def _prompts(d=3, n=8, T=50, seed=0, **kw):
    b = LinearRegressionPrompts(n_dims=d, n_points=n, seed=seed, **kw).sample(T)
    return b["x"], b["y"], b["w"]


# -- the prompt sampler ------------------------------------------------------------
def test_prompts_are_linear_functions_of_gaussian_inputs():
    x, y, w = _prompts(d=4, n=6, T=3000)
    assert x.shape == (3000, 6, 4) and y.shape == (3000, 6) and w.shape == (3000, 4)
    np.testing.assert_allclose(y, np.einsum("tnd,td->tn", x, w), rtol=1e-12)
    # x ~ N(0, I), w ~ N(0, I): unit variances, E[y^2] = d
    assert abs(x.var() - 1) < 0.03 and abs(w.var() - 1) < 0.06
    assert abs((y ** 2).mean() / 4 - 1) < 0.1


def test_noisy_and_sparse_variants():
    x, y, w = _prompts(d=4, n=50, T=400, noise_std=0.5)
    resid = y - np.einsum("tnd,td->tn", x, w)
    assert abs(resid.std() - 0.5) < 0.02
    _, _, w = _prompts(d=6, n=2, T=100, sparsity=2)
    assert np.all((w != 0).sum(axis=1) == 2)


def test_noisy_prompts_carry_their_clean_targets():
    s = LinearRegressionPrompts(n_dims=3, n_points=5, noise_std=0.7, seed=2)
    b = s.sample(4)
    np.testing.assert_allclose(b["f"], np.einsum("tnd,td->tn", b["x"], b["w"]), rtol=1e-12)
    assert not np.allclose(b["f"], b["y"])
    assert "f" not in LinearRegressionPrompts(n_dims=3, n_points=5, seed=2).sample(4)
    # the noise is drawn last: the same seed gives the same x and w with or without it
    np.testing.assert_array_equal(LinearRegressionPrompts(n_dims=3, n_points=5, seed=2).sample(4)["x"],
                                  b["x"])


def test_least_squares_excess_risk_matches_theory():
    """For k > d + 1 points with noise sigma^2: E (w_hat.x - w.x)^2 = sigma^2 d / (k - d - 1).

    (E tr (X^T X)^{-1} = d / (k - d - 1) for Gaussian X, the inverse Wishart mean.)
    """
    d, n, sigma = 2, 12, 1.0
    b = LinearRegressionPrompts(n_dims=d, n_points=n, noise_std=sigma, seed=5).sample(20000)
    excess = ((B.least_squares(b["x"], b["y"]) - b["f"]) ** 2).mean(axis=0)       # (n,)
    k = np.arange(6, n)
    np.testing.assert_allclose(excess[k], sigma ** 2 * d / (k - d - 1), rtol=0.1)


def test_curriculum_grows_dims_and_points():
    cur = {"dims": {"start": 2, "end": 4, "inc": 1, "interval": 3},
           "points": {"start": 3, "end": 7, "inc": 2, "interval": 3}}
    s = LinearRegressionPrompts(n_dims=4, n_points=7, curriculum=cur, seed=0)
    seen = []
    for _ in range(9):
        b = s.sample(2)
        live = int((np.abs(b["x"]).sum(axis=(0, 1)) > 0).sum())
        seen.append((live, b["x"].shape[1]))
    assert seen == [(2, 3)] * 3 + [(3, 5)] * 3 + [(4, 7)] * 3
    assert curriculum_value(cur["points"], 10 ** 6) == 7


def test_sampler_state_round_trip_includes_the_curriculum_clock():
    cur = {"points": {"start": 2, "end": 6, "inc": 2, "interval": 2}}
    s = LinearRegressionPrompts(n_dims=2, n_points=6, curriculum=cur, seed=3)
    s.sample(4)
    state = s.state_dict()
    a = [s.sample(4)["x"] for _ in range(3)]
    s.load_state_dict(state)
    b = [s.sample(4)["x"] for _ in range(3)]
    assert all(np.array_equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize("kwargs, match", [
    ({"n_dims": 0}, "n_dims"), ({"n_points": 0}, "n_points"), ({"noise_std": -1.0}, "noise_std"),
    ({"sparsity": 9}, "sparsity"),
    ({"curriculum": {"dims": {"start": 2, "end": 3, "inc": 1, "interval": 5}}}, "end must equal"),
    ({"curriculum": {"depth": {}}}, "curriculum"),
])
def test_sampler_bad_arguments(kwargs, match):
    args = dict({"n_dims": 5, "n_points": 11}, **kwargs)
    with pytest.raises(ValueError, match=match):
        LinearRegressionPrompts(**args)


# -- baselines, closed forms ---------------------------------------------------------
def test_least_squares_recovers_w_from_d_noiseless_points():
    d = 4
    x, y, w = _prompts(d=d, n=9, T=20)
    w_hat = B.least_squares_weights(x, y)                          # (T, n, d)
    np.testing.assert_allclose(w_hat[:, d:], np.broadcast_to(w[:, None], w_hat[:, d:].shape),
                               atol=1e-8)
    np.testing.assert_allclose(B.least_squares(x, y)[:, d:], y[:, d:], atol=1e-8)
    assert np.all(B.least_squares(x, y)[:, 0] == 0)               # no examples: predict 0


def test_least_squares_is_minimum_norm_below_d():
    """k < d: w_hat = X^+ y, the interpolant of smallest norm (== numpy.linalg.pinv)."""
    x, y, _ = _prompts(d=5, n=4, T=6)
    w_hat = B.least_squares_weights(x, y)
    for t in range(6):
        for i in range(1, 4):
            np.testing.assert_allclose(w_hat[t, i], np.linalg.pinv(x[t, :i]) @ y[t, :i], atol=1e-9)


def test_ridge_tends_to_least_squares_as_lambda_goes_to_zero():
    x, y, _ = _prompts(d=3, n=10, T=30, noise_std=0.3)
    ls = B.least_squares(x, y)[:, 3:]
    gaps = [np.abs(B.ridge(x, y, lam)[:, 3:] - ls).max() for lam in (1.0, 1e-2, 1e-4, 1e-6, 1e-8, 1e-10)]
    assert all(a > b for a, b in zip(gaps, gaps[1:])) and gaps[-1] < 1e-5


def test_ridge_closed_form_on_one_prompt():
    x, y, _ = _prompts(d=2, n=5, T=1, noise_std=0.1)
    X, Y, lam = x[0, :4], y[0, :4], 0.7
    w = np.linalg.solve(X.T @ X + lam * np.eye(2), X.T @ Y)
    np.testing.assert_allclose(B.ridge(x, y, lam)[0, 4], x[0, 4] @ w, rtol=1e-12)


# a tiny prompt worked by hand: d = 2, four points
X_TINY = np.array([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [3.0, 0.0]]])
Y_TINY = np.array([[2.0, -4.0, 1.0, 5.0]])


def test_averaging_by_hand():
    # i = 1: w = 2*(1,0) = (2, 0);             pred at (0,2) = 0
    # i = 2: w = ((2,0) + (0,-8)) / 2 = (1,-4); pred at (1,1) = -3
    # i = 3: w = ((2,0)+(0,-8)+(1,1)) / 3 = (1,-7/3); pred at (3,0) = 3
    np.testing.assert_allclose(B.averaging(X_TINY, Y_TINY), [[0.0, 0.0, -3.0, 3.0]], atol=1e-12)


def test_knn_by_hand():
    # 3-NN over earlier points, uniform average; fewer neighbours while i < 3
    # i = 1: only (1,0) -> 2;  i = 2: both -> (2 - 4)/2 = -1;
    # i = 3: all three -> (2 - 4 + 1)/3 = -1/3
    np.testing.assert_allclose(B.knn(X_TINY, Y_TINY, 3), [[0.0, 2.0, -1.0, -1.0 / 3]], atol=1e-12)
    # 1-NN at i = 3: the query (3,0) is nearest (1,1)? |(2,-1)|^2 = 5 vs (1,0): 4 -> y = 2
    np.testing.assert_allclose(B.knn(X_TINY, Y_TINY, 1)[0, 3], 2.0)


def test_one_step_gd_is_scaled_averaging_with_the_optimal_step():
    """eta* = E[a.w] / E|a|^2 = k / (k + d + 1) for a = (1/k) sum y_j x_j (Wishart moments)."""
    d, n = 3, 6
    x, y, _ = _prompts(d=d, n=n, T=40000, seed=1)
    np.testing.assert_allclose(B.gd_one_step(x, y, 0.5), 0.5 * B.averaging(x, y))
    k = np.arange(1, n)
    np.testing.assert_allclose(B.tune_gd_step(x, y)[1:], k / (k + d + 1), atol=0.03)


def test_tuned_ridge_prefers_the_noise_level():
    """With w ~ N(0, I) and noise sigma^2, the Bayes-optimal ridge has lam = sigma^2."""
    x, y, _ = _prompts(d=3, n=8, T=20000, noise_std=1.0)
    lam = B.tune_ridge(x, y, [0.01, 0.1, 1.0, 10.0])
    assert np.all(lam[1:] == 1.0)


# -- the learner -----------------------------------------------------------------------
def _tiny_config(d=2, n=4, **task):
    cfg = build_config("icl", "linreg")
    cfg["task"].update(n_dims=d, n_points=n, curriculum=None, **task)
    cfg["model"].update(width=8, depth=1, heads=2)
    cfg["algo"]["tune_prompts"] = 200
    return cfg


def test_prompt_tokens_alternate_x_and_padded_y():
    x, y, _ = _prompts(d=3, n=2, T=1)
    t = icl.prompt_tokens(x, y)
    assert t.shape == (1, 4, 3)
    np.testing.assert_array_equal(t[0, 0], x[0, 0])
    np.testing.assert_array_equal(t[0, 1], [y[0, 0], 0, 0])
    np.testing.assert_array_equal(t[0, 2], x[0, 1])
    np.testing.assert_array_equal(t[0, 3], [y[0, 1], 0, 0])


def test_prediction_i_depends_only_on_the_prefix():
    learner = make_learner(_tiny_config(d=2, n=4))
    theta = learner.init(0)
    x, y, _ = _prompts(d=2, n=4, T=3)
    base = learner.predict(theta, x, y).numpy()
    y2 = y.copy()
    y2[:, 2] += 10.0                                   # change the third label
    moved = learner.predict(theta, x, y2).numpy()
    np.testing.assert_array_equal(moved[:, :3], base[:, :3])   # predictions for y_1..y_3 unchanged
    assert np.all(moved[:, 3] != base[:, 3])                   # y_4's prediction sees y_3


def test_meta_step_loss_and_read_out_bias_gradient():
    """L = mean (pred - y)^2, so dL/d(read-out bias) = 2 mean(pred - y)."""
    learner = make_learner(_tiny_config())
    theta = learner.init(0)
    x, y, _ = _prompts(d=2, n=4, T=5)
    loss, grads, metrics = learner.meta_step(theta, {"x": x, "y": y})
    pred = learner.predict(theta, x, y).numpy()
    np.testing.assert_allclose(loss.item(), ((pred - y) ** 2).mean(), rtol=1e-12)
    np.testing.assert_allclose(grads["read_out.b"].numpy(), [2 * (pred - y).mean()], rtol=1e-10)
    np.testing.assert_allclose(metrics["error"].item(), loss.item() / 2)
    assert set(grads) == set(theta)


def test_evaluate_returns_by_k_for_every_method():
    cfg = _tiny_config(d=2, n=4)
    learner = make_learner(cfg)
    theta = learner.init(0)
    x, y, _ = _prompts(d=2, n=4, T=7)
    out = learner.evaluate(theta, {"x": x, "y": y})
    methods = ["transformer"] + list(B.BASELINES)
    for k in range(4):
        for m in methods:
            assert out[f"by_k/{k}/{m}"].shape == (7,)
    np.testing.assert_allclose(out["error"], np.mean([out[f"by_k/{k}/transformer"] for k in range(4)], 0))
    np.testing.assert_allclose(out["by_k/3/least_squares"], ((B.least_squares(x, y) - y) ** 2 / 2)[:, 3])
    assert set(learner.evaluate(theta, {"x": x, "y": y}, baselines=False)) == \
        {"error"} | {f"by_k/{k}/transformer" for k in range(4)}
    with pytest.raises(ValueError, match="inner_steps"):
        learner.evaluate(theta, {"x": x, "y": y}, inner_steps=3)


def test_evaluate_on_noisy_prompts_scores_the_label_and_the_clean_target():
    """E (p - y)^2 = E (p - w.x)^2 + sigma^2: the clean error is the excess risk."""
    sigma = 0.5
    learner = make_learner(_tiny_config(d=2, n=6, noise_std=sigma))
    theta = learner.init(0)
    b = LinearRegressionPrompts(n_dims=2, n_points=6, noise_std=sigma, seed=4).sample(3000)
    out = learner.evaluate(theta, b)
    pred = learner.predict(theta, b["x"], b["y"]).numpy()
    ls = B.least_squares(b["x"], b["y"])
    for k in range(6):
        for m in ["transformer"] + list(B.BASELINES):
            assert out[f"clean_by_k/{k}/{m}"].shape == (3000,)
        np.testing.assert_allclose(out[f"clean_by_k/{k}/transformer"], (pred - b["f"])[:, k] ** 2 / 2,
                                   rtol=1e-6)
        np.testing.assert_allclose(out[f"by_k/{k}/least_squares"], (ls - b["y"])[:, k] ** 2 / 2)
    np.testing.assert_allclose(out["clean_error"], np.mean((pred - b["f"]) ** 2, axis=1) / 2, rtol=1e-6)
    # the noise floor sigma^2 / d separates the two scores (up to sampling error)
    gap = out["by_k/5/ridge"].mean() - out["clean_by_k/5/ridge"].mean()
    assert abs(gap - sigma ** 2 / 2) < 0.03, gap
    assert not any(key.startswith("clean_baseline") for key in out)


def test_meta_steps_fit_a_fixed_batch_of_prompts():
    """Gradients and optimiser wired up: 100 AdamW steps on 16 fixed prompts cut their loss."""
    cfg = _tiny_config(d=2, n=5)
    cfg["model"].update(width=16, depth=1)
    learner = make_learner(cfg)
    theta = learner.init(0)
    batch = icl.make_sampler(cfg, "train", 0).sample(16)
    first, _, _ = learner.meta_step(theta, batch)
    opt = Adam(lr=1e-2, weight_decay=1e-4)
    for _ in range(100):
        loss, g, _ = learner.meta_step(theta, batch)
        theta = opt.step(theta, g)
    assert loss.item() < 0.5 * first.item(), (first.item(), loss.item())


def test_make_sampler_splits():
    cfg = build_config("icl", "linreg")
    train, test = icl.make_sampler(cfg, "train", 0), icl.make_sampler(cfg, "test", 0)
    assert train.curriculum is not None and test.curriculum is None
    assert train.sample(2)["x"].shape[1] < test.sample(2)["x"].shape[1] == cfg["task"]["n_points"]
    with pytest.raises(ValueError, match=r"no default config for task 'sinusoid'; choose one of \['linreg'\]"):
        build_config("icl", "sinusoid")


# -- bad input -------------------------------------------------------------------------
def test_bad_prompts_raise_clear_errors():
    learner = make_learner(_tiny_config(d=2, n=4))            # context: 8 tokens
    theta = learner.init(0)
    x, y, _ = _prompts(d=2, n=5, T=2)
    with pytest.raises(ValueError, match="longer than the model's context of 8 tokens"):
        learner.meta_step(theta, {"x": x, "y": y})
    x3, y3, _ = _prompts(d=3, n=4, T=2)
    with pytest.raises(ValueError, match="d = 3 but the model was built for d = 2"):
        learner.evaluate(theta, {"x": x3, "y": y3})
    with pytest.raises(ValueError, match="empty"):
        learner.meta_step(theta, {"x": np.zeros((2, 0, 2)), "y": np.zeros((2, 0))})
    with pytest.raises(ValueError, match=r"labels y must be \(T, n\)"):
        learner.meta_step(theta, {"x": x[:, :4], "y": y[:, :3]})
    with pytest.raises(ValueError, match="unknown baselines"):
        make_learner(dict(_tiny_config(), algo={"baselines": ["lasso"]}))


@needs("matplotlib", "plot")
def test_example_07_smoke(tmp_path):
    from helpers import load_example
    ex = load_example("07_icl_linear_regression.py")
    figure = tmp_path / "icl.png"
    result, seconds = ex.main(steps=5, n_dims=2, n_points=5, width=8, depth=1, heads=2,
                              interval=2, eval_prompts=40, figure=str(figure), progress=False)
    assert figure.stat().st_size > 0 and seconds >= 0
    assert result["by_k/4/least_squares"]["mean"] < 1e-6            # k >= d: exact
    assert result["by_k/4/transformer"]["tasks"] == 40


@needs("matplotlib", "plot")
def test_example_07_noisy_prompts(tmp_path):
    from helpers import load_example
    ex = load_example("07_icl_linear_regression.py")
    figure = tmp_path / "icl_noisy.png"
    result, _ = ex.main(steps=3, n_dims=2, n_points=5, width=8, depth=1, heads=2, interval=2,
                        eval_prompts=40, figure=str(figure), progress=False, noise_std=0.5)
    assert figure.stat().st_size > 0
    assert result["by_k/4/least_squares"]["mean"] > 1e-3                # noise: LS is no longer exact
    assert result["clean_by_k/4/transformer"]["tasks"] == 40
    with pytest.raises(ValueError, match="noise_std"):
        ex.main(steps=1, n_dims=2, n_points=5, width=8, depth=1, heads=2, eval_prompts=4,
                figure=None, progress=False, noise_std=-0.5)


def test_example_07_refuses_a_negative_noise_flag():
    import subprocess
    import sys
    from helpers import ROOT
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "07_icl_linear_regression.py"),
                           "--noise-std", "-1"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "--noise-std must be a finite number >= 0" in done.stderr


@needs("matplotlib", "plot")
def test_example_07_scores_a_saved_run_zero_shot_on_noisy_prompts(tmp_path):
    from helpers import load_example
    from scratchmeta import train
    ex = load_example("07_icl_linear_regression.py")
    cfg = dict(_tiny_config(), steps=3, meta_batch=4, eval_every=0, seed=0)
    train.run(cfg, str(tmp_path / "run"), progress=False)
    clean = ex.evaluate_saved(str(tmp_path / "run"), eval_prompts=40)
    assert clean["by_k/3/least_squares"]["mean"] < 1e-6                # trained and scored noiseless
    figure = tmp_path / "zero_shot.png"
    noisy = ex.evaluate_saved(str(tmp_path / "run"), eval_prompts=40, noise_std=0.5, figure=str(figure))
    assert figure.stat().st_size > 0
    assert noisy["by_k/3/least_squares"]["mean"] > 1e-3                # the prompts now carry noise
    assert noisy["clean_by_k/3/transformer"]["tasks"] == 40


def test_batched_loss_equals_the_per_prompt_loop():
    """meta_step's loss and gradient == the training loss summed one prompt at a time."""
    learner = make_learner(_tiny_config(d=2, n=4))
    theta = learner.init(0)
    batch = LinearRegressionPrompts(n_dims=2, n_points=4, seed=3).sample(3)
    loss, grads, _ = learner.meta_step(theta, batch)
    loop = icl.meta_loss_loop(learner, theta, batch)
    assert loss.item() == pytest.approx(loop.item(), rel=1e-6)
    names = list(theta)
    for k, g in zip(names, sm.grad(loop, [theta[k] for k in names])):
        np.testing.assert_allclose(grads[k].numpy(), g.numpy(), rtol=1e-4, atol=1e-6)
# -- the default recipe's learning-rate schedule: linear warm-up, cosine decay -----------
def test_adam_warmup_then_cosine_step_sizes():
    opt = Adam(lr=0.2, warmup_steps=4, schedule="cosine", total_steps=20)
    lrs = [opt.lr_at(t) for t in range(1, 21)]
    np.testing.assert_allclose(lrs[:3], [0.2 * t / 4 * 0.5 * (1 + np.cos(np.pi * t / 20))
                                         for t in (1, 2, 3)], rtol=1e-12)   # warm-up x cosine
    assert lrs[9] == pytest.approx(0.1)                      # t = 10 = T/2: half the peak
    assert lrs[-1] == pytest.approx(0.0, abs=1e-15)          # t = T: zero
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))     # decreasing after the warm-up
    const = Adam(lr=0.2, warmup_steps=4)
    assert [const.lr_at(t) for t in (1, 4, 100)] == [0.05, 0.2, 0.2]


def test_adam_step_uses_the_scheduled_step_size():
    """Step 1 moves theta by lr_at(1) g / (|g| + eps): the schedule scales Adam's update."""
    theta = {"w": sm.tensor(np.array([1.0, -2.0]), requires_grad=True)}
    g = {"w": sm.tensor(np.array([0.5, -0.25]))}
    opt = Adam(lr=0.1, eps=1e-8, warmup_steps=10, schedule="cosine", total_steps=100)
    new = opt.step(theta, g)["w"].numpy()
    gw = g["w"].numpy()
    np.testing.assert_allclose(new, theta["w"].numpy() - opt.lr_at(1) * gw / (np.abs(gw) + 1e-8),
                               rtol=1e-12)
    assert opt.lr_at(1) == pytest.approx(0.1 / 10 * 0.5 * (1 + np.cos(np.pi / 100)))


@pytest.mark.parametrize("kwargs, match", [
    ({"schedule": "linear"}, "schedule must be one of"),
    ({"schedule": "cosine"}, "needs total_steps"),
    ({"schedule": "cosine", "total_steps": 0}, "needs total_steps"),
    ({"warmup_steps": -1}, "warmup_steps must be an integer >= 0"),
    ({"warmup_steps": 2.5}, "warmup_steps must be an integer >= 0"),
])
def test_adam_schedule_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Adam(lr=1e-3, **kwargs)


def test_default_icl_recipe_decays_over_the_runs_own_steps(tmp_path):
    """The default's cosine spans config["steps"], whatever --steps sets it to."""
    from scratchmeta import runs, train
    from scratchmeta.optim import make_optimizer
    cfg = icl.default_config("linreg")
    assert cfg["optimizer"]["schedule"] == "cosine" and cfg["optimizer"]["warmup_steps"] > 0
    opt = make_optimizer(cfg["optimizer"], total_steps=cfg["steps"])
    assert opt.lr_at(cfg["steps"] // 2) == pytest.approx(cfg["optimizer"]["lr"] / 2)
    assert opt.lr_at(cfg["steps"]) == pytest.approx(0.0, abs=1e-15)
    # a run made through train.run: its optimiser ends its schedule at the run's last step
    tiny = dict(_tiny_config(), steps=6, meta_batch=4, eval_every=0, seed=0)
    tiny["optimizer"] = dict(tiny["optimizer"], warmup_steps=2)
    theta, _ = train.run(tiny, str(tmp_path / "run"), progress=False)
    step, saved, scalars, *_ = runs.load_checkpoint(str(tmp_path / "run"), tiny)
    assert step == 6 and scalars["t"] == 6
    # the last step had lr_at(6) = 0, so the parameters did not move on it
    again = dict(tiny, steps=5)
    before, _ = train.run(dict(again, optimizer=dict(tiny["optimizer"], total_steps=6)),
                          str(tmp_path / "five"), progress=False)
    for k in theta:
        np.testing.assert_array_equal(theta[k].numpy(), before[k].numpy())
