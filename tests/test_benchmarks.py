"""benchmarks/: the in-context transformer's workload, at a small batch.

The benchmark's own agreement check (harness.check_agreement, rtol 1e-8 in
float64) is what these run; peers that are not installed are skipped.
"""
import os
import sys

import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

import harness  # noqa: E402
import peers  # noqa: E402
import workloads  # noqa: E402


def _problem(n_prompts=3):
    return workloads.make("icl_transformer", np.float64, n_tasks=n_prompts)


def test_icl_workload_has_the_models_parameters_and_the_docs_configuration():
    from scratchmeta.algorithms import icl
    p = _problem()
    h = p.hyper
    default = icl.default_config()
    assert {k: h[k] for k in default["model"]} == default["model"]
    assert (h["n_dims"], h["n_points"]) == (default["task"]["n_dims"], default["task"]["n_points"])
    assert workloads.make("icl_transformer").data["x"].shape == (default["meta_batch"], 15, 5)
    learner = icl.InContextLearner(model=default["model"], task=default["task"])
    layout = {k: v.shape for k, v in learner.model.init(0).items()}
    assert list(layout) == list(p.params)
    assert layout == {k: v.shape for k, v in p.params.items()}
    # noiseless prompts y = w.x: the least-squares fit of each prompt is exact
    x, y = p.data["x"], p.data["y"]
    w = np.linalg.lstsq(x[0], y[0], rcond=None)[0]
    np.testing.assert_allclose(x[0] @ w, y[0], atol=1e-12)


def test_icl_step_agrees_across_implementations():
    pytest.importorskip("torch")
    p = _problem()
    impls = harness.load_impls(list(peers.MODULES), verbose=False)
    assert "torch_loop" in impls and "scratchmeta" in impls
    results = {}
    for name, module in impls.items():
        runner = module.icl_transformer(p)
        runner.step()
        results[name] = runner.result()
    assert harness.check_agreement(p, results, *harness.tolerances(np.float64)) == "torch_loop"
    ref = results["torch_loop"]
    assert set(ref) == {"loss"} | set(p.params)
    assert ref["loss"].shape == () and ref["loss"] > 0
    # every parameter receives a gradient, except the last position's embedding:
    # the final token (y_n) is read by no prediction under the causal mask
    for k, g in ref.items():
        if k != "pos":
            assert np.abs(g).max() > 0, k
    assert np.all(ref["pos"][-1] == 0) and np.all(np.abs(ref["pos"][:-1]).max(axis=1) > 0)


def test_icl_check_catches_the_erf_gelu():
    """The agreement check is tight enough to tell tanh-form GELU from erf-form."""
    pytest.importorskip("torch")
    import torch.nn.functional as F
    p = _problem()
    module, _ = peers.load("torch_loop")
    runner = module.icl_transformer(p)
    runner.step()
    tanh_form = runner.result()
    gelu = F.gelu
    try:
        F.gelu = lambda x, approximate="none": gelu(x)           # erf form
        runner.step()
    finally:
        F.gelu = gelu
    erf_form = runner.result()
    with pytest.raises(harness.Disagreement):
        harness.check_agreement(p, {"torch_loop": tanh_form, "erf": erf_form},
                                *harness.tolerances(np.float64))


# ------------------------------------------------ every workload, every peer

def _agree(problem, names, dtype=np.float64):
    """Run one step of each available implementation in `names`; check them against torch_loop."""
    impls = harness.load_impls(names, verbose=False)
    runners = harness.build_runners(problem, impls)
    assert "torch_loop" in runners and "scratchmeta" in runners, sorted(runners)
    for runner in runners.values():
        runner.step()
    results = {name: runner.result() for name, runner in runners.items()}
    assert harness.check_agreement(problem, results, *harness.tolerances(dtype)) == "torch_loop"
    return results


def test_default_dtypes_float64_for_the_sinusoid_float32_for_images_and_the_transformer():
    for name in workloads.WORKLOADS:
        expected = np.float64 if name.endswith("_sine") or "_sine_" in name else np.float32
        assert workloads.default_dtype(name) == expected, name
        assert workloads.make(name).dtype == expected, name
    assert workloads.make("protonet", np.float64).dtype == np.float64


@pytest.mark.parametrize("name", ["maml_sine_2nd", "maml_sine_1st", "reptile_sine"])
def test_sinusoid_workloads_agree_across_every_peer(name):
    pytest.importorskip("torch", reason="torch_loop is the reference")
    results = _agree(workloads.make(name, np.float64, n_tasks=5), list(peers.MODULES))
    assert all(np.abs(g).max() > 0 for g in results["torch_loop"].values())


@pytest.mark.parametrize("name", [pytest.param("maml_conv4", marks=pytest.mark.slow),
                                  "maml_conv4_api", "protonet"])
def test_image_workloads_agree_with_the_pytorch_loop(name):
    """scratchmeta (fast paths on and off) against the PyTorch loop, float64, one task."""
    pytest.importorskip("torch", reason="torch_loop is the reference")
    problem = workloads.make(name, np.float64, n_tasks=1)
    results = _agree(problem, ["torch_loop", "scratchmeta", "scratchmeta_plain"])
    ref = results["torch_loop"]
    assert set(k.split(".")[0] for k in problem.params) <= set(k.split(".")[0] for k in ref)
    for k in problem.params:
        assert np.abs(ref[k]).max() > 0, k


@pytest.mark.slow
def test_public_api_loop_agrees_in_float32():
    """The default dtype: float32 agreement (rtol 1e-3) of the user's loop and PyTorch's."""
    pytest.importorskip("torch", reason="torch_loop is the reference")
    problem = workloads.make("maml_conv4_api", n_tasks=1)
    assert problem.dtype == np.float32
    _agree(problem, ["torch_loop", "scratchmeta"], np.float32)


def test_omniglot_step_samples_the_same_episodes_and_takes_adams_step():
    """Both sides draw their episode from the same seeded sampler and apply Adam (float64)."""
    pytest.importorskip("torch", reason="torch_loop is the reference")
    problem = workloads.make("protonet_omniglot", np.float64)
    assert problem.hyper["n_way"] == 20 and problem.hyper["n_query"] == 5
    results = _agree(problem, ["torch_loop", "scratchmeta"])
    ref = results["torch_loop"]
    for k, theta in problem.params.items():
        step = ref[f"adam.{k}"] - theta
        # Adam's first step moves each weight by lr * g / (|g| + eps): about lr where g is not tiny
        big = np.abs(ref[k]) > 1e-6
        np.testing.assert_allclose(np.abs(step[big]), problem.hyper["lr"], rtol=1e-2)
    # a wrong episode gives a different loss: the check compares the loss itself
    other = dict(results["scratchmeta"], loss=ref["loss"] * 1.01)
    with pytest.raises(harness.Disagreement):
        harness.check_agreement(problem, {"torch_loop": ref, "x": other},
                                *harness.tolerances(np.float64))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["maml_conv4", "protonet"])
def test_image_workloads_agree_across_every_peer(name):
    pytest.importorskip("torch", reason="torch_loop is the reference")
    _agree(workloads.make(name, np.float64, n_tasks=2), list(peers.MODULES))


def test_train_time_refuses_a_step_count_below_one(capsys):
    import train_time
    with pytest.raises(SystemExit) as stop:
        train_time.main(["--steps", "0"])
    assert stop.value.code == 2
    assert "--steps must be >= 1, got 0" in capsys.readouterr().err


def test_train_time_runs_both_sides_and_reports_their_times(tmp_path):
    pytest.importorskip("torch")
    import json

    import train_time
    out = tmp_path / "t.json"
    train_time.main(["--steps", "2", "--json", str(out)])
    result = json.loads(out.read_text())
    for side in ("scratchmeta", "torch"):
        assert result[side]["wall_s"] > 0 and result[side]["cpu_s"] > 0
    assert result["ratio_cpu"] == pytest.approx(result["scratchmeta"]["cpu_s"] / result["torch"]["cpu_s"])
