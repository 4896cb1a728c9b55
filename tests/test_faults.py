"""Faults and bad input on purpose: every one is a clear line and the right exit status,
and nothing is lost or half-written (issue 15, items 2-4).

Exit status 2: bad input (flags, environment, run files); 1: the run stopped
(non-finite numbers, a failed write), with the last good checkpoint kept.
"""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from scratchmeta import cli, runs, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--steps", "6", "--meta-batch", "3", "--eval-every", "3", "--eval-tasks", "20",
        "--no-progress"]
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _exit(argv, capsys):
    """(exit status, stderr) of main(argv), whether it returns or exits."""
    try:
        code = cli.main(list(argv))
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def _one_line(err):
    """The one error line; argparse's own errors come after the subcommand's usage."""
    lines = [line for line in err.splitlines() if line.strip()]
    if lines and lines[0].startswith("usage: scratchmeta"):
        lines = [line for line in lines if line.startswith("scratchmeta")][-1:]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def _trained(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("trained") / "run")
    assert cli.main(["train", "maml", "--out", out, *TINY]) == 0
    return out


@pytest.fixture
def run_dir(_trained, tmp_path):
    """A fresh copy of one tiny trained run (training it once keeps these tests fast)."""
    out = str(tmp_path / "run")
    shutil.copytree(_trained, out)
    return out


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)


# -- bad input: one line, exit 2, nothing created ---------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["train", "maml", "--ways", "3"], "--ways applies to classification tasks, not 'sinusoid'"),
    (["train", "maml", "--data-root", "."], "--data-root applies to dataset tasks"),
    (["train", "icl", "--queries", "3"], "--queries applies to tasks with support and query sets"),
    (["train", "icl", "--shots", "3"], "--shots applies to tasks with support and query sets"),
    (["train", "maml", "--shots", str(10**12)], "draws 2.5e\\+13 examples at once"),
    (["train", "protonet", "--ways", "1000", "--shots", "5000", "--task", "digits"],
     "examples at once"),
    (["train", "maml", "--inner-steps", "1000000000"], "--inner-steps 1000000000 is more than 10000"),
    (["train", "maml", "--lr", "inf"], "must be positive and finite"),
])
def test_bad_train_flags_are_one_line_and_exit_2(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = _exit(argv + ["--out", "x"], capsys)
    assert code == 2
    assert re.search(message, _one_line(err)), err
    assert not os.path.exists(tmp_path / "x")


def test_out_that_is_a_file_under_a_file_or_read_only(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, err = _exit(["train", "maml", "--out", str(tmp_path / "file")], capsys)
    assert code == 2 and "is an existing file, not a directory" in _one_line(err)
    code, err = _exit(["train", "maml", "--out", str(tmp_path / "file" / "run")], capsys)
    assert code == 2 and "is a file, so no directory can be made under it" in _one_line(err)
    if os.geteuid() != 0:                                    # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            code, err = _exit(["train", "maml", "--out", str(ro / "run")], capsys)
            assert code == 2 and "is not writable" in _one_line(err)
        finally:
            ro.chmod(0o755)


def test_data_root_on_a_file(tmp_path, capsys):
    (tmp_path / "omniglot.zip").write_text("not a folder")
    code, err = _exit(["train", "protonet", "--task", "omniglot", "--data-root",
                       str(tmp_path / "omniglot.zip"), "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "is a file, not a folder" in _one_line(err)


def test_a_misspelled_flag_shows_the_subcommands_usage(capsys):
    code, err = _exit(["train", "maml", "--stpes", "3"], capsys)
    assert code == 2
    assert err.startswith("usage: scratchmeta train") and "unrecognized arguments: --stpes 3" in err
    code, err = _exit(["eval", "somewhere", "--taks", "3"], capsys)
    assert code == 2 and err.startswith("usage: scratchmeta eval")


def test_train_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "defaults of unset flags" in out
    assert "maml      --task sinusoid --steps" in out and "--inner-lr 0.01" in out
    assert "(default: 0)" in out                                      # --seed


@pytest.mark.parametrize("variable, value, message", [
    ("SCRATCHMETA_BACKEND", "nonsense", "unknown backend 'nonsense'"),
    ("SCRATCHMETA_DTYPE", "float16", "unsupported default dtype 'float16'"),
])
def test_bad_environment_variables_are_one_line_and_exit_2(variable, value, message):
    done = subprocess.run([sys.executable, "-m", "scratchmeta", "train", "maml", "--out", "x"],
                          env=dict(ENV, **{variable: value}), capture_output=True, text=True)
    assert done.returncode == 2
    line = _one_line(done.stderr)
    assert variable in line and message in line


def test_cupy_backend_without_cupy_is_one_line_and_exit_2():
    pytest.importorskip("numpy")
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed here")
    except ImportError:
        pass
    done = subprocess.run([sys.executable, "-m", "scratchmeta", "eval", "x"],
                          env=dict(ENV, SCRATCHMETA_BACKEND="cupy"), capture_output=True, text=True)
    assert done.returncode == 2
    assert "SCRATCHMETA_BACKEND" in _one_line(done.stderr) and "needs CuPy" in done.stderr


# -- flags that would be ignored are refused --------------------------------------------------------
def test_flags_a_run_cannot_use_are_refused(run_dir, capsys):
    code, err = _exit(["eval", run_dir, "--ways", "7"], capsys)
    assert code == 2 and "--ways applies to classification tasks" in _one_line(err)
    code, err = _exit(["eval", run_dir, "--dtype", "float32"], capsys)
    assert code == 2 and "trained in float64" in _one_line(err)
    code, err = _exit(["train", "--resume", run_dir, "--steps", "5"], capsys)
    assert code == 2 and "--steps would be ignored" in _one_line(err)
    code, err = _exit(["train", "--resume", run_dir, "--dtype", "float32"], capsys)
    assert code == 2 and "trained in float64" in _one_line(err)
    code, err = _exit(["eval", run_dir, "--inner-steps", "1000000000"], capsys)
    assert code == 2 and "more than 10000" in _one_line(err)


# -- run files: corrupt or of the wrong types -------------------------------------------------------
@pytest.mark.parametrize("edit, message", [
    (lambda c: "{", "is not valid JSON"),
    (lambda c: [1, 2], "expected a JSON object"),
    (lambda c: dict(c, steps="x"), 'steps is "x", expected an integer >= 0'),
    (lambda c: dict(c, meta_batch=0), "meta_batch is 0, expected an integer >= 1"),
    (lambda c: dict(c, checkpoint_every=0), "checkpoint_every is 0"),
    (lambda c: dict(c, eval_every=True), "eval_every is true"),
    (lambda c: dict(c, task="sinusoid"), "task is \"sinusoid\", expected an object"),
    (lambda c: dict(c, task={"name": 3}), "task.name is 3"),
    (lambda c: dict(c, task=dict(c["task"], k_support=0.5)), "task.k_support is 0.5"),
    (lambda c: dict(c, model="mlp"), "model is \"mlp\", expected an object"),
    (lambda c: dict(c, optimizer={"name": "adam", "lr": "fast"}), "optimizer.lr is \"fast\""),
    (lambda c: dict(c, optimizer={"name": "rmsprop", "lr": 1e-3}), "optimizer.name is \"rmsprop\""),
    (lambda c: dict(c, algo=dict(c["algo"], inner_steps=-1)), "algo.inner_steps is -1"),
    (lambda c: dict(c, algo=dict(c["algo"], inner_lr=None)), "algo.inner_lr is null"),
    (lambda c: dict(c, dtype="float16"), "dtype is \"float16\""),
    (lambda c: {k: v for k, v in c.items() if k != "algorithm"}, "algorithm is null"),
    (lambda c: dict(c, model=dict(c["model"], sizes="wide")), "cannot build the experiment"),
])
@pytest.mark.parametrize("command", ["eval", "resume", "plot"])
def test_a_damaged_config_is_one_line_naming_the_file(run_dir, edit, message, command, capsys):
    path = os.path.join(run_dir, "config.json")
    config = json.load(open(path))
    new = edit(config)
    with open(path, "w") as f:
        f.write(new if isinstance(new, str) else json.dumps(new))
    before = {name: open(os.path.join(run_dir, name), "rb").read() for name in os.listdir(run_dir)}
    argv = {"eval": ["eval", run_dir], "resume": ["train", "--resume", run_dir],
            "plot": ["plot", run_dir]}[command]
    code, err = _exit(argv, capsys)
    assert code == 2
    line = _one_line(err)
    assert path in line and message in line, line
    after = {name: open(os.path.join(run_dir, name), "rb").read() for name in os.listdir(run_dir)}
    assert after == before                                     # nothing rewritten


def test_a_checkpoint_truncated_to_one_byte(run_dir, capsys):
    path = os.path.join(run_dir, "checkpoint.npz")
    with open(path, "r+b") as f:
        f.truncate(1)
    for argv in (["eval", run_dir], ["train", "--resume", run_dir]):
        code, err = _exit(argv, capsys)
        line = _one_line(err)
        assert code == 2 and "corrupt or truncated" in line and "pickle" not in line


def test_plot_out_on_a_text_file_named_png(run_dir, tmp_path, capsys):
    fake = tmp_path / "figure.png"
    fake.write_text("just text")
    code, err = _exit(["plot", run_dir, "--out", str(fake)], capsys)
    assert code == 2 and "is an existing file, not a directory" in _one_line(err)
    assert fake.read_text() == "just text"


# -- resume refuses a checkpoint of other settings --------------------------------------------------
@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(seed=c["seed"] + 1), "trained with seed 0, config.json says 1"),
    (lambda c: c["optimizer"].update(lr=0.5), "trained with optimizer"),
    (lambda c: c["optimizer"].update(name="sgd"), "trained with optimizer"),
    (lambda c: c.update(dtype="float32"), "holds float64 parameters, config.json says dtype float32"),
])
def test_resume_refuses_a_checkpoint_of_other_settings(run_dir, change, message, capsys):
    path = os.path.join(run_dir, "config.json")
    config = json.load(open(path))
    change(config)
    _write_json(path, config)
    code, err = _exit(["train", "--resume", run_dir], capsys)
    assert code == 2 and message in _one_line(err), err


def test_a_checkpoint_copied_from_a_run_with_another_seed_is_refused(tmp_path, capsys):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert cli.main(["train", "maml", "--out", a, "--seed", "1", *TINY]) == 0
    assert cli.main(["train", "maml", "--out", b, "--seed", "2", *TINY]) == 0
    capsys.readouterr()
    os.replace(os.path.join(a, "checkpoint.npz"), os.path.join(b, "checkpoint.npz"))
    for argv in (["train", "--resume", b], ["eval", b]):
        code, err = _exit(argv, capsys)
        assert code == 2 and "trained with seed 1, config.json says 2" in _one_line(err)


# -- numbers that diverge ---------------------------------------------------------------------------
def test_diverging_parameters_stop_before_a_checkpoint_is_written(tmp_path, capsys):
    out = str(tmp_path / "run")
    # float32 Adam moves each parameter by about lr on its first step: 1e300 overflows to inf
    code, err = _exit(["train", "maml", "--lr", "1e300", "--dtype", "float32", "--steps", "5",
                       "--checkpoint-every", "1",
                       "--eval-every", "0", "--no-progress", "--out", out], capsys)
    line = _one_line(err)
    assert code == 1, err
    assert "became NaN or inf" in line and "at step 1" in line and "step 0" in line
    assert not os.path.exists(os.path.join(out, "checkpoint.npz"))


def test_an_algorithm_that_diverges_names_the_step(tmp_path, capsys):
    out = str(tmp_path / "run")
    code, err = _exit(["train", "maml", "--inner-lr", "10", "--inner-steps", "5", "--steps", "5",
                       "--no-progress", "--out", out], capsys)
    line = _one_line(err)
    assert code == 1 and "nan" in line and "at step 1;" in line and "kept" in line


def test_a_diverged_evaluation_is_an_error_not_a_number(run_dir, capsys, monkeypatch):
    real = train.evaluate

    def diverged(*args, **kw):
        result = real(*args, **kw)
        result["mse"] = dict(result["mse"], mean=float("nan"))
        return result

    monkeypatch.setattr(train, "evaluate", diverged)
    code, err = _exit(["eval", run_dir, "--json", "--no-baselines", "--tasks", "10"], capsys)
    assert code == 1 and "held-out mse" in _one_line(err) and "diverged" in err


def test_eval_json_is_valid_json_when_a_ci_is_undefined(run_dir, capsys):
    assert cli.main(["eval", run_dir, "--tasks", "1", "--json", "--no-baselines"]) == 0
    text = capsys.readouterr().out

    def refuse(name):
        raise AssertionError(f"{name} is not JSON")

    report = json.loads(text, parse_constant=refuse)
    assert report["tasks"] == 1 and report["ci95"] is None            # one task: no interval
    assert cli.main(["eval", run_dir, "--tasks", "1", "--no-baselines"]) == 0
    assert "+- n/a" in capsys.readouterr().out


def test_held_out_nan_during_training_stops_naming_the_step(tmp_path, capsys, monkeypatch):
    calls = []
    real = train.evaluate

    def diverges_second_time(*args, **kw):
        result = real(*args, **kw)
        calls.append(1)
        if len(calls) == 2:
            result["mse"] = dict(result["mse"], mean=float("inf"))
        return result

    monkeypatch.setattr(train, "evaluate", diverges_second_time)
    out = str(tmp_path / "run")
    code, err = _exit(["train", "maml", "--out", out, "--checkpoint-every", "3", *TINY], capsys)
    assert code == 1 and "held-out mse became inf at step 6" in _one_line(err)
    assert [r["step"] for r in runs.read_metrics(out)] == [3]         # no record of inf
    assert runs.load_checkpoint(out)[0] == 3


# -- I/O failures: exit 1, one line naming the file -------------------------------------------------
def test_disk_full_names_the_file_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "run")
    writes = []
    real_fsync = os.fsync

    def full_after_two(fd):
        writes.append(fd)
        if len(writes) > 2:                  # config.json, the step-2 checkpoint, then ENOSPC
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(runs.os, "fsync", full_after_two)
    code, err = _exit(["train", "maml", "--out", out, "--steps", "6", "--checkpoint-every", "2",
                       "--eval-every", "0", "--no-progress"], capsys)
    line = _one_line(err)
    assert code == 1
    assert os.path.join(out, "checkpoint.npz") in line and "No space left on device" in line
    assert "at step 4" in line and "the last checkpoint (step 2) is kept" in line
    monkeypatch.setattr(runs.os, "fsync", real_fsync)
    assert runs.load_checkpoint(out)[0] == 2
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]


def test_figures_are_written_whole_or_not_at_all(run_dir, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    assert cli.main(["plot", run_dir]) == 0
    capsys.readouterr()
    path = os.path.join(run_dir, "learning_curves.png")
    before = open(path, "rb").read()
    from matplotlib.figure import Figure

    def killed_mid_write(self, f, **kw):
        f.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", killed_mid_write)
    assert cli.main(["plot", run_dir]) == 130
    assert open(path, "rb").read() == before
    assert not [n for n in os.listdir(run_dir) if n.startswith(".tmp-")]


# -- metrics.jsonl: nothing lost --------------------------------------------------------------------
def _records(path):
    with open(path) as f:
        return f.read()


def test_a_torn_last_line_is_repaired_and_no_valid_record_dropped(tmp_path, capsys):
    out = str(tmp_path / "run")
    args = ["train", "maml", "--steps", "12", "--meta-batch", "2", "--eval-every", "2",
            "--eval-tasks", "5", "--checkpoint-every", "12", "--no-progress"]
    assert cli.main(args + ["--out", out]) == 0
    full = _records(os.path.join(out, "metrics.jsonl"))
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:          # killed mid-append
        f.write(full + full.splitlines()[0][:25])
    assert len(runs.read_metrics(out)) == 6
    assert cli.main(["train", "--resume", out, "--no-progress"]) == 0
    assert _records(os.path.join(out, "metrics.jsonl")) == full


def test_a_damaged_middle_line_is_refused_and_the_file_left_alone(run_dir, capsys):
    path = os.path.join(run_dir, "metrics.jsonl")
    lines = _records(path).splitlines(keepends=True)
    damaged = lines[0][:10] + "\n" + "".join(lines[1:])
    with open(path, "w") as f:
        f.write(damaged)
    code, err = _exit(["train", "--resume", run_dir], capsys)
    assert code == 2 and "metrics.jsonl line 1 is not a JSON record" in _one_line(err)
    assert _records(path) == damaged


def test_resume_cleans_orphaned_temp_files(run_dir, capsys):
    for name in (".tmp-abc123", ".tmp-zzz"):
        with open(os.path.join(run_dir, name), "wb") as f:
            f.write(b"half a checkpoint")
    assert cli.main(["train", "--resume", run_dir, "--no-progress"]) == 0
    assert not [n for n in os.listdir(run_dir) if n.startswith(".tmp-")]


def test_eval_says_what_it_does_while_training_the_baseline(run_dir, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHMETA_CACHE", str(tmp_path / "cache"))
    assert cli.main(["eval", run_dir, "--tasks", "10", "--json"]) == 0
    captured = capsys.readouterr()
    assert "pretrained baseline" in captured.err and str(tmp_path / "cache") in captured.err
    json.loads(captured.out)                                        # stdout stays JSON


# -- the done criterion: random SIGKILLs, then resume ----------------------------------------------
def _theta(run):
    with np.load(os.path.join(run, "checkpoint.npz")) as z:
        return {k: z[k] for k in z.files if k.startswith("theta/")}


@pytest.mark.slow
def test_twenty_random_sigkills_then_resume_equal_an_uninterrupted_run(tmp_path):
    """Parameters and metrics.jsonl byte for byte, and no temporary file left."""
    args = ["--steps", "400", "--meta-batch", "2", "--checkpoint-every", "3", "--eval-every", "10",
            "--eval-tasks", "4", "--no-progress"]
    base = [sys.executable, "-m", "scratchmeta", "train"]
    full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
    subprocess.run(base + ["maml", "--seed", "5", "--out", full, *args], env=ENV, check=True,
                   capture_output=True)
    rng = random.Random(15)
    kills = 0
    while kills < 20:
        started = os.path.exists(os.path.join(cut, "config.json"))
        command = (base + ["--resume", cut, "--no-progress"] if started
                   else base + ["maml", "--seed", "5", "--out", cut, *args])
        proc = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.8, 2.5))                       # after start-up, mid-run
        if proc.poll() is not None:                            # finished first: start over
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills == 20, f"the run finished after {kills} kills; make it longer"
    done = subprocess.run(base + ["--resume", cut, "--no-progress"], env=ENV, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    a, b = _theta(full), _theta(cut)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert _records(os.path.join(cut, "metrics.jsonl")) == _records(os.path.join(full, "metrics.jsonl"))
    assert not [n for n in os.listdir(cut) if n.startswith(".tmp-")]


# -- examples: help without running, outputs in --out ----------------------------------------------
EXAMPLES = sorted(n for n in os.listdir(os.path.join(ROOT, "examples")) if n.endswith(".py"))


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_prints_help_without_running(name, tmp_path):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "examples", name), "--help"],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:")
    assert os.listdir(tmp_path) == []                               # nothing ran, nothing written


def test_an_example_writes_into_out_from_any_folder_never_into_docs(tmp_path):
    docs = os.path.join(ROOT, "docs", "hessian_term.png")
    before = os.path.getmtime(docs) if os.path.exists(docs) else None
    done = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "05_hessian_term.py"),
                           "--train-steps", "2", "--batches", "1"],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert os.path.getsize(tmp_path / "example-output" / "hessian_term.png") > 1000
    assert (os.path.getmtime(docs) if os.path.exists(docs) else None) == before
    assert not [n for n in os.listdir(tmp_path / "example-output") if n.startswith(".tmp-")]
