"""The `scratchmeta` command: flags checked before work, train/eval/plot, kill and resume."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import needs

from scratchmeta import cli, runs, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--steps", "6", "--meta-batch", "3", "--eval-every", "3", "--eval-tasks", "20",
        "--no-progress"]


def run_cli(*argv):
    """Run main() in-process; return (exit code, stdout+stderr)."""
    return cli.main(list(argv))


@pytest.mark.parametrize("argv, message", [
    (["train", "mamll", "--out", "x"], "invalid choice: 'mamll'"),
    (["train", "maml", "--steps", "-3", "--out", "x"], "must be at least 0, got -3"),
    (["train", "maml", "--shots", "0", "--out", "x"], "must be at least 1, got 0"),
    (["train", "maml", "--lr", "-1", "--out", "x"], "must be positive"),
    (["train", "maml", "--backend", "tpu", "--out", "x"], "invalid choice: 'tpu'"),
    (["train", "maml"], "--out DIR is required"),
    (["train", "protonet", "--task", "omniglot", "--out", "x"], "omniglot.*root"),
    (["train", "protonet", "--task", "omniglot", "--data-root", "/nonexistent/omniglot", "--out", "x"],
     "/nonexistent/omniglot"),
    pytest.param(["train", "maml", "--task", "digits", "--ways", "7", "--out", "x"], "7",
                 marks=needs("sklearn", "data")),
    pytest.param(["train", "protonet", "--task", "digits", "--shots", "400", "--out", "x"], "400",
                 marks=needs("sklearn", "data")),
    (["train", "icl", "--noise-std", "-0.5", "--out", "x"], "must be a finite number >= 0, got -0.5"),
    (["train", "icl", "--noise-std", "nan", "--out", "x"], "must be a finite number >= 0"),
    (["train", "icl", "--noise-std", "lots", "--out", "x"], "expected a number, got 'lots'"),
    (["train", "maml", "--noise-std", "0.5", "--out", "x"], "applies to the linreg task"),
    (["train", "maml", "--width", "64", "--out", "x"], "--width applies to the transformer"),
    (["train", "icl", "--width", "30", "--heads", "4", "--out", "x"], "width 30 is not divisible by 4 heads"),
    (["train", "icl", "--depth", "0", "--out", "x"], "must be at least 1, got 0"),
    (["eval", "x", "--noise-std", "-1"], "must be a finite number >= 0"),
    (["eval", "/nonexistent/run"], "not a directory"),
    (["train", "--resume", "/nonexistent/run"], "not a run directory"),
])
def test_bad_flags_exit_2_with_a_message_before_any_work(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(*argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    import re
    assert re.search(message, err), err
    assert not os.path.exists(tmp_path / "x")                   # nothing was created


def test_an_existing_run_is_not_overwritten(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert run_cli("train", "maml", "--out", out, *TINY) == 0
    before = (tmp_path / "run" / "checkpoint.npz").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        run_cli("train", "maml", "--out", out, *TINY)
    assert exit_info.value.code == 2
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoint.npz").read_bytes() == before


def test_train_eval_json_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = str(tmp_path / "run")
    assert run_cli("train", "maml", "--task", "sinusoid", "--out", out, *TINY) == 0
    capsys.readouterr()
    assert run_cli("eval", out, "--shots", "5", "--inner-steps", "2", "--tasks", "30",
                   "--json") == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("metric", "mean", "ci95", "tasks", "baselines"):
        assert key in report
    assert report["metric"] == "mse" and report["tasks"] == 30
    assert report["task"]["k_support"] == 5
    assert {"pretrained", "zero"} <= set(report["baselines"])
    assert run_cli("plot", out) == 0
    written = capsys.readouterr().out.split()
    assert any(p.endswith("learning_curves.png") for p in written)
    assert all(os.path.getsize(p) > 1000 for p in written)


def _theta(run_dir):
    with np.load(os.path.join(run_dir, "checkpoint.npz")) as z:
        return {k: z[k] for k in z.files if k.startswith("theta/")}


def test_killed_at_a_random_moment_then_resumed_ends_bit_for_bit(tmp_path):
    args = ["train", "maml", "--task", "sinusoid", "--steps", "600", "--meta-batch", "2",
            "--checkpoint-every", "7", "--eval-every", "10", "--eval-tasks", "4", "--no-progress",
            "--seed", "3"]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full = str(tmp_path / "full")
    subprocess.run([sys.executable, "-m", "scratchmeta", *args, "--out", full], check=True,
                   env=env, capture_output=True)
    cut = str(tmp_path / "cut")
    proc = subprocess.Popen([sys.executable, "-m", "scratchmeta", *args, "--out", cut], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(cut, "checkpoint.npz")) and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(random.Random(os.getpid()).uniform(0.0, 0.4))     # a random moment mid-run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = runs.load_checkpoint(cut)[0]                          # whatever was last written is whole
    assert step % 7 == 0 or step == 600
    done = subprocess.run([sys.executable, "-m", "scratchmeta", "train", "--resume", cut,
                           "--no-progress"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a, b = _theta(full), _theta(cut)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    with open(os.path.join(full, "metrics.jsonl"), "rb") as f, \
            open(os.path.join(cut, "metrics.jsonl"), "rb") as g:
        assert f.read() == g.read()                              # the records too, byte for byte
    assert not [n for n in os.listdir(cut) if n.startswith(".tmp-")]


def test_init_flag_reaches_the_model_and_is_refused_for_conv_nets(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert run_cli("train", "maml", "--init", "maml", "--out", out, *TINY) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["init"] == "maml"
    with pytest.raises(SystemExit) as exit_info:
        run_cli("train", "maml", "--task", "digits", "--init", "maml", "--out", str(tmp_path / "b"))
    assert exit_info.value.code == 2
    assert "--init applies to MLP models" in capsys.readouterr().err


def test_icl_on_noisy_prompts_trains_and_evaluates_against_label_and_clean_target(tmp_path, capsys):
    out = str(tmp_path / "icl")
    assert run_cli("train", "icl", "--noise-std", "0.5", "--steps", "2", "--meta-batch", "4",
                   "--eval-every", "0", "--no-progress", "--out", out) == 0
    config = json.loads((tmp_path / "icl" / "config.json").read_text())
    assert config["task"]["noise_std"] == 0.5
    capsys.readouterr()
    assert run_cli("eval", out, "--tasks", "20", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"]["noise_std"] == 0.5 and report["tasks"] == 20
    assert set(report["by_k"]) == set(report["clean_by_k"]) == {str(k) for k in range(15)}
    assert "least_squares" in report["clean_by_k"]["10"] and "clean_error" in report["metrics"]
    # evaluating at another noise level: the report records it; noise 0 has no clean curves
    assert run_cli("eval", out, "--tasks", "20", "--noise-std", "0", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"]["noise_std"] == 0 and "clean_by_k" not in report
    with pytest.raises(SystemExit) as exit_info:
        run_cli("eval", out, "--noise-std", "-2")
    assert exit_info.value.code == 2


def test_transformer_size_flags_reach_the_model(tmp_path):
    out = str(tmp_path / "icl")
    assert run_cli("train", "icl", "--width", "16", "--depth", "2", "--heads", "2", "--steps", "1",
                   "--meta-batch", "2", "--eval-every", "0", "--no-progress", "--out", out) == 0
    config = json.loads((tmp_path / "icl" / "config.json").read_text())
    assert {k: config["model"][k] for k in ("width", "depth", "heads")} == {"width": 16, "depth": 2, "heads": 2}
    _, learner, theta, _ = train.load_run(out)
    assert theta["read_in.w"].shape == (16, 5) and "block1.ln1.w" in theta and "block2.ln1.w" not in theta


def test_noise_flag_on_a_run_of_another_task_exits_2(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert run_cli("train", "maml", "--out", out, *TINY) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli("eval", out, "--noise-std", "0.5")
    assert exit_info.value.code == 2
    assert "applies to the linreg task" in capsys.readouterr().err
