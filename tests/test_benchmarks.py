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
