"""The task registry: every task family by name, as algorithms/__init__.py names algorithms.

`make_sampler(config, split)` builds the sampler of `config["task"]["name"]`
for split "train" or "test" (held out); `load_dataset(name)` loads an image
set. A new task is one entry of TASKS: a `Task` with its kind, the config
keys that the CLI's --shots/--ways/--queries/--data-root/--within-alphabet
set, and how to build its sampler.

Held-out tasks are an independent stream: seed + HELD_OUT_SEED_OFFSET.
"""
import dataclasses

from .datasets import load_digits
from .glyphs import load_glyphs
from .linreg import LinearRegressionPrompts
from .omniglot import load_omniglot
from .omniglot_minimal import check_reflections, load_omniglot_minimal
from .regression import Sinusoid

HELD_OUT_SEED_OFFSET = 1_000_003
FLAGS = ("shots", "ways", "queries", "data_root", "noise_std", "within_alphabet")


@dataclasses.dataclass(frozen=True)
class Task:
    """One task family.

    kind: "regression", "classification" or "prompts" (in-context regression)
    make_sampler: (task config dict, split, seed, algo config dict) -> sampler
    flags: CLI flag name (FLAGS) -> the config["task"] key it sets
    description: one line for --help and error messages
    """

    name: str
    kind: str
    make_sampler: object
    flags: dict
    description: str


# -- datasets -----------------------------------------------------------------------
def _load_glyphs(root=None, **kw):
    if root is not None:
        kw.setdefault("cache_dir", root)
    return load_glyphs(**kw)


def _load_omniglot(root=None, **kw):
    if root is None:
        raise ValueError("dataset 'omniglot' needs root=<folder holding "
                         "images_background/ and images_evaluation/>")
    return load_omniglot(root, **kw)


def _no_root(name, loader):
    def load(root=None, **kw):
        if root is not None:
            raise ValueError(f"dataset {name!r} is bundled and takes no root")
        return loader(**kw)
    return load


DATASETS = {"glyphs": _load_glyphs, "omniglot": _load_omniglot,
            "omniglot-minimal": _no_root("omniglot-minimal", load_omniglot_minimal),
            "digits": _no_root("digits", load_digits)}
_LOADED = {}


def load_dataset(name, root=None, **kw):
    """An image set by name: "glyphs" | "omniglot" | "omniglot-minimal" | "digits".

    root is the Omniglot folder for "omniglot" (required), the cache folder
    for "glyphs" (optional, as cache_dir), and must be None for the bundled
    "omniglot-minimal" and "digits".
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name](root=root, **kw)


# options of a dataset that a task config may set (config["task"][key]), by dataset, and
# their checks (before the cache: True and 1 are the same key of a dict)
DATASET_OPTIONS = {"omniglot-minimal": ("reflections",)}
_OPTION_CHECKS = {"reflections": check_reflections}


def dataset(name, root=None, **options):
    """load_dataset with the given options (default: none), loaded once per process and options."""
    key = (name, root, tuple(sorted(options.items())))
    if key not in _LOADED:
        _LOADED[key] = load_dataset(name, root=root, **options)
    return _LOADED[key]


def _dataset_options(task):
    """The dataset options that config["task"] sets; one its dataset does not have is an error."""
    options = {}
    for key in sorted({k for keys in DATASET_OPTIONS.values() for k in keys}):
        if key not in task:
            continue
        if key not in DATASET_OPTIONS.get(task["name"], ()):
            where = [n for n, keys in DATASET_OPTIONS.items() if key in keys]
            raise ValueError(f"task.{key} applies to {', '.join(where)}, not {task['name']!r}")
        options[key] = _OPTION_CHECKS[key](task[key])
    if options.get("reflections") is False:          # the default: the same dataset object as without
        del options["reflections"]
    return options


# -- samplers -------------------------------------------------------------------------
def _episodes(task, split, seed, algo):
    """N-way K-shot episodes of an image set (task["name"] names the dataset)."""
    data = dataset(task["name"], task.get("data_root"), **_dataset_options(task))
    n_way, k_shot, n_query = task["n_way"], task["k_shot"], task["n_query"]
    augment = None                 # held-out episodes are never augmented
    if split == "train":   # ProtoNets may train on more ways (and other queries) than they test
        n_way = algo.get("train_ways") or n_way
        n_query = algo.get("train_queries") or n_query
        k_shot = algo.get("train_shots") or k_shot      # Reptile: --train-shots
        augment = task.get("augment")                   # random affine distortions (tasks.augment)
    return data.sampler(split, n_way, k_shot, n_query, seed=seed,
                        within_group=bool(task.get("within_alphabet")), augment=augment)


def _sinusoid(task, split, seed, algo):
    return Sinusoid(k_support=task["k_support"], k_query=task["k_query"], seed=seed)


_PROMPT_KEYS = ("n_dims", "n_points", "noise_std", "sparsity", "curriculum", "dtype")


def _prompts(task, split, seed, algo):
    kw = {k: v for k, v in task.items() if k in _PROMPT_KEYS}
    if split != "train":
        kw.pop("curriculum", None)                 # held-out prompts: always the full task
    return LinearRegressionPrompts(**kw, seed=seed)


_EPISODE_FLAGS = {"shots": "k_shot", "ways": "n_way", "queries": "n_query"}

TASKS = {t.name: t for t in (
    Task("sinusoid", "regression", _sinusoid, {"shots": "k_support", "queries": "k_query"},
         "sine waves, Finn et al. 2017 Sec. 5.1"),
    Task("linreg", "prompts", _prompts, {"noise_std": "noise_std"},
         "linear-regression prompts for in-context learning, Garg et al. 2022"),
    Task("glyphs", "classification", _episodes, dict(_EPISODE_FLAGS, data_root="data_root"),
         "synthetic glyphs rendered from DejaVu fonts (offline demo)"),
    Task("omniglot", "classification", _episodes,
         dict(_EPISODE_FLAGS, data_root="data_root", within_alphabet="within_alphabet"),
         "Omniglot from a user's folder (--data-root), Vinyals et al.'s 1200/423 split"),
    Task("omniglot-minimal", "classification", _episodes,
         dict(_EPISODE_FLAGS, within_alphabet="within_alphabet"),
         "Omniglot's two minimal background sets, bundled; split by alphabet"),
    Task("digits", "classification", _episodes, dict(_EPISODE_FLAGS),
         "scikit-learn's 8x8 digits (a sanity check)"),
)}
CLASSIFICATION = tuple(n for n, t in TASKS.items() if t.kind == "classification")
# where each flag means something, for the error that refuses it elsewhere
_SUPPORT_QUERY = ("tasks with support and query sets (a linreg prompt is scored at every "
                  "number of in-context examples k; see by_k)")
WHERE = {"shots": _SUPPORT_QUERY, "queries": _SUPPORT_QUERY,
         "ways": "classification tasks",
         "data_root": "dataset tasks (omniglot; glyphs: its cache)",
         "noise_std": "the linreg task (label noise)",
         "within_alphabet": "tasks with alphabets (omniglot, omniglot-minimal)"}


def get_task(name):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]


def task_overrides(name, **flags):
    """CLI flag values as changes to config["task"].

    flags: any of FLAGS; None (or False) means "not given". A flag the task
    does not have is an error, never silently ignored (a sinusoid run has no
    ways): WHERE says which tasks it applies to.
    """
    task = get_task(name)
    unknown = sorted(set(flags) - set(FLAGS))
    if unknown:
        raise ValueError(f"unknown task flags {unknown}; known: {list(FLAGS)}")
    over = {}
    for flag, value in flags.items():
        if value is None or value is False:
            continue
        if flag not in task.flags:
            raise ValueError(f"--{flag.replace('_', '-')} applies to {WHERE[flag]}, not {name!r}")
        over[task.flags[flag]] = value
    return over


def make_sampler(config, split, seed=None):
    """The sampler of config["task"] for split "train", or "test" (held out, another stream)."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'")
    task = config["task"]
    seed = config.get("seed", 0) if seed is None else seed
    seed = seed if split == "train" else seed + HELD_OUT_SEED_OFFSET
    return get_task(task["name"]).make_sampler(task, split, seed, config.get("algo") or {})
