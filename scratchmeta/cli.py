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

from . import backend
from .algorithms import ALGORITHMS
from .evaluation import task_overrides
from .tasks.registry import TASKS

DEFAULT_TASK = {"maml": "sinusoid", "fomaml": "sinusoid", "reptile": "sinusoid",
                "metasgd": "sinusoid", "anil": "sinusoid", "cnp": "sinusoid",
                "protonet": "glyphs", "matching": "glyphs", "icl": "linreg"}


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
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
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
                                   "checkpoint.npz to --out (or continues --resume DIR).")
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
    t.add_argument("--eval-every", type=_int_at_least(0), help="steps between held-out evaluations (0: never)")
    t.add_argument("--eval-tasks", type=_int_at_least(1), help="held-out tasks per evaluation during training")
    t.add_argument("--checkpoint-every", type=_int_at_least(1), help="steps between checkpoints")
    t.add_argument("--seed", type=_int_at_least(0), default=0, help="makes the run reproducible")
    t.add_argument("--out", help="run directory to create")
    t.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(t)

    e = sub.add_parser("eval", help="evaluate a run on held-out tasks (mean and 95%% CI)",
                       description="Evaluate the last checkpoint of RUN on held-out tasks.")
    e.add_argument("run", help="run directory")
    _task_flags(e)
    e.add_argument("--inner-steps", type=_int_at_least(0), help="adaptation steps at test time")
    e.add_argument("--tasks", type=_int_at_least(1), default=600, help="held-out tasks (default 600)")
    e.add_argument("--batch-size", type=_int_at_least(1), default=100, help="tasks evaluated at once")
    e.add_argument("--seed", type=_int_at_least(0), default=None, help="held-out task seed")
    e.add_argument("--no-baselines", action="store_true", help="skip the baselines")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    _common(e)

    b = sub.add_parser("bench", help="benchmark against PyTorch, JAX and HIPS autograd",
                       description="Runs benchmarks/run.py from a source checkout; extra "
                                   "arguments are passed on (see its --help).")
    b.add_argument("args", nargs=argparse.REMAINDER, help="arguments for benchmarks/run.py")

    p = sub.add_parser("plot", help="PNG learning curves (and the sinusoid adaptation figure)")
    p.add_argument("run", help="run directory")
    p.add_argument("--out", help="folder for the PNGs (default: the run directory)")
    _common(p)
    return parser


def _fail(parser, message):
    parser.exit(2, f"scratchmeta: error: {message}\n")


def _apply_backend(parser, args):
    try:
        if getattr(args, "backend", None):
            backend.set_backend(args.backend)
        if getattr(args, "dtype", None):
            backend.set_default_dtype(args.dtype)
    except (RuntimeError, ValueError) as e:
        _fail(parser, str(e))


def cmd_train(parser, args):
    from . import train
    if args.resume:
        if args.algorithm or args.out:
            _fail(parser, "--resume DIR continues a run as configured: give no algorithm or --out")
        if not os.path.exists(os.path.join(args.resume, "config.json")):
            _fail(parser, f"--resume: {args.resume} is not a run directory (no config.json)")
        _apply_backend(parser, args)
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
    if os.path.exists(os.path.join(args.out, "config.json")):
        _fail(parser, f"{args.out} already holds a run; use --resume {args.out} or another --out")
    _apply_backend(parser, args)
    task = args.task or DEFAULT_TASK[args.algorithm]
    if task == "omniglot" and not args.data_root:
        _fail(parser, "--task omniglot needs --data-root DIR: the folder holding "
                      "images_background/ and images_evaluation/ (Omniglot is never downloaded)")
    if args.first_order and args.algorithm != "maml":
        _fail(parser, "--first-order applies to maml only (fomaml is maml --first-order)")
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
                     "steps": args.steps, "meta_batch": args.meta_batch, "seed": args.seed,
                     "eval_every": args.eval_every, "eval_tasks": args.eval_tasks,
                     "checkpoint_every": args.checkpoint_every,
                     "dtype": args.dtype}
        config = train.build_config(args.algorithm, task, overrides)
        if args.init and config["model"].get("model") != "mlp":
            _fail(parser, "--init applies to MLP models (the sinusoid task)")
        config.setdefault("dtype", backend.get_default_dtype().__name__)   # recorded for resume
        # build everything once before any work: bad ways/shots/data fail here
        from .algorithms import make_learner
        make_learner(config)
        train.make_sampler(config, "train")
        train.make_sampler(config, "test")
    except (ValueError, FileNotFoundError, KeyError) as e:
        _fail(parser, str(e).strip("'\""))
    train.run(config, args.out, progress=not args.no_progress)
    print(f"finished: {args.out}  (next: scratchmeta eval {args.out})")
    return 0


def cmd_eval(parser, args):
    from . import evaluation
    _apply_backend(parser, args)
    if not os.path.isdir(args.run):
        _fail(parser, f"{args.run} is not a directory")
    try:
        report = evaluation.evaluate_run(args.run, shots=args.shots, ways=args.ways,
                                         queries=args.queries, inner_steps=args.inner_steps,
                                         n_tasks=args.tasks, batch_size=args.batch_size,
                                         seed=args.seed, baselines=not args.no_baselines,
                                         data_root=args.data_root, noise_std=args.noise_std,
                                         within_alphabet=args.within_alphabet)
    except (ValueError, FileNotFoundError) as e:
        _fail(parser, str(e))
    if args.json:
        print(json.dumps(report, indent=2))          # by_k stays in numeric order
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
    _apply_backend(parser, args)
    try:
        paths = plots.plot_run(args.run, out=args.out)
    except (ValueError, FileNotFoundError, ImportError) as e:
        _fail(parser, str(e))
    for path in paths:
        print(path)
    return 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None and backend.get_backend() == "numpy":
        backend.reuse_host_memory()        # large temporaries reuse memory (docs/performance.md)
    handler = {"train": cmd_train, "eval": cmd_eval, "bench": cmd_bench, "plot": cmd_plot}[args.command]
    try:
        return handler(parser, args)
    except KeyboardInterrupt:
        print("\ninterrupted: the last checkpoint is kept; continue with --resume", file=sys.stderr)
        return 130
    except FloatingPointError as e:
        print(f"scratchmeta: stopped: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # one clear line instead of a traceback; SCRATCHMETA_DEBUG=1 shows it
        if os.environ.get("SCRATCHMETA_DEBUG"):
            raise
        print(f"scratchmeta: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
