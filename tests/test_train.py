"""The meta-training loop, run directories, checkpoints and resumption."""
import json
import os

import numpy as np
import pytest

import scratchmeta as sm
from scratchmeta import runs, train
from scratchmeta.optim import Adam
from scratchmeta.algorithms import ALGORITHMS

import toy_learner


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(ALGORITHMS, "toy", "toy_learner")
    return train.build_config("toy", "lines")


def _params(theta):
    return {k: v.numpy() for k, v in theta.items()}


def test_mean_ci95_matches_the_normal_interval():
    values = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    mean, ci = train.mean_ci95(values)
    assert mean == pytest.approx(4.0)
    assert ci == pytest.approx(1.96 * values.std(ddof=1) / np.sqrt(5))


def test_meta_train_lowers_the_held_out_loss(toy):
    learner = toy_learner.Toy()
    sampler = train.make_sampler(toy, "train")
    held_out = train.make_sampler(toy, "test")
    theta0 = learner.init(0)
    before = train.evaluate(learner, theta0, held_out, n_tasks=200)["mse"]["mean"]
    theta, history = train.meta_train(learner, sampler, steps=60, meta_batch=8, progress=False,
                                      optimizer=Adam(lr=0.05))
    held_out = train.make_sampler(toy, "test")
    after = train.evaluate(learner, theta, held_out, n_tasks=200)
    assert after["mse"]["tasks"] == 200
    assert after["mse"]["mean"] < 0.5 * before


def test_evaluate_counts_every_task_once(toy):
    learner = toy_learner.Toy()
    result = train.evaluate(learner, learner.init(0), train.make_sampler(toy, "test"),
                            n_tasks=601, batch_size=100)
    assert result["mse"]["tasks"] == 601 and result["baseline/zero"]["tasks"] == 601


def test_run_writes_config_metrics_and_checkpoint(toy, tmp_path):
    theta, history = train.run(toy, str(tmp_path), progress=False)
    assert json.loads((tmp_path / "config.json").read_text())["algorithm"] == "toy"
    records = runs.read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [10, 20, 30, 40]
    step, saved, *_ = runs.load_checkpoint(str(tmp_path), toy)
    assert step == 40
    for k in theta:
        np.testing.assert_array_equal(saved[k].numpy(), theta[k].numpy())
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


class _Stop(Exception):
    pass


def test_resume_ends_bit_for_bit_where_an_uninterrupted_run_ends(toy, tmp_path, monkeypatch):
    full, _ = train.run(toy, str(tmp_path / "full"), progress=False)

    # interrupt a second run mid-way (after step 17: last checkpoint at 15)
    real_step = toy_learner.Toy.meta_step

    def flaky(self, theta, batch):
        if self.calls == 17:
            raise _Stop()
        return real_step(self, theta, batch)

    monkeypatch.setattr(toy_learner.Toy, "meta_step", flaky)
    with pytest.raises(_Stop):
        train.run(toy, str(tmp_path / "cut"), progress=False)
    monkeypatch.setattr(toy_learner.Toy, "meta_step", real_step)
    assert runs.load_checkpoint(str(tmp_path / "cut"), toy)[0] == 15

    resumed, _ = train.run(None, str(tmp_path / "cut"), resume=True, progress=False)
    for k in full:
        np.testing.assert_array_equal(resumed[k].numpy(), full[k].numpy())
    steps = [r["step"] for r in runs.read_metrics(str(tmp_path / "cut"))]
    assert steps == [10, 20, 30, 40]                   # no duplicated evaluation lines
    # the step-20 train_loss averages steps 11-20, 11-15 from before the interruption
    assert (tmp_path / "cut" / "metrics.jsonl").read_bytes() == \
        (tmp_path / "full" / "metrics.jsonl").read_bytes()


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(toy, tmp_path):
    toy["algo"] = {"blow_up_at": 13}
    with pytest.raises(train.NonFiniteLossError, match="step 13.*step 10"):
        train.run(toy, str(tmp_path), progress=False)
    step, *_ = runs.load_checkpoint(str(tmp_path), toy)
    assert step == 10


def test_an_algorithms_own_stop_names_the_step(toy, tmp_path, monkeypatch):
    real_step = toy_learner.Toy.meta_step

    def inner_loss_nan(self, theta, batch):
        if self.calls == 7:
            raise FloatingPointError("toy: the inner loss is nan")
        return real_step(self, theta, batch)

    monkeypatch.setattr(toy_learner.Toy, "meta_step", inner_loss_nan)
    with pytest.raises(train.NonFiniteLossError, match="inner loss is nan at step 8.*step 5"):
        train.run(dict(toy, checkpoint_every=5), str(tmp_path), progress=False)


def test_non_finite_parameters_are_caught_before_the_checkpoint(toy, tmp_path):
    class NaNAt(Adam):
        def step(self, params, grads):
            params = super().step(params, grads)
            if self.t == 3:                                   # the update itself overflows
                params["w"] = sm.tensor(np.full(params["w"].shape, np.nan), requires_grad=True)
            return params

    learner = toy_learner.Toy()
    sampler = train.make_sampler(toy, "train")
    with pytest.raises(train.NonFiniteLossError, match="parameters w became NaN or inf at step 3.*step 2"):
        train.meta_train(learner, sampler, steps=10, meta_batch=2, optimizer=NaNAt(lr=0.01),
                         run_dir=str(tmp_path), config=toy, checkpoint_every=1, progress=False)
    step, theta, *_ = runs.load_checkpoint(str(tmp_path), toy)
    assert step == 2 and all(np.isfinite(t.numpy()).all() for t in theta.values())


def test_a_failed_resume_rewrites_nothing(toy, tmp_path):
    train.run(toy, str(tmp_path), progress=False)
    metrics = (tmp_path / "metrics.jsonl").read_bytes()
    config = json.loads((tmp_path / "config.json").read_text())
    config["seed"] = 9                                       # the checkpoint is seed 0's
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / ".tmp-orphan").write_bytes(b"x")
    with pytest.raises(runs.CheckpointError, match="seed"):
        train.run(None, str(tmp_path), resume=True, progress=False)
    assert (tmp_path / "metrics.jsonl").read_bytes() == metrics
    assert (tmp_path / ".tmp-orphan").exists()                # only a valid resume tidies up


def test_truncated_checkpoint_is_refused_and_left_alone(toy, tmp_path):
    train.run(toy, str(tmp_path), progress=False)
    path = tmp_path / "checkpoint.npz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(runs.CheckpointError, match="corrupt or truncated"):
        train.run(None, str(tmp_path), resume=True, progress=False)
    assert path.read_bytes() == data[: len(data) // 2]          # nothing overwritten


def test_garbage_checkpoint_is_refused(toy, tmp_path):
    train.run(toy, str(tmp_path), progress=False)
    (tmp_path / "checkpoint.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(runs.CheckpointError, match="corrupt or truncated"):
        runs.load_checkpoint(str(tmp_path), toy)


def test_checkpoint_of_another_model_is_refused(toy, tmp_path):
    train.run(toy, str(tmp_path), progress=False)
    other = dict(toy, model={"sizes": [1, 8, 1]})
    with pytest.raises(runs.CheckpointError, match="another experiment"):
        runs.load_checkpoint(str(tmp_path), other)


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    runs.write_json(str(path), {"a": 1})

    def killed(src, dst):                                       # the process dies at the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(runs.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        runs.write_json(str(path), {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["f.json"]                   # no temporary file left


def test_meta_train_rejects_bad_counts(toy):
    learner = toy_learner.Toy()
    with pytest.raises(ValueError, match="steps must be >= 0"):
        train.meta_train(learner, train.make_sampler(toy, "train"), steps=-1, meta_batch=2)
    with pytest.raises(ValueError, match="meta_batch >= 1"):
        train.meta_train(learner, train.make_sampler(toy, "train"), steps=1, meta_batch=0)


def test_a_learner_with_its_own_rng_resumes_exactly(tmp_path, monkeypatch):
    """The CNP draws context sizes from its own generator: checkpoints carry its state."""
    config = train.build_config("cnp", "sinusoid", {"steps": 12, "meta_batch": 4, "eval_every": 0,
                                                     "checkpoint_every": 4})
    config["model"].update({"r_dim": 8, "encoder": [8], "decoder": [8]})
    full, _ = train.run(config, str(tmp_path / "full"), progress=False)

    from scratchmeta.algorithms import cnp
    real_step = cnp.CNP.meta_step
    calls = []

    def flaky(self, theta, batch):
        calls.append(1)
        if len(calls) == 7:
            raise _Stop()
        return real_step(self, theta, batch)

    monkeypatch.setattr(cnp.CNP, "meta_step", flaky)
    with pytest.raises(_Stop):
        train.run(config, str(tmp_path / "cut"), progress=False)
    monkeypatch.setattr(cnp.CNP, "meta_step", real_step)
    resumed, _ = train.run(None, str(tmp_path / "cut"), resume=True, progress=False)
    for k in full:
        np.testing.assert_array_equal(resumed[k].numpy(), full[k].numpy())
