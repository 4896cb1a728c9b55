"""MAML and FOMAML: the meta-gradient against finite differences and closed forms.

Finn, Abbeel & Levine 2017, arXiv:1703.03400v3, Eqs. 1-3. Everything float64.
"""
from collections import OrderedDict

import numpy as np
import pytest

from helpers import load_example, needs

import scratchmeta as sm
from scratchmeta.train import build_config
from scratchmeta import backend, nn
from scratchmeta import functional as F
from scratchmeta.algorithms import make_learner
from scratchmeta.algorithms import maml as M
from scratchmeta.algorithms import pretrained as P
from scratchmeta.optim import Adam
from scratchmeta.tasks.regression import Sinusoid


def arr(x, dtype=None):
    return backend.asarray(np.asarray(x), dtype=dtype)


def host(t):
    return backend.to_numpy(t.data if isinstance(t, sm.Tensor) else t)


def regression_batch(T=3, K=5, Q=4, d=1, seed=0):
    return Sinusoid(k_support=K, k_query=Q, seed=seed).sample(T) if d == 1 else _linear_batch(T, K, Q, d, seed)


def _linear_batch(T, K, Q, d, seed):
    rng = np.random.default_rng(seed)
    return {"support_x": arr(rng.normal(size=(T, K, d))), "support_y": arr(rng.normal(size=(T, K, 1))),
            "query_x": arr(rng.normal(size=(T, Q, d))), "query_y": arr(rng.normal(size=(T, Q, 1)))}


def image_batch(T=2, n_way=3, k_shot=2, n_query=2, size=8, seed=0):
    rng = np.random.default_rng(seed)
    sy = np.repeat(np.arange(n_way), k_shot)[None].repeat(T, 0)
    qy = np.repeat(np.arange(n_way), n_query)[None].repeat(T, 0)
    return {"support_x": arr(rng.normal(size=(T, n_way * k_shot, 1, size, size))),
            "support_y": arr(sy, np.int64),
            "query_x": arr(rng.normal(size=(T, n_way * n_query, 1, size, size))),
            "query_y": arr(qy, np.int64)}


def tiny_conv():
    return nn.Conv4(in_channels=1, hidden=4, n_classes=3, image_size=8, blocks=2)


def flat(grads):
    return np.concatenate([host(g).ravel() for g in grads.values()])


def directional_check(fn, theta, directions=4, eps=1e-6, seed=0):
    """<grad f, u> == (f(theta + eps u) - f(theta - eps u)) / (2 eps) along random u.

    Cheaper than element by element (2 evaluations a direction) and, for
    random u, blind to no error in the gradient.
    """
    rng = np.random.default_rng(seed)
    values = list(theta.values())
    g = sm.grad(fn(*values), values)
    for _ in range(directions):
        u = [rng.standard_normal(v.shape) for v in values]
        shifted = [[sm.tensor(host(v) + s * eps * du, requires_grad=True) for v, du in zip(values, u)]
                   for s in (1, -1)]
        numeric = (fn(*shifted[0]).item() - fn(*shifted[1]).item()) / (2 * eps)
        analytic = sum(float((host(gi) * du).sum()) for gi, du in zip(g, u))
        assert abs(analytic - numeric) <= 1e-7 + 1e-6 * abs(numeric), (analytic, numeric)
    return True


def objective(model, theta, batch, alpha, steps, loss):
    names = list(theta)

    def fn(*params):
        return M.meta_objective(model, OrderedDict(zip(names, params)), batch, alpha, steps,
                                loss=loss)
    return fn


# -- the meta-gradient is the derivative of the meta-objective ---------------------
@pytest.mark.parametrize("steps", [1, 3])
def test_meta_gradient_matches_finite_differences_mlp(steps):
    model = nn.MLP((1, 6, 6, 1))
    theta = model.init(1)
    batch = regression_batch(T=3, K=5, Q=4)
    fn = objective(model, theta, batch, 0.05, steps, "mse")
    assert sm.gradcheck(fn, list(theta.values()), atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("steps", [1, 3])
def test_meta_gradient_matches_finite_differences_conv4_batchnorm(steps):
    model = tiny_conv()
    theta = model.init(2)
    batch = image_batch()
    fn = objective(model, theta, batch, 0.1, steps, "cross_entropy")
    assert directional_check(fn, theta)


def test_fomaml_is_not_the_derivative_of_the_meta_objective():
    model = nn.MLP((1, 6, 6, 1))
    theta = model.init(1)
    batch = regression_batch()
    exact = M.meta_gradient(model, theta, batch, 0.05, 1)
    fo = M.meta_gradient(model, theta, batch, 0.05, 1, first_order=True)
    assert np.abs(flat(exact) - flat(fo)).max() > 1e-4


# -- batched over tasks == one task at a time -------------------------------------
@pytest.mark.parametrize("steps,first_order", [(1, False), (3, False), (2, True)])
def test_batched_equals_loop_mlp(steps, first_order):
    model = nn.MLP((1, 10, 10, 1))
    theta = model.init(0)
    batch = regression_batch(T=5, K=10, Q=10)
    a = M.meta_gradient(model, theta, batch, 0.1, steps, first_order)
    b = M.meta_gradient_loop(model, theta, batch, 0.1, steps, first_order)
    np.testing.assert_allclose(flat(a), flat(b), rtol=0, atol=1e-10)


def test_batched_equals_loop_conv4():
    model = tiny_conv()
    theta = model.init(0)
    batch = image_batch(T=3)
    a = M.meta_gradient(model, theta, batch, 0.2, 2, loss="cross_entropy")
    b = M.meta_gradient_loop(model, theta, batch, 0.2, 2, loss="cross_entropy")
    np.testing.assert_allclose(flat(a), flat(b), rtol=0, atol=1e-10)


def test_summed_task_losses_equal_T_times_cross_entropy():
    rng = np.random.default_rng(0)
    logits = sm.tensor(rng.normal(size=(4, 6, 3)))
    labels = arr(rng.integers(0, 3, size=(4, 6)), np.int64)
    per_task = M.task_losses(logits, labels, "cross_entropy")
    assert per_task.shape == (4,)
    np.testing.assert_allclose(host(per_task.sum()), 4 * host(F.cross_entropy(logits, labels)),
                               rtol=1e-12)


# -- closed forms on a quadratic loss ------------------------------------------------
def test_quadratic_loss_closed_form():
    """Linear model + MSE: L is quadratic, H_support = 2/K X^T X, so
    grad_theta L_query(phi) = (I - alpha H_support) grad L_query(phi) exactly;
    FOMAML is the same with H_support = 0."""
    T, K, Q, d, alpha = 4, 6, 5, 3, 0.07
    model = nn.MLP((d, 1))
    theta = model.init(3)
    batch = _linear_batch(T, K, Q, d, seed=4)
    z = np.concatenate([host(theta["w0"]).ravel(), host(theta["b0"])])      # [w, b]

    def aug(x):                                                           # [x, 1]
        x = host(x)
        return np.concatenate([x, np.ones(x.shape[:-1] + (1,))], axis=-1)

    full, first = np.zeros(d + 1), np.zeros(d + 1)
    for t in range(T):
        Xs, ys = aug(batch["support_x"])[t], host(batch["support_y"])[t, :, 0]
        Xq, yq = aug(batch["query_x"])[t], host(batch["query_y"])[t, :, 0]
        H_s = 2 / K * Xs.T @ Xs
        phi = z - alpha * (2 / K * Xs.T @ (Xs @ z - ys))
        g_q = 2 / Q * Xq.T @ (Xq @ phi - yq)
        full += (np.eye(d + 1) - alpha * H_s) @ g_q / T
        first += g_q / T
    np.testing.assert_allclose(flat(M.meta_gradient(model, theta, batch, alpha, 1)), full, atol=1e-12)
    np.testing.assert_allclose(flat(M.meta_gradient(model, theta, batch, alpha, 1, first_order=True)),
                               first, atol=1e-12)
    fo, hess = M.meta_gradient_split(model, theta, batch, alpha, 1)
    np.testing.assert_allclose(flat(fo), first, atol=1e-12)
    np.testing.assert_allclose(flat(hess), full - first, atol=1e-12)


# -- the split: first-order part + Hessian term ---------------------------------------
@pytest.mark.parametrize("steps", [1, 3])
def test_split_adds_up_to_the_full_meta_gradient(steps):
    model = nn.MLP((1, 10, 10, 1))
    theta = model.init(0)
    batch = regression_batch(T=4, K=10, Q=10)
    full = M.meta_gradient(model, theta, batch, 0.1, steps)
    fo, hess = M.meta_gradient_split(model, theta, batch, 0.1, steps)
    np.testing.assert_allclose(flat(fo), flat(M.meta_gradient(model, theta, batch, 0.1, steps,
                                                               first_order=True)), atol=1e-12)
    np.testing.assert_allclose(flat(fo) + flat(hess), flat(full), atol=1e-10)
    assert np.abs(flat(hess)).max() > 1e-3               # the term FOMAML drops is not zero here


def test_split_conv4_adds_up():
    model = tiny_conv()
    theta = model.init(0)
    batch = image_batch()
    full = M.meta_gradient(model, theta, batch, 0.3, 2, loss="cross_entropy")
    fo, hess = M.meta_gradient_split(model, theta, batch, 0.3, 2, loss="cross_entropy")
    np.testing.assert_allclose(flat(fo) + flat(hess), flat(full), atol=1e-10)


def test_one_step_hessian_part_is_minus_alpha_H_support_times_query_gradient():
    """k = 1, a non-quadratic loss: compare with the full Hessian, task by task."""
    model = nn.MLP((1, 4, 1), activation="tanh")
    theta = model.init(5)
    batch = regression_batch(T=3, K=6, Q=6)
    alpha = 0.2
    names, shapes = list(theta), [v.shape for v in theta.values()]
    sizes = [int(np.prod(s)) for s in shapes]
    z0 = flat(theta)

    def unpack(z):
        out, i = OrderedDict(), 0
        for k, s, n in zip(names, shapes, sizes):
            out[k] = z[i:i + n].reshape(s)
            i += n
        return out

    def loss_at(z, x, y):
        return F.mse_loss(model(unpack(z), x), y)

    expected = np.zeros_like(z0)
    for t in range(3):
        xs, ys = batch["support_x"][t], batch["support_y"][t]
        xq, yq = batch["query_x"][t], batch["query_y"][t]
        H = host(sm.hessian(lambda z: loss_at(z, xs, ys), arr(z0)))
        zt = sm.tensor(arr(z0), requires_grad=True)
        (g_s,) = sm.grad(loss_at(zt, xs, ys), zt)
        phi = sm.tensor(arr(z0) - alpha * g_s.data, requires_grad=True)
        (g_q,) = sm.grad(loss_at(phi, xq, yq), phi)
        expected += -alpha * H @ host(g_q) / 3
    _, hess = M.meta_gradient_split(model, theta, batch, alpha, 1)
    np.testing.assert_allclose(flat(hess), expected, atol=1e-12)


# -- where FOMAML is exact, and where it is not -------------------------------------
def test_fomaml_equals_maml_with_zero_inner_lr():
    model = nn.MLP((1, 8, 8, 1))
    theta = model.init(0)
    batch = regression_batch()
    a = M.meta_gradient(model, theta, batch, 0.0, 2)
    b = M.meta_gradient(model, theta, batch, 0.0, 2, first_order=True)
    np.testing.assert_allclose(flat(a), flat(b), atol=1e-14)


def test_fomaml_equals_maml_for_a_loss_linear_in_the_parameters():
    """Linear model, loss mean(pred * y): H_support = 0, so the dropped term is 0."""
    model = nn.MLP((3, 1))
    theta = model.init(0)
    batch = _linear_batch(3, 5, 4, 3, seed=1)

    def linear_loss(pred, y):
        return (pred * y).reshape(pred.shape[0], -1).mean(axis=1)

    a = M.meta_gradient(model, theta, batch, 0.5, 2, loss=linear_loss)
    b = M.meta_gradient(model, theta, batch, 0.5, 2, first_order=True, loss=linear_loss)
    np.testing.assert_allclose(flat(a), flat(b), atol=1e-14)
    _, hess = M.meta_gradient_split(model, theta, batch, 0.5, 2, loss=linear_loss)
    np.testing.assert_allclose(flat(hess), 0.0, atol=1e-14)


def test_fomaml_differs_from_maml_on_a_curved_loss():
    model = nn.MLP((1, 10, 10, 1))
    theta = model.init(0)
    batch = regression_batch(T=4, K=10, Q=10)
    a = flat(M.meta_gradient(model, theta, batch, 0.1, 1))
    b = flat(M.meta_gradient(model, theta, batch, 0.1, 1, first_order=True))
    assert np.linalg.norm(a - b) > 1e-2 * np.linalg.norm(a)


# -- the learner --------------------------------------------------------------------
def test_make_learner_names_maml_and_fomaml():
    cfg = build_config("maml", "sinusoid")
    cfg["algorithm"] = "maml"
    assert make_learner(cfg).first_order is False
    cfg["algorithm"] = "fomaml"
    learner = make_learner(cfg)
    assert learner.first_order is True and learner.name == "fomaml"
    assert cfg["algo"]["inner_lr"] == 0.01 and cfg["meta_batch"] == 25
    c = build_config("maml", "glyphs")
    assert c["algo"]["inner_lr"] == 0.4 and c["model"]["n_classes"] == c["task"]["n_way"]
    with pytest.raises(ValueError, match="no default config"):
        build_config("maml", "imagenet")


def test_meta_step_returns_the_meta_gradient():
    model = nn.MLP((1, 8, 8, 1))
    learner = M.MAML(model, inner_lr=0.05, inner_steps=2)
    theta = learner.init(0)
    batch = regression_batch()
    loss, grads, metrics = learner.meta_step(theta, batch)
    np.testing.assert_allclose(flat(grads), flat(M.meta_gradient(model, theta, batch, 0.05, 2)),
                               atol=1e-14)
    assert loss.shape == () and not loss.requires_grad and "query_loss" in metrics


def test_evaluate_regression_keys_and_zero_baseline():
    learner = M.MAML(nn.MLP((1, 8, 8, 1)), inner_lr=0.01, eval_inner_steps=5)
    theta = learner.init(0)
    batch = regression_batch(T=6, K=10, Q=7)
    out = learner.evaluate(theta, batch)
    for key in ("mse", "mse_step0", "mse_step1", "mse_step5", "mse_step10", "baseline/zero"):
        assert out[key].shape == (6,)
    np.testing.assert_array_equal(host(out["mse"]), host(out["mse_step5"]))
    np.testing.assert_allclose(host(out["baseline/zero"]), (host(batch["query_y"]) ** 2).mean(axis=(1, 2)))
    # step 0 is the unadapted model; one step from the loop version agrees
    pred = host(learner.model(theta, batch["query_x"]))
    np.testing.assert_allclose(host(out["mse_step0"]), ((pred - host(batch["query_y"])) ** 2).mean(axis=(1, 2)))
    small = learner.evaluate(theta, batch, inner_steps=1, k_support=5)
    assert small["mse"].shape == (6,)


def test_evaluate_classification_accuracy():
    learner = M.MAML(tiny_conv(), inner_lr=0.4, loss="cross_entropy", eval_inner_steps=3)
    theta = learner.init(0)
    out = learner.evaluate(theta, image_batch(T=4))
    acc = host(out["accuracy"])
    assert acc.shape == (4,) and np.all((acc >= 0) & (acc <= 1))
    assert out["loss"].shape == (4,) and "accuracy_step0" in out
    # scored on the support set itself, 3 steps of alpha = 0.4 lower every task's loss
    same = image_batch(T=4)
    same["query_x"], same["query_y"] = same["support_x"], same["support_y"]
    before = host(learner.evaluate(theta, same, inner_steps=0)["loss"])
    assert np.all(host(learner.evaluate(theta, same)["loss"]) < before)


def test_short_training_beats_the_initialisation():
    learner = M.MAML(nn.MLP((1, 40, 40, 1)), inner_lr=0.01)
    theta = learner.init(0)
    sampler, test = Sinusoid(seed=0), Sinusoid(seed=99).sample(200)
    before = host(learner.evaluate(theta, test, inner_steps=1)["mse"]).mean()
    opt = Adam(lr=1e-3)
    for _ in range(300):
        _, grads, _ = learner.meta_step(theta, sampler.sample(25))
        theta = opt.step(theta, grads)
    after = host(learner.evaluate(theta, test, inner_steps=1)["mse"]).mean()
    assert after < 0.7 * before


# -- bad input --------------------------------------------------------------------
def test_mismatched_task_axes_name_both_shapes():
    learner = M.MAML(nn.MLP((1, 8, 1)))
    theta = learner.init(0)
    batch = Sinusoid(seed=0).sample(25)
    batch["query_x"], batch["query_y"] = batch["query_x"][:24], batch["query_y"][:24]
    with pytest.raises(ValueError, match=r"\(25, 10, 1\).*\(24, 10, 1\)"):
        learner.meta_step(theta, batch)
    with pytest.raises(ValueError, match="support_x"):
        learner.evaluate(theta, batch)
    bad = Sinusoid(seed=0).sample(3)
    bad["support_y"] = bad["support_y"][:, :4]
    with pytest.raises(ValueError, match="support_y"):
        learner.meta_step(theta, bad)


def test_k_larger_than_the_task_gives():
    learner = M.MAML(nn.MLP((1, 8, 1)))
    batch = Sinusoid(k_support=5, seed=0).sample(2)
    with pytest.raises(ValueError, match="k_support=10.*only 5 support points"):
        learner.evaluate(learner.init(0), batch, k_support=10)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_loss_raises_floating_point_error():
    learner = M.MAML(nn.MLP((1, 8, 1)))
    batch = Sinusoid(seed=0).sample(2)
    batch["query_y"] = batch["query_y"] * float("nan")
    with pytest.raises(FloatingPointError, match=r"meta-loss .* is nan"):
        learner.meta_step(learner.init(0), batch)


def test_bad_hyper_parameters():
    with pytest.raises(ValueError, match="inner_steps"):
        M.MAML(nn.MLP((1, 4, 1)), inner_steps=0)
    with pytest.raises(ValueError, match="unknown loss"):
        M.MAML(nn.MLP((1, 4, 1)), loss="hinge")
    with pytest.raises(ValueError, match="inner_steps must be >= 0"):
        M.MAML(nn.MLP((1, 4, 1))).evaluate(nn.MLP((1, 4, 1)).init(0), regression_batch(), inner_steps=-1)


# -- the pretrained baseline ----------------------------------------------------------
def test_pretrained_baseline_learns_the_mean_function_and_finetunes():
    model = nn.MLP((1, 20, 20, 1))
    test = Sinusoid(seed=7).sample(100)
    params = P.pretrain(model, Sinusoid(seed=1), steps=150, seed=0, lr=1e-2, batch_tasks=10)
    out = P.finetune_evaluate(model, params, test, alpha=0.01, steps=10)
    # the average of A sin(x - phase) over phases in [0, pi] is not zero: it beats predicting 0
    assert host(out["mse_step0"]).mean() < host(out["baseline/zero"]).mean()
    assert host(out["mse_step10"]).mean() < host(out["mse_step0"]).mean()
    assert out["mse"].shape == (100,)


# -- examples, tiny settings -----------------------------------------------------------
_example = load_example


@needs("matplotlib", "plot")
def test_example_02_maml_sine_smoke(tmp_path):
    png = tmp_path / "sine.png"
    out = _example("02_maml_sine.py").main(steps=30, n_tasks=20, pretrain_steps=30, png=str(png))
    assert png.stat().st_size > 0
    assert set(out) == {("MAML", 5), ("pretrained", 5), ("MAML", 10), ("pretrained", 10)}
    assert all(np.isfinite(v[1][0]) for v in out.values())


@needs("matplotlib", "plot")
def test_example_05_hessian_term_smoke(tmp_path):
    png = tmp_path / "h.png"
    table = _example("05_hessian_term.py").main(alphas=(0.0, 0.01), train_steps=5, n_batches=1,
                                                png=str(png))
    assert png.stat().st_size > 0
    cos, ratio, hess = table[("init", 0.0)]          # alpha = 0: FOMAML is MAML
    assert cos == pytest.approx(1.0) and ratio == pytest.approx(1.0) and hess == 0.0
    assert table[("init", 0.01)][2] > 0


def test_eval_hook_reports_the_pretrained_baseline():
    cfg = build_config("maml", "sinusoid")
    cfg.update(algorithm="maml", steps=10, meta_batch=5, seed=0)
    learner = make_learner(cfg)
    out = M.extra_baselines(cfg, learner, Sinusoid(seed=3), n_tasks=30, batch_size=10)
    assert out["baseline/pretrained"]["tasks"] == 30 and np.isfinite(out["baseline/pretrained"]["mean"])
    assert M.extra_baselines(cfg, learner, Sinusoid(seed=3), baselines=False) == {}


# -- one routine, one meaning ----------------------------------------------------------------
def test_maml_metasgd_anil_step_through_the_one_meta_gradient_routine(monkeypatch):
    """MAML, FOMAML, Meta-SGD and ANIL meta_step all call meta_loss_and_gradient, whose
    backward pass frees the graph as it goes (retain_graph=False)."""
    from scratchmeta.algorithms import anil, metasgd
    calls, retain = [], []
    real_routine, real_grad = M.meta_loss_and_gradient, M.grad

    def spy_routine(*args, **kw):
        calls.append(kw["who"])
        return real_routine(*args, **kw)

    def spy_grad(*args, **kw):
        retain.append(kw.get("retain_graph"))
        return real_grad(*args, **kw)
    monkeypatch.setattr(M, "meta_loss_and_gradient", spy_routine)
    monkeypatch.setattr(M, "grad", spy_grad)
    model = nn.MLP((1, 6, 1))
    batch = regression_batch(T=2, K=3, Q=3)
    learners = [M.MAML(model), M.MAML(model, first_order=True), metasgd.MetaSGD(model),
                anil.ANIL(model)]
    for learner in learners:
        learner.meta_step(learner.init(0), batch)
    assert calls == ["maml", "fomaml", "metasgd", "anil"]
    assert retain == [False] * 4


def test_maml_meta_step_equals_meta_gradient():
    model = nn.MLP((1, 6, 1))
    batch = regression_batch(T=3, K=4, Q=4)
    learner = M.MAML(model, inner_lr=0.1, inner_steps=2)
    theta = learner.init(0)
    _, grads, _ = learner.meta_step(theta, batch)
    np.testing.assert_array_equal(flat(grads), flat(M.meta_gradient(model, theta, batch, 0.1, 2)))


def test_accuracy_counts_a_tie_for_the_top_as_wrong():
    """The one tie rule (common.accuracy): right only when the true class is strictly highest."""
    from scratchmeta.algorithms import common, inner_loop, matching, protonet
    scores = arr([[[2.0, 1.0, 0.0],      # true 0, strictly highest: right
                   [1.0, 1.0, 0.0],      # true 0, tied with class 1: wrong
                   [0.0, 0.0, 0.0],      # all equal: wrong
                   [0.0, 3.0, 3.0]]])    # true 2, tied with class 1: wrong
    labels = arr([[0, 0, 1, 2]], np.int64)
    assert host(common.accuracy(scores, labels)).tolist() == [0.25]
    # ProtoNets, Matching Nets and the MAML family score with this one function
    assert protonet.accuracy is common.accuracy and protonet.one_hot is common.one_hot
    assert matching.one_hot is common.one_hot

    def zero_head(p, x):                                     # (T, n, 1, 8, 8) -> (T, n, 3) zeros
        return x.sum(axis=(-1, -2, -3)).reshape(x.shape[:2] + (1,)) * p["w"].reshape((-1, 1, 3))
    theta = OrderedDict(w=sm.tensor(arr(np.zeros(3)), requires_grad=True))
    out = inner_loop.evaluate_adapted(zero_head, theta, image_batch(), 0.0, 0, "cross_entropy")
    assert host(out["accuracy"]).tolist() == [0.0, 0.0]     # a zero head ties everywhere


def test_pretrained_baseline_is_scored_by_train_evaluate(monkeypatch):
    from scratchmeta import train
    seen = []
    real = train.evaluate

    def spy(learner, theta, sampler, **kw):
        seen.append(type(learner).__name__)
        return real(learner, theta, sampler, **kw)
    monkeypatch.setattr(train, "evaluate", spy)
    model = nn.MLP((1, 8, 1))
    out = P.baseline_report(model, model.init(0), Sinusoid(seed=2), n_tasks=12, batch_size=12,
                            alpha=0.01, steps=2)
    assert seen == ["FineTuned"] and out["tasks"] == 12
    values = P.finetune_evaluate(model, model.init(0), Sinusoid(seed=2).sample(12), 0.01, 2)["mse"]
    mean, ci = train.mean_ci95(host(values))
    assert out["mean"] == pytest.approx(mean) and out["ci95"] == pytest.approx(ci)


def test_every_recipe_builds_its_learner():
    from scratchmeta import recipes
    for (algorithm, task) in recipes.RECIPES:
        if algorithm == "toy":
            continue
        config = build_config(algorithm, task)
        assert config["algorithm"] == algorithm and config["task"]["name"] == task
        assert make_learner(config).name == algorithm
    # the values the papers give, read back from the table
    assert build_config("maml", "sinusoid")["algo"]["inner_lr"] == 0.01
    assert build_config("fomaml", "glyphs")["algo"]["first_order"] is True
    assert build_config("reptile", "sinusoid")["optimizer"] == {"name": "sgd", "lr": 1.0}
    with pytest.raises(ValueError, match="no recipe for algorithm"):
        recipes.recipe("sgd", "sinusoid")


def test_algorithm_modules_are_short_and_import_without_a_circle():
    """Each algorithm module at most 300 lines; their imports inside the package form no circle."""
    import ast
    import os
    import scratchmeta
    root = os.path.dirname(scratchmeta.__file__)
    folder = os.path.join(root, "algorithms")
    graph = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".py"):
            continue
        text = open(os.path.join(folder, name)).read()
        assert text.count("\n") <= 300, f"algorithms/{name} has {text.count(chr(10))} lines"
        targets = set()
        for node in ast.parse(text).body:               # module-level imports only
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    targets.add(node.module.split(".")[0])
                else:
                    targets.update(a.name for a in node.names)
        graph[name[:-3]] = targets & {n[:-3] for n in os.listdir(folder)}

    def reaches(start, goal, seen=()):
        return any(t == goal or (t not in seen and reaches(t, goal, seen + (t,)))
                   for t in graph.get(start, ()))
    circles = [m for m in graph if reaches(m, m)]
    assert not circles, f"import circle through {circles}: {graph}"


# -- your own model (docs/your_model.md) -------------------------------------------------------
def _scalar_theta():
    return OrderedDict((k, sm.tensor(v, requires_grad=True)) for k, v in
                       (("a", 1.5), ("w", 0.8), ("b", 0.1)))


def test_a_model_that_breaks_the_task_axis_is_refused_before_any_work(monkeypatch):
    """Issue 15: 0-d parameters broadcast into (4, 5, 4) predictions against (4, 5, 1) targets."""
    def scalar_model(p, x):
        return p["a"] * (x * p["w"] + p["b"]).tanh()
    batch = Sinusoid(k_support=5, k_query=5, seed=0).sample(4)
    from scratchmeta.algorithms import inner_loop
    differentiated = []
    for module in (M, inner_loop):                           # the outer and the inner sm.grad
        real = module.grad
        monkeypatch.setattr(module, "grad",
                            lambda *a, real=real, **kw: differentiated.append(1) or real(*a, **kw))
    for call in (lambda: M.meta_gradient(scalar_model, _scalar_theta(), batch, 0.01),
                 lambda: M.meta_gradient_split(scalar_model, _scalar_theta(), batch, 0.01),
                 lambda: M.MAML(scalar_model).meta_step(_scalar_theta(), batch)):
        with pytest.raises(ValueError) as error:
            call()
        message = str(error.value)
        assert "(4, 5, 4)" in message and "(4, 5, 1)" in message
        assert "'a', 'w', 'b'" in message and "a () -> (4,)" in message
    assert differentiated == []                              # refused before any gradient


def test_a_model_that_mixes_tasks_with_the_right_shape_is_refused():
    """Right shape, wrong content: task 1's output reads task 0's parameter."""
    def leaky(p, x):
        w = p["w"].reshape(p["w"].shape + (1, 1))
        return x * w + (p["w"].sum() if p["w"].ndim else p["w"]) * 0.1
    theta = OrderedDict(w=sm.tensor(0.5, requires_grad=True))
    with pytest.raises(ValueError, match="right shape .* 'w' mix the tasks"):
        M.meta_gradient(leaky, theta, Sinusoid(k_support=3, k_query=3, seed=1).sample(3), 0.1)


@pytest.mark.parametrize("steps", [1, 2])
def test_a_model_written_to_the_contract_gives_the_loop_meta_gradient(steps):
    def model(p, x):
        a, w, b = (p[k].reshape(p[k].shape + (1, 1)) for k in ("a", "w", "b"))
        return a * (x * w + b).tanh()
    theta = _scalar_theta()
    batch = Sinusoid(k_support=5, k_query=5, seed=0).sample(4)
    batched = M.meta_gradient(model, theta, batch, 0.01, steps)
    loop = M.meta_gradient_loop(model, theta, batch, 0.01, steps)
    np.testing.assert_allclose(flat(batched), flat(loop), rtol=1e-12, atol=1e-14)


def test_your_model_page_runs():
    """Every python block of docs/your_model.md, in order, in one namespace (asserts inside)."""
    import os
    import re
    page = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "your_model.md")
    with open(page) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert len(blocks) >= 6
    namespace = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/your_model.md block {i + 1}", "exec"), namespace)
    assert "'a', 'w', 'b'" in namespace["message"]


def test_pretrained_baseline_training_shows_a_progress_bar_only_when_asked(capsys):
    """scratchmeta eval trains the pretrained baseline (minutes): a bar says so on a
    terminal (progress=None follows tqdm's rule) or when asked, never otherwise."""
    from scratchmeta.algorithms.pretrained import pretrain
    from scratchmeta.tasks.regression import Sinusoid
    model = nn.build_model({"model": "mlp", "sizes": [1, 8, 1]})
    pretrain(model, Sinusoid(k_support=5, k_query=5, seed=0), 3, progress=True)
    assert "pretrained baseline" in capsys.readouterr().err
    pretrain(model, Sinusoid(k_support=5, k_query=5, seed=0), 3, progress=False)
    pretrain(model, Sinusoid(k_support=5, k_query=5, seed=0), 3)     # stderr is not a terminal here
    assert "pretrained baseline" not in capsys.readouterr().err
