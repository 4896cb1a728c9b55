"""Matching Networks without full-context embeddings (Vinyals et al. 2016, arXiv:1606.04080v2).

Eq. 2 (attention = softmax over cosines), Eq. 1 (attention-weighted one-hot
labels), the loss -log y^[y], and the learner. Everything float64.
"""
import math

import numpy as np
import pytest

import scratchmeta as sm
from scratchmeta.train import build_config
from scratchmeta import nn
from scratchmeta.algorithms import make_learner
from scratchmeta.algorithms import matching as MN
from scratchmeta.algorithms import protonet as P

from test_protonet import arr, episode, host, image_batch


def tiny_learner():
    return MN.MatchingNet(nn.Conv4(in_channels=1, hidden=3, image_size=16, blocks=2))


def np_cosine(a, b):
    a = a / np.sqrt((a * a).sum(-1, keepdims=True) + 1e-8)
    b = b / np.sqrt((b * b).sum(-1, keepdims=True) + 1e-8)
    return a @ np.swapaxes(b, -1, -2)


def test_attention_is_a_softmax_over_cosines():
    z_s, _, z_q, _ = episode(T=2, n_way=3, k_shot=2, n_query=4, d=5)
    a = host(MN.attention(arr(z_q), arr(z_s)))
    cos = np_cosine(z_q, z_s)
    expected = np.exp(cos) / np.exp(cos).sum(-1, keepdims=True)            # Eq. 2
    np.testing.assert_allclose(a, expected, atol=1e-14)
    # cosines lie in [-1, 1], so no weight falls under exp(-2) / n: log y^ is safe
    assert a.min() >= math.exp(-2) / 6


def test_class_probabilities_sum_attention_per_class():
    z_s, y_s, z_q, _ = episode(T=2, n_way=3, k_shot=2, n_query=4, d=5)
    p = host(MN.class_probs(arr(z_s), arr(y_s), arr(z_q), 3))
    a = host(MN.attention(arr(z_q), arr(z_s)))
    for t in range(2):
        for k in range(3):                                                  # Eq. 1
            np.testing.assert_allclose(p[t, :, k], a[t][:, y_s[t] == k].sum(-1), atol=1e-14)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-14)


def test_worked_example():
    """2-way 1-shot, support (1, 0) and (0, 1): by hand, docs/matching.md."""
    z_s, y_s = arr([[1., 0.], [0., 1.]]), arr([0, 1], np.int64)
    z_q, y_q = arr([[3., 0.], [1., 1.]]), arr([0, 1], np.int64)
    p = host(MN.class_probs(z_s, y_s, z_q, 2))
    e = math.e
    # query 1: cosines (1, 0) -> p = (e, 1) / (e + 1); query 2: cosines equal -> (1/2, 1/2)
    np.testing.assert_allclose(p, [[e / (e + 1), 1 / (e + 1)], [0.5, 0.5]], atol=1e-8)
    loss = P.nll(MN.log_probs(z_s, y_s, z_q, 2), y_q).item()
    expected = (math.log(1 + 1 / e) + math.log(2)) / 2                      # (0.313262 + 0.693147) / 2
    assert abs(loss - expected) < 1e-8 and abs(loss - 0.503204) < 1e-6


def test_one_shot_matching_equals_cosine_protonet():
    """With K = 1 the prototypes are the support points: softmax(cos) is the same either way."""
    z_s, y_s, z_q, _ = episode(T=2, n_way=5, k_shot=1, n_query=6, d=4)
    mn = host(MN.log_probs(arr(z_s), arr(y_s), arr(z_q), 5))
    pn = host(P.log_probs(arr(z_q), P.prototypes(arr(z_s), arr(y_s), 5), "cosine"))
    np.testing.assert_allclose(mn, pn, atol=1e-12)


def test_invariances():
    z_s, y_s, z_q, _ = episode(T=2, n_way=3, k_shot=3, n_query=4, d=5)
    base = host(MN.class_probs(arr(z_s), arr(y_s), arr(z_q), 3))
    perm = np.random.default_rng(0).permutation(9)
    permuted = host(MN.class_probs(arr(z_s[:, perm]), arr(y_s[:, perm]), arr(z_q), 3))
    np.testing.assert_allclose(permuted, base, atol=1e-14)                  # support order
    scaled = host(MN.class_probs(arr(3 * z_s), arr(y_s), arr(0.5 * z_q), 3))
    np.testing.assert_allclose(scaled, base, atol=1e-9)                     # cosine: lengths


@pytest.mark.parametrize("k_shot", [1, 3])
def test_loss_gradient_against_finite_differences(k_shot):
    z_s, y_s, z_q, y_q = episode(T=2, n_way=3, k_shot=k_shot, n_query=3, d=3, seed=k_shot)

    def loss(a, b):
        return P.nll(MN.log_probs(a, arr(y_s), b, 3), arr(y_q))

    assert sm.check_grads(loss, [z_s, z_q], order=2, atol=1e-6, rtol=1e-5)


def test_learner_meta_step_and_evaluate():
    learner = tiny_learner()
    theta = learner.init(0)
    batch = image_batch(T=2, n_way=3, k_shot=2, n_query=2)
    loss, grads, metrics = learner.meta_step(theta, batch)
    z_s, z_q = learner.embed(theta, batch)
    direct = P.nll(MN.log_probs(z_s, batch["support_y"], z_q, 3), batch["query_y"]).mean()
    assert abs(loss.item() - direct.item()) < 1e-14
    # directional finite difference of the meta-objective
    rng = np.random.default_rng(0)
    u = {k: rng.standard_normal(v.shape) for k, v in theta.items()}
    eps = 1e-6

    def value(sign):
        shifted = {k: sm.tensor(host(v) + sign * eps * u[k]) for k, v in theta.items()}
        with sm.no_grad():
            z_s, z_q = learner.embed(shifted, batch)
            return P.nll(MN.log_probs(z_s, batch["support_y"], z_q, 3),
                         batch["query_y"]).mean().item()

    numeric = (value(1) - value(-1)) / (2 * eps)
    analytic = sum(float((host(grads[k]) * u[k]).sum()) for k in theta)
    assert abs(numeric - analytic) < 1e-6 * max(1.0, abs(numeric))
    out = learner.evaluate(theta, batch)
    assert set(out) == {"accuracy", "loss", "baseline/chance", "baseline/pixels"}
    assert all(v.shape == (2,) for v in out.values())
    assert 0 <= metrics["accuracy"].item() <= 1


def test_registry_defaults_and_errors():
    config = build_config("matching", "glyphs")
    assert config["algorithm"] == "matching" and "distance" not in config["algo"]
    learner = make_learner(config)
    assert isinstance(learner, MN.MatchingNet) and learner.name == "matching"
    assert learner.config()["algo"] == {"train_ways": None, "test_batch_norm": "transductive"}
    with pytest.raises(ValueError, match="unknown algo keys"):
        MN.make_learner(dict(config, algo={"distance": "euclidean"}))
    z_s, y_s, z_q, _ = episode(T=1, n_way=3, k_shot=2)
    with pytest.raises(ValueError, match="labels must lie in"):
        MN.class_probs(arr(z_s), arr(y_s + 1), arr(z_q), 3)
    with pytest.raises(ValueError, match="does not label"):
        MN.class_probs(arr(z_s), arr(y_s[:, :2]), arr(z_q), 3)


def test_batched_meta_step_equals_the_per_episode_loop():
    """Matching Nets reuse ProtoNet's per-episode loop with their own log_probs (Eq. 1-2)."""
    learner = tiny_learner()
    theta = learner.init(0)
    batch = image_batch(T=3)
    loss, grads, _ = learner.meta_step(theta, batch)
    loop_loss, loop_grads = P.meta_gradient_loop(learner, theta, batch)
    assert loss.item() == pytest.approx(loop_loss.item(), rel=1e-12)
    for k in theta:
        np.testing.assert_allclose(host(grads[k]), host(loop_grads[k]), rtol=1e-9, atol=1e-12)
