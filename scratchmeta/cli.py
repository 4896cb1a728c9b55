"""The `scratchmeta` command: train, eval, bench, plot.

    scratchmeta train maml --task sinusoid --out runs/maml
    scratchmeta eval runs/maml --shots 5 --inner-steps 10 --json
    scratchmeta plot runs/maml
    scratchmeta bench

Flags are checked before any work starts: a bad one prints a message and
exits with status 2. Errors during a run print one line, not a traceback.
"""
import argparse
import json
import os
import sys
import warnings

from . import backend
from .algorithms import ALGORITHMS
from .evaluation import task_overrides
from .tasks.registry import TASKS

DEFAULT_TASK = {"maml": "sinusoid", "fomaml": "sinusoid", "reptile": "sinusoid",
                "metasgd": "sinusoid", "anil": "sinusoid", "cnp": "sinusoid",
                "protonet": "glyphs", "matching": "glyphs", "icl": "linreg"}
MAX_INNER_STEPS = 10_000            # adaptation steps: a bound, not a hope
MAX_POINTS = 10_000_000             # examples drawn at once (tasks x ways x (shots + queries))


class _HelpFormatter(argparse.HelpFormatter):
    """Shows a flag's default where it has one (algorithm-dependent ones are in the epilog)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _train_epilog():
    """The defaults that depend on the algorithm, one line each."""
    from . import train
    lines = ["defaults of unset flags, per algorithm (with its usual task):"]
    for name in sorted(ALGORITHMS):
        try:
            c = train.build_config(name, DEFAULT_TASK[name])
        except Exception:                   # an algorithm that cannot describe itself: skip it
            continue
        algo = c.get("algo", {})
        parts = [f"--task {DEFAULT_TASK[name]}", f"--steps {c.get('steps')}",
                 f"--meta-batch {c.get('meta_batch')}", f"--lr {c.get('optimizer', {}).get('lr')}"]
        parts += [f"--{k.replace('_', '-')} {algo[k]}" for k in ("inner_lr", "inner_steps") if k in algo]
        lines.append(f"  {name:<9} " + " ".join(parts))
    return "\n".join(lines)


def _int_at_least(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be positive and finite, got {value}")
    return value


def _nonnegative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {value}")
    return value


def _common(p):
    p.add_argument("--backend", choices=("numpy", "cupy"), default=None,
                   help="array backend (default: numpy, or $SCRATCHMETA_BACKEND)")
    p.add_argument("--dtype", choices=("float64", "float32"), default=None,
                   help="floating dtype (default: float64 for checks; float32 is faster)")


def _task_flags(p):
    p.add_argument("--shots", type=_int_at_least(1), help="K: support examples per task (per class)")
    p.add_argument("--ways", type=_int_at_least(2), help="N: classes per episode (classification)")
    p.add_argument("--queries", type=_int_at_least(1), help="query examples per task (per class)")
    p.add_argument("--data-root", help="dataset folder (Omniglot: holds images_background/ "
                                       "and images_evaluation/)")
    p.add_argument("--noise-std", type=_nonnegative_float,
                   help="label noise of linreg prompts: y = w.x + eps, eps ~ N(0, noise_std^2)")
    p.add_argument("--within-alphabet", action="store_true", default=None,
                   help="each episode's classes from one alphabet (Lake et al. 2015's runs; "
                        "omniglot, omniglot-minimal)")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="scratchmeta", description="Meta-learning from scratch: train, evaluate, benchmark, plot.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("train", help="meta-train an algorithm on a task family",
                       description="Meta-train ALGORITHM; writes config.json, metrics.jsonl and "
                                   "checkpoint.npz to --out (or continues --resume DIR).",
                       formatter_class=_Formatter, epilog=_train_epilog())
    t.add_argument("algorithm", nargs="?", choices=sorted(ALGORITHMS),
                   help="which algorithm (omit with --resume)")
    t.add_argument("--task", choices=sorted(TASKS), help="task family (default: the algorithm's usual one)")
    _task_flags(t)
    t.add_argument("--steps", type=_int_at_least(0), help="meta-training steps (outer iterations)")
    t.add_argument("--meta-batch", type=_int_at_least(1), help="tasks per meta-step")
    t.add_argument("--lr", type=_positive_float, help="outer (meta) learning rate, beta")
    t.add_argument("--inner-lr", type=_nonnegative_float, help="inner-loop step size, alpha")
    t.add_argument("--inner-steps", type=_int_at_least(1), help="inner-loop SGD steps")
    t.add_argument("--first-order", action="store_true", help="drop the Hessian term (MAML only)")
    t.add_argument("--init", choices=("pytorch", "maml"),
                   help="MLP initialisation: PyTorch's default (uniform) or MAML's reference code's")
    t.add_argument("--width", type=_int_at_least(1), help="transformer width D (icl)")
    t.add_argument("--depth", type=_int_at_least(1), help="transformer blocks (icl)")
    t.add_argument("--heads", type=_int_at_least(1), help="attention heads; must divide the width (icl)")
    t.add_argument("--train-ways", type=_int_at_least(2),
                   help="ways at training time (ProtoNets' trick: more ways than at test)")
    t.add_argument("--no-augment", action="store_true",
                   help="no random distortions of training images (recipes that augment: "
                        "protonet on omniglot-minimal)")
    t.add_argument("--eval-every", type=_int_at_least(0), help="steps between held-out evaluations (0: never)")
    t.add_argument("--eval-tasks", type=_int_at_least(1), help="held-out tasks per evaluation during training")
    t.add_argument("--checkpoint-every", type=_int_at_least(1), help="steps between checkpoints")
    t.add_argument("--seed", type=_int_at_least(0), help="makes the run reproducible (default: 0)")
    t.add_argument("--out", help="run directory to create")
    t.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(t)

    e = sub.add_parser("eval", help="evaluate a run on held-out tasks (mean and 95%% CI)",
                       description="Evaluate the last checkpoint of RUN on held-out tasks. Unset "
                                   "flags take the run's own settings (config.json).",
                       formatter_class=_HelpFormatter)
    e.add_argument("run", help="run directory")
    _task_flags(e)
    e.add_argument("--inner-steps", type=_int_at_least(0), help="adaptation steps at test time")
    e.add_argument("--tasks", type=_int_at_least(1), default=600, help="held-out tasks")
    e.add_argument("--batch-size", type=_int_at_least(1), default=100, help="tasks evaluated at once")
    e.add_argument("--seed", type=_int_at_least(0), default=None, help="held-out task seed")
    e.add_argument("--no-baselines", action="store_true", help="skip the baselines")
    e.add_argument("--tta", type=_int_at_least(1), default=1, metavar="M",
                   help="test-time augmentation (protonet, matching; ours, not the papers'): "
                        "embed each support image as the mean over M views, itself and M - 1 "
                        "random affine distortions (the training recipe's), drawn from the "
                        "held-out seed; 1 is off")
    e.add_argument("--tta-queries", action="store_true",
                   help="with --tta M > 1, average M views of each query image too")
    e.add_argument("--transductive", choices=("softkmeans", "assignment"), default=None,
                   help="protonet; not the paper's: classify an episode's queries together. "
                        "softkmeans refines the prototypes with the queries (Ren et al. 2018, "
                        "Eq. 4); assignment assigns queries to classes one-to-one (it exploits "
                        "the episodes' equal number of queries a class). Default: off")
    e.add_argument("--refine-steps", type=_int_at_least(1), default=None, metavar="N",
                   help="with --transductive softkmeans, N refinement steps (default 1)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--no-progress", action="store_true",
                   help="no progress bar (shown on stderr when it is a terminal)")
    _common(e)

    b = sub.add_parser("bench", help="benchmark against PyTorch, JAX and HIPS autograd",
                       description="Runs benchmarks/run.py from a source checkout; extra "
                                   "arguments are passed on (see its --help).")
    b.add_argument("args", nargs=argparse.REMAINDER, help="arguments for benchmarks/run.py")

    p = sub.add_parser("plot", help="PNG learning curves (and the sinusoid adaptation figure)",
                       formatter_class=_HelpFormatter)
    p.add_argument("run", help="run directory")
    p.add_argument("--out", help="folder for the PNGs (default: the run directory)")
    _common(p)
    parser.subcommands = {"train": t, "eval": e, "bench": b, "plot": p}
    return parser


class _Formatter(argparse.RawDescriptionHelpFormatter, _HelpFormatter):
    """Defaults shown, and the epilog's table kept as written."""


def _fail(parser, message):
    parser.exit(2, f"scratchmeta: error: {message}\n")


def _check_out_dir(parser, path, flag="--out"):
    """`path` must be a directory or creatable as one, and writable: checked before any work."""
    if os.path.exists(path) and not os.path.isdir(path):
        _fail(parser, f"{flag} {path} is an existing file, not a directory")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        _fail(parser, f"{flag} {path}: {parent} is a file, so no directory can be made under it")
    if not os.access(parent, os.W_OK | os.X_OK):
        _fail(parser, f"{flag} {path}: {parent} is not writable")


def _check_data_root(parser, path, task):
    """A dataset folder must be a folder; Omniglot's must exist (glyphs' cache is made)."""
    if path is None:
        return
    if os.path.exists(path) and not os.path.isdir(path):
        _fail(parser, f"--data-root {path} is a file, not a folder")
    if not os.path.exists(path) and task == "omniglot":
        _fail(parser, f"--data-root {path} does not exist")


def _check_size(parser, config, batch):
    """Bound what one step would draw before anything is allocated."""
    task = config["task"]
    if task["name"] == "sinusoid":
        ways, shots, queries = 1, task.get("k_support", 1), task.get("k_query", 1)
    else:
        ways, shots, queries = task.get("n_way", 1), task.get("k_shot", 1), task.get("n_query", 1)
    points = batch * ways * (shots + queries)
    if task["name"] == "linreg":                 # a prompt of n points: attention is 2n x 2n
        ways, shots, queries = 1, 2 * task.get("n_points", 1), 0
        points = batch * shots ** 2
    if points > MAX_POINTS:
        _fail(parser, f"this request draws {points:.3g} examples at once ({batch} tasks x {ways} "
                      f"ways x ({shots} shots + {queries} queries)); the bound is {MAX_POINTS:.0e}: "
                      f"use fewer shots, queries, ways or tasks per batch")


def _apply_backend(parser, args, run_config=None):
    """--backend and --dtype; on an existing run, --dtype must be the run's own."""
    if run_config is not None and getattr(args, "dtype", None) \
            and args.dtype != run_config.get("dtype", "float64"):
        _fail(parser, f"--dtype {args.dtype}: the run was trained in "
                      f"{run_config.get('dtype', 'float64')}, and its checkpoint is used as it is")
    try:
        if getattr(args, "backend", None):
            backend.set_backend(args.backend)
        if getattr(args, "dtype", None):
            backend.set_default_dtype(args.dtype)
    except (RuntimeError, ValueError) as e:
        _fail(parser, str(e))


def _run_config(parser, run_dir):
    """A run directory's validated config.json, or exit 2 naming what is wrong."""
    from . import runs, train
    path = os.path.join(run_dir, runs.CONFIG)
    if not os.path.isfile(path):
        _fail(parser, f"{run_dir} is not a run directory (no {runs.CONFIG})")
    try:
        return train.validate_config(runs.read_json(path), path)
    except ValueError as e:
        _fail(parser, str(e))


RESUME_FLAGS = ("task", "shots", "ways", "queries", "data_root", "noise_std", "within_alphabet",
                "steps", "meta_batch",
                "lr", "inner_lr", "inner_steps", "init", "width", "depth", "heads", "train_ways",
                "eval_every", "eval_tasks", "checkpoint_every")


def cmd_train(parser, args):
    from . import train
    if args.resume:
        if args.algorithm or args.out:
            _fail(parser, "--resume DIR continues a run as configured: give no algorithm or --out")
        given = [f"--{k.replace('_', '-')}" for k in RESUME_FLAGS if getattr(args, k) is not None]
        given += ["--first-order"] if args.first_order else []
        given += ["--no-augment"] if args.no_augment else []
        given += ["--seed"] if args.seed is not None else []
        config = _run_config(parser, args.resume)
        if given:
            _fail(parser, f"--resume continues the run as its config.json says (steps "
                          f"{config['steps']}, seed {config.get('seed')}); {' '.join(given)} would "
                          f"be ignored: start a new run with --out to change settings")
        _apply_backend(parser, args, config)
        try:
            train.run(None, args.resume, resume=True, progress=not args.no_progress)
        except (ValueError, FileNotFoundError) as e:
            _fail(parser, str(e))
        print(f"resumed and finished: {args.resume}")
        return 0
    if not args.algorithm:
        _fail(parser, "name an algorithm (e.g. `scratchmeta train maml`), or --resume DIR")
    if not args.out:
        _fail(parser, "--out DIR is required: the run directory to create")
    _check_out_dir(parser, args.out)
    if os.path.exists(os.path.join(args.out, "config.json")):
        _fail(parser, f"{args.out} already holds a run; use --resume {args.out} or another --out")
    _apply_backend(parser, args)
    task = args.task or DEFAULT_TASK[args.algorithm]
    if task == "omniglot" and not args.data_root:
        _fail(parser, "--task omniglot needs --data-root DIR: the folder holding "
                      "images_background/ and images_evaluation/ (Omniglot is never downloaded)")
    if args.first_order and args.algorithm != "maml":
        _fail(parser, "--first-order applies to maml only (fomaml is maml --first-order)")
    if args.inner_steps and args.inner_steps > MAX_INNER_STEPS:
        _fail(parser, f"--inner-steps {args.inner_steps} is more than {MAX_INNER_STEPS}: every "
                      f"meta-step would run them all (and keep their graph)")
    size = {k: getattr(args, k) for k in ("width", "depth", "heads") if getattr(args, k)}
    if size and args.algorithm != "icl":
        _fail(parser, f"--{'/--'.join(size)} applies to the transformer (scratchmeta train icl)")
    algo = {}
    if args.inner_lr is not None:
        algo["inner_lr"] = args.inner_lr
    if args.inner_steps:
        algo["inner_steps"] = args.inner_steps
    if args.first_order:
        algo["first_order"] = True
    if args.train_ways:
        algo["train_ways"] = args.train_ways
    try:
        overrides = {"task": task_overrides(task, args.shots, args.ways, args.queries,
                                            args.data_root, args.noise_std, args.within_alphabet),
                     "algo": algo, "model": dict({"init": args.init} if args.init else {}, **size),
                     "optimizer": {"lr": args.lr} if args.lr else {},
                     "steps": args.steps, "meta_batch": args.meta_batch,
                     "seed": 0 if args.seed is None else args.seed,
                     "eval_every": args.eval_every, "eval_tasks": args.eval_tasks,
                     "checkpoint_every": args.checkpoint_every,
                     "dtype": args.dtype}
        _check_data_root(parser, args.data_root, task)
        config = train.build_config(args.algorithm, task, overrides)
        if args.no_augment:
            if not config["task"].get("augment"):
                _fail(parser, f"--no-augment: the {args.algorithm} recipe on {task} does not "
                              f"augment its training images")
            config["task"]["augment"] = None
        if args.init and config["model"].get("model") != "mlp":
            _fail(parser, "--init applies to MLP models (the sinusoid task)")
        config.setdefault("dtype", backend.get_default_dtype().__name__)   # recorded for resume
        _check_size(parser, config, config["meta_batch"])
        if config.get("eval_every"):
            _check_size(parser, config, min(config.get("eval_tasks", 100), 100))
        # build everything once before any work: bad ways/shots/data fail here
        from .algorithms import make_learner
        make_learner(config)
        train.make_sampler(config, "train")
        train.make_sampler(config, "test")
    except KeyError as e:
        _fail(parser, str(e).strip("'\""))
    except (ValueError, FileNotFoundError) as e:
        _fail(parser, str(e))
    train.run(config, args.out, progress=not args.no_progress)
    print(f"finished: {args.out}  (next: scratchmeta eval {args.out})")
    return 0


def cmd_eval(parser, args):
    from . import evaluation, runs
    if not os.path.isdir(args.run):
        _fail(parser, f"{args.run} is not a directory")
    config = _run_config(parser, args.run)
    _apply_backend(parser, args, config)
    _check_data_root(parser, args.data_root, config["task"]["name"])
    if args.inner_steps is not None and args.inner_steps > MAX_INNER_STEPS:
        _fail(parser, f"--inner-steps {args.inner_steps} is more than {MAX_INNER_STEPS}")
    if args.tta_queries and args.tta == 1:
        _fail(parser, "--tta-queries needs --tta M with M > 1 (the views to average)")
    if args.refine_steps is not None and args.transductive != "softkmeans":
        _fail(parser, "--refine-steps needs --transductive softkmeans")
    try:
        task = dict(config["task"], **task_overrides(config["task"]["name"], args.shots, args.ways,
                                                     args.queries, args.data_root, args.noise_std))
        _check_size(parser, dict(config, task=task), min(args.batch_size, args.tasks))
        report = evaluation.evaluate_run(args.run, shots=args.shots, ways=args.ways,
                                         queries=args.queries, inner_steps=args.inner_steps,
                                         n_tasks=args.tasks, batch_size=args.batch_size,
                                         seed=args.seed, baselines=not args.no_baselines,
                                         data_root=args.data_root, noise_std=args.noise_std,
                                         within_alphabet=args.within_alphabet,
                                         tta=args.tta, tta_queries=args.tta_queries,
                                         transductive=args.transductive,
                                         refine_steps=args.refine_steps,
                                         progress=not args.no_progress and sys.stderr.isatty())
    except (ValueError, FileNotFoundError) as e:
        _fail(parser, str(e))
    if args.json:
        print(runs.dumps(report, indent=2))          # valid JSON: NaN (one task's CI) as null
    else:
        print(evaluation.format_report(report))
    return 0


def cmd_bench(parser, args):
    import runpy
    here = os.path.dirname(os.path.abspath(__file__))
    script = os.path.join(os.path.dirname(here), "benchmarks", "run.py")
    if not os.path.exists(script):
        _fail(parser, "benchmarks/run.py not found: `scratchmeta bench` runs from a source "
                      "checkout (git clone, then pip install -e '.[bench]')")
    sys.argv = [script] + list(args.args)
    runpy.run_path(script, run_name="__main__")
    return 0


def cmd_plot(parser, args):
    from . import plots
    if not os.path.isdir(args.run):
        _fail(parser, f"{args.run} is not a directory")
    _apply_backend(parser, args, _run_config(parser, args.run))
    if args.out:
        _check_out_dir(parser, args.out)
    try:
        paths = plots.plot_run(args.run, out=args.out)
    except (ValueError, FileNotFoundError, ImportError) as e:
        _fail(parser, str(e))
    for path in paths:
        print(path)
    return 0


def main(argv=None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "bench":              # the subcommand's usage, not the top level's
        parser.subcommands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "bench":
        args.args = list(args.args) + extra
    if argv is None and backend.get_backend() == "numpy":
        backend.reuse_host_memory()        # large temporaries reuse memory (docs/performance.md)
    if argv is None:     # non-finite values are checked and reported by the loop, in one line
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="scratchmeta")
    handler = {"train": cmd_train, "eval": cmd_eval, "bench": cmd_bench, "plot": cmd_plot}[args.command]
    try:
        return handler(parser, args)
    except KeyboardInterrupt:
        print("\ninterrupted: the last checkpoint is kept; continue with --resume", file=sys.stderr)
        return 130
    except FloatingPointError as e:
        print(f"scratchmeta: stopped: {e}", file=sys.stderr)
        return 1
    except OSError as e:                 # disk full, read-only: the message names the file
        if os.environ.get("SCRATCHMETA_DEBUG"):
            raise
        name = f" {e.filename}:" if getattr(e, "filename", None) and str(e.filename) not in str(e) else ""
        print(f"scratchmeta: error:{name} {e.strerror if name else e}", file=sys.stderr)
        return 1
    except MemoryError as e:
        print(f"scratchmeta: error: out of memory ({e}); use smaller sizes", file=sys.stderr)
        return 1
    except Exception as e:  # one clear line instead of a traceback; SCRATCHMETA_DEBUG=1 shows it
        if os.environ.get("SCRATCHMETA_DEBUG"):
            raise
        print(f"scratchmeta: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
