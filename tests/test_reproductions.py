"""Short reproductions of the papers' claims, marked slow: `pytest --runslow`.

Each trains a default configuration for a fraction of its full length on one
CPU thread (a few minutes in all) and checks the claim the full run makes,
against the baselines measured on the same held-out tasks. The full-length
runs and their figures are in docs/results.md and docs/icl.md.
"""
import numpy as np
import pytest

from scratchmeta import evaluation, train

pytestmark = pytest.mark.slow


def test_icl_transformer_learns_linear_regression_in_context(tmp_path):
    """Garg et al. 2022: after pretraining on prompts the transformer's error
    falls with k and, at k = 2d, is far below averaging, 3-NN and one tuned
    GD step (docs/icl.md). 4,000 steps of the default configuration."""
    config = train.build_config("icl", "linreg", {"steps": 4000, "eval_every": 0, "seed": 0})
    train.run(config, str(tmp_path / "icl"), progress=False)
    report = evaluation.evaluate_run(str(tmp_path / "icl"), n_tasks=1000, batch_size=500)
    d = config["task"]["n_dims"]
    by_k = report["by_k"]
    at = {k: by_k[str(k)] for k in (1, d, 2 * d)}
    assert at[1]["transformer"] > at[d]["transformer"] > at[2 * d]["transformer"]   # falls with k
    assert at[2 * d]["transformer"] < 0.25
    for baseline in ("averaging", "knn", "gd_one_step"):
        assert at[2 * d]["transformer"] < 0.5 * at[2 * d][baseline], baseline


def test_maml_sinusoid_lands_far_below_the_pretrained_baseline(tmp_path):
    """Finn et al. 2017, Sec. 5.1: MAML adapts in one step where a model
    pretrained on all tasks cannot. 3,000 steps of the default configuration;
    K = 10, one inner step, 600 held-out tasks."""
    config = train.build_config("maml", "sinusoid", {"steps": 3000, "eval_every": 0, "seed": 0})
    train.run(config, str(tmp_path / "maml"), progress=False)
    report = evaluation.evaluate_run(str(tmp_path / "maml"), shots=10, inner_steps=1, n_tasks=600)
    pretrained = report["baselines"]["pretrained"]["mean"]
    assert np.isfinite(report["mean"]) and report["mean"] + report["ci95"] < 0.5 * pretrained
