"""The reference code's behaviours (docs/recipes.md): MAML's loss scale and Omniglot
network, Reptile's schedule and inner Adam, ProtoNet's learning-rate halving."""
from collections import OrderedDict

import numpy as np
import pytest

import scratchmeta as sm
from scratchmeta import backend, nn, recipes
from scratchmeta.algorithms import maml as M
from scratchmeta.algorithms import reptile as R
from scratchmeta.algorithms.inner_loop import adapt, support_losses

from test_maml import arr, directional_check, host, image_batch


# -- MAML's inner loss scale ---------------------------------------------------------
def test_maml_inner_step_on_a_5_way_batch_is_the_references_sum_over_k():
    """One inner step of a linear softmax classifier, in closed form.

    cbfinn/maml: loss = sum_i CE_i / K over the N*K support points, so
    grad_W = (1/K) sum_i (p_i - y_i) x_i^T and grad_b = (1/K) sum_i (p_i - y_i).
    """
    n_way, k_shot, d, alpha = 5, 3, 4, 0.4
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, n_way * k_shot, d))
    labels = np.repeat(np.arange(n_way), k_shot)[None]
    model = nn.MLP((d, n_way))                                 # logits = W x + b
    theta = model.init(0)
    W, b = host(theta["w0"]), host(theta["b0"])
    logits = x[0] @ W.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    residual = p - np.eye(n_way)[labels[0]]                     # (N*K, N): p_i - y_i
    W_ref = W - alpha * residual.T @ x[0] / k_shot
    b_ref = b - alpha * residual.sum(0) / k_shot
    with sm.enable_grad():
        phi = adapt(model, theta, arr(x), arr(labels, np.int64), alpha, 1, first_order=True,
                    loss="cross_entropy", reduction="sum/k")
        phi_mean = adapt(model, theta, arr(x), arr(labels, np.int64), alpha, 1, first_order=True,
                         loss="cross_entropy")
    np.testing.assert_allclose(host(phi["w0"])[0], W_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(host(phi["b0"])[0], b_ref, rtol=1e-10, atol=1e-12)
    # the mean's step is N times smaller at the same alpha
    np.testing.assert_allclose(W - host(phi["w0"])[0], n_way * (W - host(phi_mean["w0"])[0]),
                               rtol=1e-10, atol=1e-12)


def test_sum_over_k_refuses_regression_and_unknown_reductions():
    pred = sm.tensor(np.zeros((1, 3, 1)))
    with pytest.raises(ValueError, match="sum/k"):
        support_losses(pred, pred, "mse", "sum/k")
    with pytest.raises(ValueError, match="unknown inner reduction"):
        support_losses(pred, pred, "mse", "sum")
    with pytest.raises(ValueError, match="inner_reduction"):
        M.MAML(nn.MLP((1, 4, 1)), inner_reduction="sum/k")        # mse loss


def test_maml_learner_uses_the_reduction_in_training_and_evaluation():
    model = nn.MLP((16, 3))
    batch = image_batch(T=2, n_way=3, k_shot=2, n_query=2, size=4)
    batch = {k: (v.reshape(v.shape[:2] + (16,)) if k.endswith("_x") else v) for k, v in batch.items()}
    theta = model.init(0)
    ref = M.MAML(model, inner_lr=0.1, loss="cross_entropy", inner_reduction="sum/k",
                 eval_inner_steps=1)
    scaled = M.MAML(model, inner_lr=0.3, loss="cross_entropy", eval_inner_steps=1)   # alpha * N
    for a, b in zip(ref.meta_step(theta, batch)[1].values(), scaled.meta_step(theta, batch)[1].values()):
        np.testing.assert_allclose(host(a), host(b), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(ref.evaluate(theta, batch)["loss"], scaled.evaluate(theta, batch)["loss"],
                               rtol=1e-10)
    assert ref.config()["inner_reduction"] == "sum/k"


# -- MAML's Omniglot network -----------------------------------------------------------
def test_maml_conv4_matches_torch_same_padding_no_scale_batch_norm():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as TF
    model = nn.MAMLConv4(hidden=6, n_classes=5, image_size=28)
    theta = model.init(1)
    x = np.random.default_rng(0).random((7, 1, 28, 28))
    out = host(model(theta, arr(x)))
    t = {k: torch.tensor(host(v)) for k, v in theta.items()}
    h = torch.tensor(x)
    for i in range(4):
        pad = (0, 1, 0, 1) if h.shape[-1] % 2 == 0 else (1, 1, 1, 1)   # TF 'SAME', stride 2
        h = TF.conv2d(TF.pad(h, pad), t[f"conv{i}.w"], t[f"conv{i}.b"], stride=2)
        h = TF.batch_norm(h, None, None, None, t[f"bn{i}.b"], training=True, eps=1e-3).relu()
    assert tuple(h.shape[-2:]) == (2, 2)
    ref = h.mean(dim=(2, 3)) @ t["head.w"].T + t["head.b"]
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-9, atol=1e-10)


def test_maml_conv4_initialisation_and_unadapted_batch_norm():
    model = nn.MAMLConv4(n_classes=5)
    theta = model.init(0)
    assert not any(k.startswith("bn") and k.endswith(".w") for k in theta)      # no gamma
    bound = np.sqrt(6 / (9 * 64 + 9 * 64))                                      # Xavier uniform
    w = host(theta["conv1.w"])
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert 0.8 < host(theta["head.w"]).std() < 1.2                              # N(0, 1) head
    assert all(not host(theta[k]).any() for k in theta if k.endswith(".b"))
    assert set(model.inner_names()) == {k for k in theta if not k.startswith("bn")}
    learner = M.MAML(model, inner_lr=0.4, loss="cross_entropy", inner_reduction="sum/k")
    assert learner.adapt_names == model.inner_names()
    with pytest.raises(ValueError, match="init"):
        nn.MAMLConv4(init="pytorch")


def test_maml_conv4_offsets_are_meta_learned_but_not_adapted():
    model = nn.MAMLConv4(hidden=3, n_classes=2, image_size=8)
    theta = model.init(0)
    batch = image_batch(T=2, n_way=2, k_shot=2, n_query=2, size=8)
    with sm.enable_grad():
        phi = adapt(model, theta, batch["support_x"], batch["support_y"], 0.5, 1,
                    loss="cross_entropy", names=model.inner_names())
    np.testing.assert_array_equal(host(phi["bn0.b"]), host(nn.batched(theta, 2)["bn0.b"]))  # not adapted
    assert not np.allclose(host(phi["conv0.w"])[0], host(theta["conv0.w"]))
    learner = M.MAML(model, inner_lr=0.5, loss="cross_entropy")
    _, grads, _ = learner.meta_step(theta, batch)
    assert np.abs(host(grads["bn0.b"])).max() > 0             # the outer loop trains them
    names = list(theta)

    def fn(*params):
        return M.meta_objective(model, OrderedDict(zip(names, params)), batch, 0.5, 1,
                                loss="cross_entropy", names=model.inner_names(), reduction="sum/k")
    assert directional_check(fn, theta, directions=2)          # second order, through the net


# -- the recipes ----------------------------------------------------------------------
def test_recipes_carry_the_reference_values():
    r = recipes.recipe("maml", "omniglot")
    assert r["algo"]["inner_reduction"] == "sum/k" and r["algo"]["inner_lr"] == 0.4
    assert r["model"]["model"] == "maml-conv4"
    assert recipes.recipe("maml", "sinusoid")["algo"]["inner_lr"] == 0.01     # kept (docs/results.md)
    assert recipes.recipe("matching", "omniglot")["algo"]["train_ways"] == 5
    assert recipes.recipe("protonet", "omniglot")["optimizer"]["halve_every"] == 2000
    rep = recipes.recipe("reptile", "omniglot")
    assert rep["optimizer"] == {"name": "sgd", "lr": 1.0, "final_lr": 0.0}
    assert rep["algo"]["inner_optimizer"] == "adam" and rep["algo"]["eval_inner_steps"] == 50


# -- schedules ------------------------------------------------------------------------
def test_reptile_meta_step_size_anneals_linearly_from_1_to_0():
    """supervised-reptile train.py: eps_i = (1 - i/N) * 1 + (i/N) * 0 at step i = 0..N-1."""
    from scratchmeta.optim import make_optimizer
    N = 8
    opt = make_optimizer({"name": "sgd", "lr": 1.0, "final_lr": 0.0}, total_steps=N)
    theta = OrderedDict(w=sm.tensor(np.zeros(1), requires_grad=True))
    one = {"w": sm.tensor(np.full(1, -1.0))}                 # grads = -1: theta grows by eps_t
    steps = []
    for i in range(N):
        before = float(host(theta["w"])[0])
        theta = opt.step(theta, one)
        steps.append(float(host(theta["w"])[0]) - before)
    np.testing.assert_allclose(steps, [1 - i / N for i in range(N)], rtol=1e-12)
    assert opt.config() == {"name": "sgd", "lr": 1.0, "final_lr": 0.0}
    with pytest.raises(ValueError, match="total_steps"):
        make_optimizer({"name": "sgd", "lr": 1.0, "final_lr": 0.0})


def test_protonet_adam_rate_halves_every_2000_episodes():
    from scratchmeta.optim import make_optimizer
    opt = make_optimizer({"name": "adam", "lr": 1e-3, "halve_every": 2000})
    assert [opt.lr_at(t) for t in (1, 2000, 2001, 4000, 4001, 6001)] == \
        [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 1.25e-4]
    # the first Adam step moves each weight by lr_at(t) (|mhat / sqrt(vhat)| = 1): check at t = 2001
    opt.optimizer.t = 2000
    theta = OrderedDict(w=sm.tensor(np.zeros(2), requires_grad=True))
    opt.optimizer.m, opt.optimizer.v = {}, {}
    new = opt.step(theta, {"w": sm.tensor(np.array([3.0, -2.0]))})
    b1, b2 = opt.optimizer.betas
    c1, c2 = 1 - b1 ** 2001, 1 - b2 ** 2001
    g = np.array([3.0, -2.0])
    expect = -5e-4 * (g * (1 - b1) / c1) / (np.sqrt(g * g * (1 - b2) / c2) + 1e-8)
    np.testing.assert_allclose(host(new["w"]), expect, rtol=1e-12)
    assert opt.optimizer.lr == 1e-3                          # the base rate is left as it was


# -- Reptile's inner Adam on minibatches ------------------------------------------------
def test_minibatches_cover_each_epoch_once_and_run_on():
    rng = np.random.default_rng(0)
    idx = backend.to_numpy(R.minibatch_indices(rng, 3, 10, 4, 5))     # 20 draws: two epochs
    assert idx.shape == (5, 3, 4)
    for t in range(3):
        stream = idx[:, t].reshape(-1)
        assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))


def test_reptile_inner_adam_matches_a_hand_written_loop():
    model = nn.MLP((2, 3))
    theta = model.init(0)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 6, 2))
    y = np.tile(np.arange(3).repeat(2), (2, 1))
    idx = R.minibatch_indices(np.random.default_rng(0), 2, 6, 4, 3)
    W = R.adapt_adam(model, theta, arr(x), arr(y, np.int64), 0.01, idx, "cross_entropy")
    for t in range(2):                                           # each task by hand, numpy
        w, b = host(theta["w0"]).copy(), host(theta["b0"]).copy()
        vw, vb = np.zeros_like(w), np.zeros_like(b)
        for j in range(3):
            xb, yb = x[t, idx[j, t]], y[t, idx[j, t]]
            z = xb @ w.T + b
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            r = (p - np.eye(3)[yb]) / len(yb)
            gw, gb = r.T @ xb, r.sum(0)
            vw, vb = 0.999 * vw + 0.001 * gw ** 2, 0.999 * vb + 0.001 * gb ** 2
            c = 1 - 0.999 ** (j + 1)
            w = w - 0.01 * gw / (np.sqrt(vw / c) + 1e-8)
            b = b - 0.01 * gb / (np.sqrt(vb / c) + 1e-8)
        np.testing.assert_allclose(host(W["w0"])[t], w, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(host(W["b0"])[t], b, rtol=1e-9, atol=1e-12)


def test_reptile_omniglot_recipe_trains_evaluates_and_resumes_its_rng():
    from scratchmeta.algorithms import make_learner
    from scratchmeta.train import build_config
    config = build_config("reptile", "omniglot", {"model": {"hidden": 4, "image_size": 8}})
    learner = make_learner(config)
    assert learner.inner_optimizer == "adam" and learner.eval_inner_steps == 50
    theta = learner.init(0)
    batch = image_batch(T=2, n_way=5, k_shot=10, n_query=1, size=8)   # train_shots 10
    state = learner.state_dict()
    _, d1, _ = learner.meta_step(theta, batch)
    learner.load_state_dict(state)
    _, d2, _ = learner.meta_step(theta, batch)
    for k in d1:
        np.testing.assert_array_equal(host(d1[k]), host(d2[k]))
    test = image_batch(T=3, n_way=5, k_shot=1, n_query=2, size=8, seed=1)
    out = learner.evaluate(theta, test, inner_steps=3)
    assert set(out) == {"accuracy", "loss", "accuracy_step0"} and out["accuracy"].shape == (3,)
    zero = learner.evaluate(theta, test, inner_steps=0)                  # no adaptation: theta's
    np.testing.assert_array_equal(zero["accuracy"], zero["accuracy_step0"])
    with pytest.raises(ValueError, match="inner_batch"):
        R.Reptile(nn.MLP((1, 2, 1)), inner_batch=4)              # minibatches need the Adam loop


# -- batch norm in eval mode at test time (ProtoNet, Matching Networks) -----------------------
def test_conv4_eval_forward_with_its_own_statistics_is_conv4():
    model = nn.Conv4(hidden=4, image_size=12, blocks=3)
    theta = model.init(0)
    x = arr(np.random.default_rng(0).normal(size=(6, 1, 12, 12)))
    z, stats = nn.conv4_features_eval(model, theta, sm.tensor(x))
    np.testing.assert_allclose(host(z), host(model(theta, x)), rtol=1e-9, atol=1e-10)
    z2, _ = nn.conv4_features_eval(model, theta, sm.tensor(x), stats)
    np.testing.assert_allclose(host(z2), host(z), rtol=1e-12, atol=1e-12)


def test_protonet_running_statistics_follow_pytorchs_batchnorm():
    torch = pytest.importorskip("torch")
    from scratchmeta.algorithms import protonet as P
    model = nn.Conv4(hidden=4, image_size=8, blocks=2)
    learner = P.ProtoNet(model, test_batch_norm="running")
    theta = learner.init(0)
    bn = torch.nn.BatchNorm2d(4).double()                       # momentum 0.1, eps 1e-5
    conv = torch.nn.Conv2d(1, 4, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(host(theta["conv0.w"])))
        conv.bias.copy_(torch.tensor(host(theta["conv0.b"])))
    for seed in range(3):
        batch = image_batch(T=1, n_way=3, k_shot=2, n_query=2, size=8, seed=seed)
        learner.meta_step(theta, batch)                         # theta fixed: only the statistics move
        x = torch.tensor(np.concatenate([host(batch["support_x"][0]), host(batch["query_x"][0])]))
        bn.train()
        bn(conv(x))
    mean, var = learner.running.stats[0]
    np.testing.assert_allclose(host(mean), bn.running_mean.numpy(), rtol=1e-10)
    np.testing.assert_allclose(host(var), bn.running_var.numpy(), rtol=1e-10)
    test = image_batch(T=2, n_way=3, k_shot=1, n_query=2, size=8, seed=5)
    acc = learner.evaluate(theta, test, baselines=False)["accuracy"]
    assert acc.shape == (2,)
    # a test episode is scored with the running statistics, not its own: the result
    # does not depend on which other images share its batch
    one = {k: v[:1] for k, v in test.items()}
    z_all = learner.test_embed(theta, test)[1]
    z_one = learner.test_embed(theta, one)[1]
    np.testing.assert_allclose(host(z_all)[0], host(z_one)[0], rtol=1e-12)
    restored = P.ProtoNet(model, test_batch_norm="running")
    restored.load_state_dict(learner.state_dict())
    np.testing.assert_allclose(host(restored.running.stats[1][1]), host(learner.running.stats[1][1]))
    with pytest.raises(ValueError, match="test_batch_norm"):
        P.ProtoNet(model, test_batch_norm="eval")


def test_metasgd_and_anil_on_maml_conv4_leave_batch_norm_to_the_outer_loop():
    from scratchmeta.algorithms import anil as A
    from scratchmeta.algorithms import metasgd as S
    model = nn.MAMLConv4(hidden=3, n_classes=2, image_size=8)
    batch = image_batch(T=2, n_way=2, k_shot=1, n_query=2, size=8)
    metasgd = S.MetaSGD(model, inner_lr=0.4, loss="cross_entropy", inner_reduction="sum/k")
    theta = metasgd.init(0)
    assert {k[len(S.PREFIX):] for k in theta if k.startswith(S.PREFIX)} == set(model.inner_names())
    for learner in (metasgd, A.ANIL(model, inner_lr=0.4, loss="cross_entropy")):
        params = learner.init(0)
        _, grads, _ = learner.meta_step(params, batch)
        assert set(grads) == set(params) and np.abs(host(grads["bn0.b"])).max() > 0
