"""Test-time augmentation (scratchmeta.tta): evaluate_run(tta=M) and `scratchmeta eval --tta M`."""
import json

import numpy as np
import pytest

from scratchmeta import cli, evaluation, train, tta
from scratchmeta.backend import to_numpy
from scratchmeta.tasks import registry
from helpers import assert_cli_refuses

TINY_MODEL = {"hidden": 8}                 # Conv4-8: the behaviour, not the accuracy


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two steps of protonet and of matching on omniglot-minimal: {algorithm: run dir}."""
    out = {}
    for algorithm in ("protonet", "matching"):
        config = train.build_config(algorithm, "omniglot-minimal",
                                    {"steps": 2, "eval_every": 0, "model": TINY_MODEL,
                                     "algo": {"train_ways": 5}})
        out[algorithm] = str(tmp_path_factory.mktemp(algorithm))
        train.run(config, out[algorithm], progress=False)
    return out


def _evaluate(run_dir, **kw):
    return evaluation.evaluate_run(run_dir, ways=5, shots=1, queries=2, n_tasks=6,
                                   batch_size=3, baselines=False, **kw)


def _recording_learner(run_dir):
    """(learner, theta, one held-out batch, the list every embedded view is appended to)."""
    config, learner, theta, _ = train.load_run(run_dir)
    config["task"].update(n_way=5, k_shot=1, n_query=2)
    batch = registry.make_sampler(config, "test").sample(2)
    seen = []
    embed = learner.embed

    def recording(theta, view):
        seen.append({k: to_numpy(view[k]).copy() for k in ("support_x", "query_x")})
        return embed(theta, view)
    learner.embed = recording
    return learner, theta, batch, seen


@pytest.mark.parametrize("algorithm", ["protonet", "matching"])
def test_one_view_is_the_plain_evaluation_exactly(runs, algorithm):
    plain = _evaluate(runs[algorithm])
    one = _evaluate(runs[algorithm], tta=1)
    assert (one["mean"], one["ci95"]) == (plain["mean"], plain["ci95"])
    assert "tta" not in one


@pytest.mark.parametrize("algorithm", ["protonet", "matching"])
def test_several_views_are_deterministic_for_a_seed(runs, algorithm):
    a = _evaluate(runs[algorithm], tta=4, seed=3)
    b = _evaluate(runs[algorithm], tta=4, seed=3)
    assert (a["mean"], a["ci95"]) == (b["mean"], b["ci95"])
    assert a["tta"] == {"views": 4, "queries": False, "distortion": a["tta"]["distortion"]}
    assert a["tta"]["distortion"]["rotation"] == 5.0          # the training recipe's affine maps


def test_views_average_the_embeddings_of_distorted_support_only(runs):
    learner, theta, batch, seen = _recording_learner(runs["protonet"])
    z_plain, q_plain = (to_numpy(z.data) for z in learner.test_embed(theta, batch))
    seen.clear()
    tta.install(learner, 4, seed=0)
    z, q = (to_numpy(z.data) for z in learner.test_embed(theta, batch))
    assert len(seen) == 4
    np.testing.assert_array_equal(seen[0]["support_x"], to_numpy(batch["support_x"]))  # view 0: as drawn
    for view in seen[1:]:
        assert not np.array_equal(view["support_x"], seen[0]["support_x"])             # distorted
        np.testing.assert_array_equal(view["query_x"], to_numpy(batch["query_x"]))     # queries never
    np.testing.assert_array_equal(q, q_plain)               # the queries' embeddings: view 0's
    assert not np.allclose(z, z_plain)


def test_the_mean_over_views_is_what_the_embedding_gives_each_view(runs):
    learner, theta, batch, seen = _recording_learner(runs["protonet"])
    augmentation = tta.TestTimeAugmentation(3, seed=0)
    outputs = []

    def embed(theta, view):                       # records each view's embeddings too
        z = learner.embed(theta, view)
        outputs.append([to_numpy(t.data) for t in z])
        return z
    z, q = augmentation(embed, theta, batch)
    assert len(outputs) == 3
    np.testing.assert_allclose(to_numpy(z.data), np.mean([o[0] for o in outputs], axis=0), rtol=1e-6)
    np.testing.assert_array_equal(to_numpy(q.data), outputs[0][1])


def test_query_views_distort_and_average_the_queries_too(runs):
    learner, theta, batch, seen = _recording_learner(runs["protonet"])
    q_plain = to_numpy(learner.test_embed(theta, batch)[1].data)
    seen.clear()
    tta.install(learner, 3, queries=True, seed=0)
    q = to_numpy(learner.test_embed(theta, batch)[1].data)
    assert len(seen) == 3
    assert all(not np.array_equal(v["query_x"], seen[0]["query_x"]) for v in seen[1:])
    assert not np.allclose(q, q_plain)


def test_the_same_seed_draws_the_same_views_and_another_seed_others(runs):
    learner, theta, batch, _ = _recording_learner(runs["protonet"])
    first, again, other = (tta.TestTimeAugmentation(2, seed=s).distort(batch["support_x"])
                           for s in (5, 5, 6))
    np.testing.assert_array_equal(to_numpy(first), to_numpy(again))
    assert not np.array_equal(to_numpy(first), to_numpy(other))
    assert first.dtype == batch["support_x"].dtype and first.shape == batch["support_x"].shape


def test_the_held_out_episodes_are_the_same_with_and_without_views(runs):
    """The distortions have a generator of their own: the sampler's stream is untouched."""
    config, learner, theta, _ = train.load_run(runs["protonet"])
    sampler = registry.make_sampler(config, "test")
    plain = registry.make_sampler(config, "test")
    tta.install(learner, 3, seed=sampler.seed)
    for _ in range(2):
        batch, reference = sampler.sample(2), plain.sample(2)
        learner.test_embed(theta, batch)
        for key in reference:
            np.testing.assert_array_equal(to_numpy(batch[key]), to_numpy(reference[key]))


@pytest.mark.parametrize("views", [0, -2, 2.5, "4", True, None])
def test_bad_view_counts_are_a_value_error_naming_the_value(runs, views):
    with pytest.raises(ValueError, match=rf"tta must be an integer >= 1 .*got {views!r}"):
        tta.check_views(views)
    with pytest.raises(ValueError, match=r"tta must be an integer >= 1"):
        _evaluate(runs["protonet"], tta=views)


def test_a_learner_without_an_embedding_is_refused(tmp_path):
    config = train.build_config("maml", "sinusoid", {"steps": 1, "eval_every": 0})
    train.run(config, str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="tta=4: maml has no embedding"):
        evaluation.evaluate_run(str(tmp_path), n_tasks=2, tta=4)
    assert evaluation.evaluate_run(str(tmp_path), n_tasks=2, tta=1)["tasks"] == 2   # 1 is off


def test_an_inactive_distortion_is_refused():
    with pytest.raises(ValueError, match="the distortion must be active"):
        tta.TestTimeAugmentation(4, distortion={"rotation": 0.0})


def test_cli_tta_flag(runs, capsys):
    common = ["eval", runs["protonet"], "--ways", "5", "--shots", "1", "--tasks", "4",
              "--no-baselines", "--json"]
    assert cli.main(common + ["--tta", "3", "--tta-queries"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tta"]["views"] == 3 and report["tta"]["queries"] is True
    assert cli.main(common[:-1] + ["--tta", "3"]) == 0
    assert "each support image the mean of 3 views" in capsys.readouterr().out
    refusals = [(["--tta", "0"], "must be at least 1, got 0"),
                (["--tta", "2.5"], "expected an integer, got '2.5'"),
                (["--tta-queries"], "--tta-queries needs --tta M with M > 1")]
    assert_cli_refuses(cli.main, common, refusals, capsys, help_mentions="--tta M")
