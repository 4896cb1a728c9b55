"""Transductive inference (scratchmeta.transductive): soft k-means prototypes, one-to-one assignment,
evaluate_run(transductive=...) and `scratchmeta eval --transductive`."""
import itertools
import json

import numpy as np
import pytest

from scratchmeta import backend, cli, evaluation, train, transductive
from scratchmeta.algorithms import protonet
from scratchmeta.backend import to_numpy
from scratchmeta.tasks import registry
from helpers import assert_cli_refuses

TINY_MODEL = {"hidden": 8}                 # Conv4-8: the behaviour, not the accuracy


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two steps of protonet on omniglot-minimal: the run dir."""
    config = train.build_config("protonet", "omniglot-minimal",
                                {"steps": 2, "eval_every": 0, "model": TINY_MODEL,
                                 "algo": {"train_ways": 5}})
    out = str(tmp_path_factory.mktemp("protonet"))
    train.run(config, out, progress=False)
    return out


def _evaluate(run_dir, **kw):
    return evaluation.evaluate_run(run_dir, ways=5, shots=1, queries=2, n_tasks=6,
                                   batch_size=3, baselines=False, **kw)


def _arr(x):
    return backend.asarray(np.asarray(x, dtype=np.float64))


def _eq4_reference(zs, ys, zq, n, steps):
    """Ren et al. Eq. 4 written out one class and one query at a time (NumPy, squared Euclidean)."""
    c = np.stack([zs[ys == k].mean(0) for k in range(n)])
    for _ in range(steps):
        d = ((zq[:, None] - c[None]) ** 2).sum(-1)
        w = np.exp(-(d - d.min(1, keepdims=True)))
        w /= w.sum(1, keepdims=True)
        c = np.stack([(zs[ys == k].sum(0) + sum(w[j, k] * zq[j] for j in range(len(zq))))
                      / ((ys == k).sum() + w[:, k].sum()) for k in range(n)])
    return c


# -- soft k-means ----------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 3])
def test_soft_kmeans_is_eq4_of_ren_et_al(steps):
    rng = np.random.default_rng(0)
    zs, zq = rng.normal(size=(6, 3)), rng.normal(size=(5, 3))
    ys = np.array([0, 1, 2, 0, 1, 2])                               # 2 shots, 3 ways
    c = transductive.soft_kmeans_prototypes(_arr(zs[None]), ys[None], _arr(zq[None]), 3, steps)
    np.testing.assert_allclose(to_numpy(c.data)[0], _eq4_reference(zs, ys, zq, 3, steps),
                               rtol=1e-5, atol=1e-6)


def test_queries_of_zero_weight_leave_the_prototypes_of_eq1():
    """Each query sits on its own class's prototype, far from the others: its weight on every
    other class underflows to 0, and on its own class it adds the prototype itself."""
    zs = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    ys = np.array([0, 1, 2])
    zq = zs[[2, 0, 1, 1]]
    plain = to_numpy(protonet.prototypes(_arr(zs[None]), ys[None], 3).data)
    for steps in (1, 4):
        c = transductive.soft_kmeans_prototypes(_arr(zs[None]), ys[None], _arr(zq[None]), 3, steps)
        np.testing.assert_array_equal(to_numpy(c.data), plain)
    no_queries = transductive.soft_kmeans_prototypes(_arr(zs[None]), ys[None],
                                                     _arr(np.zeros((1, 0, 2))), 3, 2)
    np.testing.assert_array_equal(to_numpy(no_queries.data), plain)     # no mass: Eq. 1


def _misleading_episode():
    """2-way 1-shot, 3 queries a class on a line: class 0's support (at 0) is atypical, so its
    query at 5.2 is nearer class 1's support (at 10) and the plain prototypes misclassify it."""
    zs = np.array([[0.0, 0.0], [10.0, 0.0]])
    zq = np.array([[4.0, 0.0], [4.5, 0.0], [5.2, 0.0], [14.0, 0.0], [15.0, 0.0], [16.0, 0.0]])
    return zs, np.array([0, 1]), zq, np.array([0, 0, 0, 1, 1, 1])


class _Learner:
    name, distance = "protonet", "euclidean"


def _predict(method, zs, ys, zq, n, steps=None):
    t = transductive.Transduction(method, steps)
    logp, scores = t(_Learner(), _arr(zs[None]), ys[None], _arr(zq[None]), n)
    return to_numpy(scores.data)[0].argmax(-1), to_numpy(logp.data)[0]


def test_refinement_and_assignment_fix_a_misclassification():
    zs, ys, zq, yq = _misleading_episode()
    plain = to_numpy(protonet.log_probs(_arr(zq[None]), protonet.prototypes(_arr(zs[None]), ys[None], 2))
                     .data)[0].argmax(-1)
    np.testing.assert_array_equal(plain, [0, 0, 1, 1, 1, 1])       # the query at 5.2 goes wrong
    refined, _ = _predict("softkmeans", zs, ys, zq, 2)
    np.testing.assert_array_equal(refined, yq)
    assigned, logp = _predict("assignment", zs, ys, zq, 2)
    np.testing.assert_array_equal(assigned, yq)
    assert logp.argmax(-1)[2] == 1            # the assignment's loss: the plain prototypes'


# -- the one-to-one assignment -----------------------------------------------------------
def test_assignment_is_the_permutation_of_least_total_cost():
    rng = np.random.default_rng(1)
    cost = rng.random((20, 4, 4))
    chosen = transductive.balanced_assignment(cost)
    for t in range(20):
        assert sorted(chosen[t]) == [0, 1, 2, 3]                   # a permutation
        best = min(itertools.permutations(range(4)),
                   key=lambda p: sum(cost[t, j, p[j]] for j in range(4)))
        assert np.isclose(cost[t, range(4), chosen[t]].sum(), sum(cost[t, j, best[j]] for j in range(4)))


def test_balanced_assignment_uses_each_class_equally_often():
    cost = np.random.default_rng(2).random((7, 9, 3))               # 3 queries a class
    chosen = transductive.balanced_assignment(cost)
    assert chosen.shape == (7, 9)
    for row in chosen:
        assert np.bincount(row, minlength=3).tolist() == [3, 3, 3]
    with pytest.raises(ValueError, match="8 queries do not divide among 3 classes"):
        transductive.balanced_assignment(np.zeros((1, 8, 3)))


# -- bad values ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["kmeans", "", 1, True])
def test_an_unknown_method_is_a_value_error_naming_it(run, method):
    with pytest.raises(ValueError, match=rf"transductive must be one of .*got {method!r}"):
        transductive.check_method(method)
    with pytest.raises(ValueError, match="transductive must be one of"):
        _evaluate(run, transductive=method)


@pytest.mark.parametrize("steps", [0, -1, 2.5, "3", True])
def test_bad_refinement_steps_are_a_value_error_naming_them(run, steps):
    with pytest.raises(ValueError, match=rf"refine_steps must be an integer >= 1 .*got {steps!r}"):
        transductive.check_steps(steps)
    with pytest.raises(ValueError, match="refine_steps must be an integer >= 1"):
        _evaluate(run, transductive="softkmeans", refine_steps=steps)


def test_refinement_steps_without_soft_kmeans_are_refused(run):
    with pytest.raises(ValueError, match="refine_steps applies to transductive='softkmeans' only"):
        _evaluate(run, transductive="assignment", refine_steps=2)
    with pytest.raises(ValueError, match="refine_steps=2 needs transductive='softkmeans'"):
        _evaluate(run, refine_steps=2)


def test_a_learner_without_prototypes_is_refused(tmp_path):
    config = train.build_config("matching", "omniglot-minimal",
                                {"steps": 1, "eval_every": 0, "model": TINY_MODEL,
                                 "algo": {"train_ways": 5}})
    train.run(config, str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="transductive='softkmeans': matching has no prototypes"):
        _evaluate(str(tmp_path), transductive="softkmeans")


# -- evaluate_run and the command line -------------------------------------------------------
def test_off_is_the_plain_evaluation_exactly(run):
    plain = _evaluate(run)
    off = _evaluate(run, transductive=None)
    assert (off["mean"], off["ci95"]) == (plain["mean"], plain["ci95"])
    assert "transductive" not in off


@pytest.mark.parametrize("method, steps", [("softkmeans", 2), ("assignment", None)])
def test_evaluate_run_scores_the_episodes_it_would_score_plainly(run, method, steps):
    """The same held-out episodes, classified by the method on the learner's embeddings."""
    report = _evaluate(run, transductive=method, refine_steps=steps)
    assert report["transductive"]["method"] == method
    config, learner, theta, _ = train.load_run(run)
    config["task"].update(n_way=5, k_shot=1, n_query=2)
    sampler, right = registry.make_sampler(config, "test"), []
    for _ in range(2):
        batch = sampler.sample(3)
        zs, zq = learner.test_embed(theta, batch)
        _, scores = transductive.Transduction(method, steps)(learner, zs, batch["support_y"], zq, 5)
        right.append(to_numpy(scores.data).argmax(-1) == to_numpy(batch["query_y"]))
    assert np.isclose(report["mean"], np.concatenate(right).mean(), atol=1e-6)


def test_cli_transductive_flags(run, capsys):
    common = ["eval", run, "--ways", "5", "--shots", "1", "--tasks", "4", "--no-baselines"]
    assert cli.main(common + ["--transductive", "softkmeans", "--refine-steps", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["transductive"] == {"method": "softkmeans", "refine_steps": 3}
    assert cli.main(common + ["--transductive", "assignment"]) == 0
    assert "queries assigned to the classes one-to-one" in capsys.readouterr().out
    needs_softkmeans = "--refine-steps needs --transductive softkmeans"
    refusals = [(["--transductive", "kmeans"], "invalid choice: 'kmeans'"),
                (["--transductive", "softkmeans", "--refine-steps", "0"],
                 "must be at least 1, got 0"),
                (["--refine-steps", "2"], needs_softkmeans),
                (["--transductive", "assignment", "--refine-steps", "2"], needs_softkmeans)]
    assert_cli_refuses(cli.main, common, refusals, capsys, help_mentions="--transductive")
