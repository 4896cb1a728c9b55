"""Prototypical Networks: closed forms, the hand-derived gradient, the learner.

Snell, Swersky & Zemel 2017, arXiv:1703.05175v2, Eqs. 1-2 and Sec. 2.4.
docs/protonet.md derives every number asserted in test_worked_example.
Everything float64.
"""
import math

import numpy as np
import pytest

from helpers import load_example

import scratchmeta as sm
from scratchmeta.train import build_config
from scratchmeta import backend, nn
from scratchmeta.algorithms import make_learner
from scratchmeta.algorithms import protonet as P
from scratchmeta.optim import Adam


def arr(x, dtype=None):
    return backend.asarray(np.asarray(x), dtype=dtype)


def host(t):
    return backend.to_numpy(t.data if isinstance(t, sm.Tensor) else t)


def episode(T=2, n_way=3, k_shot=2, n_query=4, d=5, seed=0, shuffle=True):
    """Random embeddings with labels (support classes shuffled within each episode)."""
    rng = np.random.default_rng(seed)
    y_s = np.stack([rng.permutation(np.repeat(np.arange(n_way), k_shot)) if shuffle
                    else np.repeat(np.arange(n_way), k_shot) for _ in range(T)])
    y_q = rng.integers(0, n_way, size=(T, n_query))
    z_s = rng.standard_normal((T, n_way * k_shot, d))
    z_q = rng.standard_normal((T, n_query, d))
    return z_s, y_s, z_q, y_q


def image_batch(T=2, n_way=3, k_shot=2, n_query=2, size=16, seed=0):
    rng = np.random.default_rng(seed)
    sy = np.repeat(np.arange(n_way), k_shot)[None].repeat(T, 0)
    qy = np.repeat(np.arange(n_way), n_query)[None].repeat(T, 0)
    return {"support_x": arr(rng.random((T, n_way * k_shot, 1, size, size))),
            "support_y": arr(sy, np.int64),
            "query_x": arr(rng.random((T, n_way * n_query, 1, size, size))),
            "query_y": arr(qy, np.int64),
            "classes": arr(np.tile(np.arange(n_way), (T, 1)), np.int64)}


def tiny_learner(**kw):
    return P.ProtoNet(nn.Conv4(in_channels=1, hidden=3, image_size=16, blocks=2), **kw)


# -- Eq. 1 ------------------------------------------------------------------------------
def test_prototypes_are_class_means():
    z_s, y_s, _, _ = episode(T=3, n_way=4, k_shot=3)
    c = host(P.prototypes(arr(z_s), arr(y_s), 4))
    assert c.shape == (3, 4, 5)
    for t in range(3):
        for k in range(4):
            np.testing.assert_allclose(c[t, k], z_s[t][y_s[t] == k].mean(axis=0), atol=1e-14)


def test_one_shot_prototypes_are_the_support_embeddings():
    z_s, y_s, _, _ = episode(T=2, n_way=5, k_shot=1)
    c = host(P.prototypes(arr(z_s), arr(y_s), 5))
    for t in range(2):
        np.testing.assert_array_equal(c[t, y_s[t]], z_s[t])    # c_{y_i} = z_i exactly


def test_unbatched_and_batched_agree():
    z_s, y_s, z_q, y_q = episode(T=2)
    both = host(P.episode_loss(arr(z_s), arr(y_s), arr(z_q), arr(y_q), 3))
    one = [P.episode_loss(arr(z_s[t]), arr(y_s[t]), arr(z_q[t]), arr(y_q[t]), 3).item()
           for t in range(2)]
    np.testing.assert_allclose(both, one, atol=1e-14)


# -- the 5-way 1-shot exercise of docs/protonet.md ------------------------------------------
def test_worked_example():
    """Prototypes, distances, probabilities, loss and gradient computed by hand."""
    z_s = arr([[0., 0.], [2., 0.], [0., 2.], [-2., 0.], [0., -2.]])
    y_s = arr([0, 1, 2, 3, 4], np.int64)
    z_q = arr([[2., 1.], [-1., -2.]])
    y_q = arr([1, 3], np.int64)
    c = P.prototypes(z_s, y_s, 5)
    np.testing.assert_array_equal(host(c), host(z_s))              # one shot: c_k = z_k
    d = host(P.distances(z_q, c))
    np.testing.assert_allclose(d, [[5, 1, 5, 17, 13], [5, 13, 17, 5, 1]], atol=1e-12)
    s = 1 + 2 * math.exp(-4) + math.exp(-12) + math.exp(-16)      # = 1.036637...
    p = np.exp(host(P.log_probs(z_q, c)))
    e = [math.exp(-4), 1, math.exp(-4), math.exp(-16), math.exp(-12)]
    np.testing.assert_allclose(p[0], np.array(e) / s, rtol=1e-12)
    np.testing.assert_allclose(p[1], np.array(e)[[0, 4, 3, 2, 1]] / s, rtol=1e-12)
    assert abs(p[0, 1] - 0.964657) < 1e-6 and abs(p[1, 3] - 0.017668) < 1e-6
    loss = P.nll(P.log_probs(z_q, c), y_q).item()
    assert abs(loss - (2 + math.log(s))) < 1e-12                   # = 2.035982...
    assert abs(loss - 2.035982) < 1e-6
    assert P.accuracy(P.log_probs(z_q, c), y_q).item() == 0.5     # query 2 goes to class 4
    # dJ/dz_q = 2/M (sum_k p_qk c_k - c_{y_q}), M = 2
    _, g_q, g_s = P.protonet_loss_grad_closed_form(z_s, y_s, z_q, y_q, 5)
    cs = host(z_s)
    np.testing.assert_allclose(host(g_q), [p[0] @ cs - cs[1], p[1] @ cs - cs[3]], atol=1e-12)
    np.testing.assert_allclose(host(g_q), [[-0.070686, 0.035325], [1.964675, -1.929315]],
                               atol=1e-6)
    # dJ/dc_3 = 2/M sum_q (p_q3 - y_q3)(z_q - c_3) ~ (p_23 - 1)(z_2 - c_3) = -0.982332 (1, -2)
    np.testing.assert_allclose(host(g_s)[3], [-0.982331, 1.964663], atol=1e-6)


# -- the gradient by hand, by the engine and by finite differences ----------------------------
@pytest.mark.parametrize("distance", P.DISTANCES)
@pytest.mark.parametrize("n_way", [2, 5])
@pytest.mark.parametrize("k_shot", [1, 3])
def test_closed_form_gradient(distance, n_way, k_shot):
    z_s, y_s, z_q, y_q = episode(T=2, n_way=n_way, k_shot=k_shot, n_query=4, d=3,
                                 seed=10 * n_way + k_shot)
    zs, zq = sm.tensor(z_s, requires_grad=True), sm.tensor(z_q, requires_grad=True)
    ys, yq = arr(y_s, np.int64), arr(y_q, np.int64)
    loss = P.episode_loss(zs, ys, zq, yq, n_way, distance)
    # weights per episode, so a wrong per-episode scale cannot hide in a plain sum
    w = arr([0.7, -1.3])
    engine_s, engine_q = sm.grad((loss * w).sum(), [zs, zq])
    hand_loss, hand_q, hand_s = P.protonet_loss_grad_closed_form(zs, ys, zq, yq, n_way, distance)
    np.testing.assert_allclose(host(hand_loss), host(loss), atol=1e-14)
    wq = host(w)[:, None, None]
    np.testing.assert_allclose(wq * host(hand_q), host(engine_q), atol=1e-12)
    np.testing.assert_allclose(wq * host(hand_s), host(engine_s), atol=1e-12)

    # finite differences of the fused op, whose backward IS the closed form
    def fused(a, b):
        return P.protonet_loss(a, b, y_support=ys, y_query=yq, n_way=n_way, distance=distance)

    np.testing.assert_allclose(host(fused(zs, zq)), host(loss), atol=1e-14)
    assert sm.gradcheck(fused, [z_s, z_q], atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("distance", P.DISTANCES)
def test_fused_op_second_order(distance):
    """The closed-form VJP is built of Tensor ops, so it differentiates again."""
    z_s, y_s, z_q, y_q = episode(T=2, n_way=3, k_shot=2, n_query=3, d=3, seed=3)

    def fused(a, b):
        return P.protonet_loss(a, b, y_support=arr(y_s), y_query=arr(y_q), n_way=3,
                               distance=distance)

    assert sm.check_grads(fused, [z_s, z_q], order=2, atol=1e-6, rtol=1e-5)


def test_closed_form_euclidean_query_gradient_is_expected_minus_true_prototype():
    z_s, y_s, z_q, y_q = episode(T=1, n_way=4, k_shot=2, n_query=6, d=3, seed=5)
    c = P.prototypes(arr(z_s), arr(y_s), 4)
    p = np.exp(host(P.log_probs(arr(z_q), c)))[0]
    _, g_q, _ = P.protonet_loss_grad_closed_form(arr(z_s), arr(y_s), arr(z_q), arr(y_q), 4)
    expected = 2 / 6 * (p @ host(c)[0] - host(c)[0][y_q[0]])
    np.testing.assert_allclose(host(g_q)[0], expected, atol=1e-14)


# -- Sec. 2.4: a linear classifier ---------------------------------------------------------------
def test_linear_classifier_equivalence():
    z_s, y_s, z_q, _ = episode(T=3, n_way=5, k_shot=3, n_query=7, d=4, seed=2)
    c = P.prototypes(arr(z_s), arr(y_s), 5)
    w, b = P.as_linear_classifier(c)
    np.testing.assert_array_equal(host(w), 2 * host(c))
    np.testing.assert_allclose(host(b), -(host(c) ** 2).sum(-1), atol=1e-14)
    linear = host(sm.F.linear(arr(z_q), w, b))                     # z W^T + b, (T, M, N)
    proto = -host(P.sq_dist(arr(z_q), c))
    # the logits differ by -||z||^2, the same for every class ...
    norms = np.broadcast_to(-(z_q ** 2).sum(-1, keepdims=True), proto.shape)
    np.testing.assert_allclose(proto - linear, norms, atol=1e-12)
    # ... so the probabilities and the predictions are the same
    np.testing.assert_allclose(host(sm.F.log_softmax(sm.tensor(linear), axis=-1)),
                               host(P.log_probs(arr(z_q), c)), atol=1e-12)
    np.testing.assert_array_equal(linear.argmax(-1), proto.argmax(-1))


# -- invariances ----------------------------------------------------------------------------------
def test_permuting_the_support_set_does_not_change_predictions():
    learner = tiny_learner()
    theta = learner.init(0)
    batch = image_batch(T=2, n_way=3, k_shot=3, n_query=2)
    perm = np.random.default_rng(1).permutation(9)
    shuffled = dict(batch, support_x=batch["support_x"][:, perm],
                    support_y=batch["support_y"][:, perm])
    with sm.no_grad():
        a = learner.log_probs(*_embedded(learner, theta, batch), 3)
        b = learner.log_probs(*_embedded(learner, theta, shuffled), 3)
    np.testing.assert_allclose(host(a), host(b), atol=1e-12)
    ra, rb = learner.evaluate(theta, batch), learner.evaluate(theta, shuffled)
    for key in ("accuracy", "loss", "baseline/pixels"):
        np.testing.assert_allclose(host(ra[key]), host(rb[key]), atol=1e-12)


def _embedded(learner, theta, batch):
    z_s, z_q = learner.embed(theta, batch)
    return z_s, batch["support_y"], z_q


def test_batch_norm_statistics_are_per_episode():
    """An episode embeds the same alone as inside a meta-batch."""
    learner = tiny_learner()
    theta = learner.init(0)
    batch = image_batch(T=3)
    with sm.no_grad():
        z_s, z_q = learner.embed(theta, batch)
        alone = {k: v[1:2] for k, v in batch.items()}
        z_s1, z_q1 = learner.embed(theta, alone)
    np.testing.assert_allclose(host(z_s)[1:2], host(z_s1), atol=1e-12)
    np.testing.assert_allclose(host(z_q)[1:2], host(z_q1), atol=1e-12)


# -- the learner --------------------------------------------------------------------------------
def test_meta_step_gradient_matches_finite_differences_and_fused_op():
    learner = tiny_learner()
    theta = learner.init(0)
    batch = image_batch(T=2)
    loss, grads, metrics = learner.meta_step(theta, batch)
    assert set(grads) == set(theta) and 0 <= metrics["accuracy"].item() <= 1
    fused = tiny_learner(fused_loss=True)
    loss_f, grads_f, _ = fused.meta_step(theta, batch)
    assert abs(loss.item() - loss_f.item()) < 1e-13
    for k in theta:
        np.testing.assert_allclose(host(grads_f[k]), host(grads[k]), atol=1e-12)
    # directional finite differences of the whole meta-objective
    rng = np.random.default_rng(0)
    names = list(theta)
    u = {k: rng.standard_normal(theta[k].shape) for k in names}
    eps = 1e-6

    def value(sign):
        shifted = {k: sm.tensor(host(theta[k]) + sign * eps * u[k], requires_grad=True)
                   for k in names}
        return learner.meta_step(shifted, batch)[0].item()

    numeric = (value(1) - value(-1)) / (2 * eps)
    analytic = sum(float((host(grads[k]) * u[k]).sum()) for k in names)
    assert abs(numeric - analytic) < 1e-6 * max(1.0, abs(numeric))


def test_evaluate_keys_shapes_and_baselines():
    learner = tiny_learner()
    theta = learner.init(0)
    out = learner.evaluate(theta, image_batch(T=4, n_way=4))
    assert set(out) == {"accuracy", "loss", "baseline/chance", "baseline/pixels"}
    for v in out.values():
        assert v.shape == (4,)
    np.testing.assert_allclose(host(out["baseline/chance"]), 0.25)
    acc = host(out["accuracy"])
    assert ((acc >= 0) & (acc <= 1)).all()
    assert "baseline/pixels" not in learner.evaluate(theta, image_batch(T=2), baselines=False)


def test_evaluate_in_chunks_equals_one_pass():
    learner = tiny_learner()
    theta = learner.init(0)
    batch = image_batch(T=5)
    whole = learner.evaluate(theta, batch)
    learner.max_images = 12          # 12 images an episode: one episode a pass
    parts = learner.evaluate(theta, batch)
    for k in whole:
        np.testing.assert_allclose(host(parts[k]), host(whole[k]), atol=1e-12)


def test_pixel_prototypes_separate_clusters():
    """On images that are noisy copies of one template per class, pixels already suffice."""
    rng = np.random.default_rng(0)
    templates = rng.random((3, 1, 16, 16))
    sy, qy = np.repeat(np.arange(3), 2), np.repeat(np.arange(3), 4)
    batch = {"support_x": arr(templates[sy][None] + 0.05 * rng.standard_normal((1, 6, 1, 16, 16))),
             "support_y": arr(sy[None], np.int64),
             "query_x": arr(templates[qy][None] + 0.05 * rng.standard_normal((1, 12, 1, 16, 16))),
             "query_y": arr(qy[None], np.int64)}
    out = tiny_learner().evaluate(tiny_learner().init(0), batch)
    assert host(out["baseline/pixels"])[0] == 1.0


def test_training_lowers_the_loss_and_train_ways_differ_from_test_ways():
    """A few Adam steps on 4-way episodes, then evaluation on 3-way ones (N is per batch)."""
    rng = np.random.default_rng(0)
    templates = rng.random((6, 1, 16, 16))

    def batch(T, n_way, seed):
        r = np.random.default_rng(seed)
        classes = np.stack([r.permutation(6)[:n_way] for _ in range(T)])
        sy = np.repeat(np.arange(n_way), 1)[None].repeat(T, 0)
        qy = np.repeat(np.arange(n_way), 3)[None].repeat(T, 0)
        sx = templates[np.take_along_axis(classes, sy, 1)] + 0.3 * r.standard_normal(sy.shape + (1, 16, 16))
        qx = templates[np.take_along_axis(classes, qy, 1)] + 0.3 * r.standard_normal(qy.shape + (1, 16, 16))
        return {"support_x": arr(sx), "support_y": arr(sy, np.int64), "query_x": arr(qx),
                "query_y": arr(qy, np.int64), "classes": arr(classes, np.int64)}

    learner = tiny_learner(train_ways=4)
    theta, opt = learner.init(0), Adam(lr=0.01)
    first = learner.meta_step(theta, batch(2, 4, 0))[0].item()
    for step in range(15):
        _, grads, _ = learner.meta_step(theta, batch(2, 4, step))
        theta = opt.step(theta, grads)
    last = learner.meta_step(theta, batch(2, 4, 0))[0].item()
    assert last < 0.8 * first
    out = learner.evaluate(theta, batch(3, 3, 99))
    assert out["accuracy"].shape == (3,) and host(out["baseline/chance"])[0] == pytest.approx(1 / 3)


# -- configuration and errors ---------------------------------------------------------------------
def test_registry_and_default_configs():
    for task in ("glyphs", "digits", "omniglot"):
        config = build_config("protonet", task)
        assert config["task"]["n_way"] == 5 and config["model"]["hidden"] == 64
        learner = make_learner(config)
        assert isinstance(learner, P.ProtoNet) and learner.metric == "accuracy"
    assert build_config("protonet", "omniglot")["algo"]["train_ways"] == 60       # Snell et al.
    learner = make_learner(dict(build_config("protonet", "glyphs"), algo={"distance": "cosine"}))
    assert learner.distance == "cosine" and learner.config()["algo"]["distance"] == "cosine"


def test_errors_name_what_is_wrong():
    z_s, y_s, z_q, y_q = episode(T=1, n_way=3, k_shot=2)
    with pytest.raises(ValueError, match="labels must lie in"):
        P.prototypes(arr(z_s), arr(y_s), 2)
    with pytest.raises(ValueError, match="no support example"):
        P.prototypes(arr(z_s), arr(np.zeros_like(y_s)), 3)
    with pytest.raises(ValueError, match="integer class indices"):
        P.prototypes(arr(z_s), arr(y_s.astype(float)), 3)
    with pytest.raises(ValueError, match="does not label"):
        P.prototypes(arr(z_s), arr(y_s[:, :4]), 3)
    with pytest.raises(ValueError, match="unknown distance"):
        P.distances(arr(z_q), arr(z_s), "manhattan")
    with pytest.raises(ValueError, match="unknown distance"):
        P.ProtoNet(nn.Conv4(image_size=16, blocks=2), distance="l1")
    with pytest.raises(ValueError, match="train_ways"):
        P.ProtoNet(nn.Conv4(image_size=16, blocks=2), train_ways=1)
    with pytest.raises(ValueError, match="unknown algo keys"):
        P.make_learner({"model": {"model": "conv4"}, "algo": {"inner_lr": 0.1}})
    with pytest.raises(ValueError, match="no default config for task"):
        build_config("protonet", "sinusoid")
    learner = tiny_learner()
    theta = learner.init(0)
    batch = image_batch()
    with pytest.raises(ValueError, match="lacks"):
        learner.meta_step(theta, {k: v for k, v in batch.items() if k != "query_y"})
    with pytest.raises(ValueError, match="tasks and points must match"):
        learner.meta_step(theta, dict(batch, support_y=batch["support_y"][:, :3]))
    with pytest.raises(ValueError, match="expected support_x"):
        learner.meta_step(theta, dict(batch, support_y=batch["support_y"][..., None]))
    with pytest.raises(ValueError, match="unknown options"):
        learner.evaluate(theta, batch, inner_steps=3)


# -- the examples, with tiny settings ---------------------------------------------------------------
_example = load_example


def test_example_03_smoke(capsys):
    pytest.importorskip("matplotlib")
    pytest.importorskip("PIL")
    results = _example("03_protonet_glyphs.py").main(shots=(1,), hidden=4, steps=2, n_test=4,
                                                     dtype="float64")
    assert results[1]["accuracy"]["tasks"] == 4
    out = capsys.readouterr().out
    assert "agrees on 100% of queries" in out and "raw pixels" in out


def test_example_06_smoke(capsys):
    pytest.importorskip("matplotlib")
    pytest.importorskip("PIL")
    module = _example("06_fewshot_table.py")
    rows = module.main(shots=(1,), hidden=4, scale=0.01, n_test=4, dtype="float64")
    assert [r["algorithm"] for r in rows] == list(module.ALGORITHMS)
    assert all(r["episodes"] == 4 and 0 <= r["accuracy"] <= 1 for r in rows)
    assert "| protonet |" in capsys.readouterr().out


# -- no implicit host conversion (what CuPy refuses) ------------------------------------------------
@pytest.mark.parametrize("algorithm", ["protonet", "matching"])
def test_learner_runs_under_the_strict_namespace_as_under_numpy(algorithm):
    from strict_xp import namespace as strict
    from scratchmeta.algorithms import matching as MN

    def run():
        model = nn.Conv4(in_channels=1, hidden=3, image_size=16, blocks=2)
        learner = (P.ProtoNet(model, fused_loss=True) if algorithm == "protonet"
                   else MN.MatchingNet(model))
        theta = learner.init(0)
        batch = {k: backend.asarray(backend.to_numpy(v)) for k, v in image_batch().items()}
        loss, grads, metrics = learner.meta_step(theta, batch)
        out = learner.evaluate(theta, batch)
        z_s, y_s, z_q, y_q = episode(T=2, n_way=3, k_shot=2)
        closed = P.protonet_loss_grad_closed_form(arr(z_s), arr(y_s), arr(z_q), arr(y_q), 3)
        return ([loss.numpy(), metrics["accuracy"].numpy()] + [g.numpy() for g in grads.values()]
                + [backend.to_numpy(v) for v in out.values()] + [t.numpy() for t in closed])

    expected = run()
    backend._use_namespace("strict", strict)
    got = run()
    for e, g in zip(expected, got):
        assert type(g) is np.ndarray
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("distance", P.DISTANCES)
def test_batched_meta_step_equals_the_per_episode_loop(distance):
    """Algorithm 1 one episode at a time (unbatched theta) == every episode in one call."""
    learner = tiny_learner(distance=distance)
    theta = learner.init(0)
    batch = image_batch(T=3)
    loss, grads, _ = learner.meta_step(theta, batch)
    loop_loss, loop_grads = P.meta_gradient_loop(learner, theta, batch)
    assert loss.item() == pytest.approx(loop_loss.item(), rel=1e-12)
    for k in theta:
        np.testing.assert_allclose(host(grads[k]), host(loop_grads[k]), rtol=1e-9, atol=1e-12)
