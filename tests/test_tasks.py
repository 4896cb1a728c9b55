"""Task samplers: MAML sinusoids, generic function tasks, N-way K-shot episodes."""
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchmeta import backend
from scratchmeta.tasks import EpisodeSampler, FunctionTasks, Sinusoid

to_np = backend.to_numpy


def as_host(batch):
    return {name: to_np(value) for name, value in batch.items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(to_np(a[name]), to_np(b[name]), err_msg=name)


# ---------------------------------------------------------------- sinusoid

def test_sinusoid_shapes_dtypes_and_backend():
    batch = Sinusoid(k_support=5, k_query=7, seed=1).sample(3)
    shapes = {name: tuple(v.shape) for name, v in batch.items()}
    assert shapes == {"support_x": (3, 5, 1), "support_y": (3, 5, 1),
                      "query_x": (3, 7, 1), "query_y": (3, 7, 1),
                      "amplitude": (3,), "phase": (3,)}
    for value in batch.values():
        assert backend.is_array(value)
        assert value.dtype == backend.resolve_dtype(None)


def test_sinusoid_follows_finn_et_al_ranges_and_function():
    batch = as_host(Sinusoid(seed=0).sample(500))
    a, phi = batch["amplitude"], batch["phase"]
    assert a.min() >= 0.1 and a.max() <= 5.0
    assert phi.min() >= 0.0 and phi.max() <= math.pi
    for part in ("support", "query"):
        x, y = batch[f"{part}_x"], batch[f"{part}_y"]
        assert x.min() >= -5.0 and x.max() <= 5.0
        # y = A sin(x - phi), per task
        np.testing.assert_allclose(y, a[:, None, None] * np.sin(x - phi[:, None, None]),
                                   rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(y, Sinusoid.function(a[:, None, None],
                                                        phi[:, None, None], x))


def test_sinusoid_statistics_are_uniform():
    stats = pytest.importorskip("scipy.stats")
    batch = as_host(Sinusoid(k_support=5, k_query=5, seed=123).sample(20000))
    # U[lo, hi] has mean (lo+hi)/2, variance (hi-lo)^2/12; the KS test checks the shape
    for values, lo, hi in ((batch["amplitude"], 0.1, 5.0), (batch["phase"], 0.0, math.pi),
                           (batch["support_x"].ravel(), -5.0, 5.0)):
        assert abs(values.mean() - (lo + hi) / 2) < 0.03 * (hi - lo)
        assert abs(values.var() - (hi - lo) ** 2 / 12) < 0.03 * (hi - lo) ** 2 / 12
        assert stats.kstest(values, stats.uniform(lo, hi - lo).cdf).pvalue > 1e-3
    # support and query inputs are independent draws
    assert abs(np.corrcoef(batch["support_x"][:, 0, 0], batch["query_x"][:, 0, 0])[0, 1]) < 0.05


def test_sinusoid_custom_ranges_and_function_for_plots():
    batch = as_host(Sinusoid(amplitude=(2.0, 2.0), phase=(0.5, 0.5), x_range=(0, 1),
                             seed=3).sample(4))
    assert np.all(batch["amplitude"] == 2.0) and np.all(batch["phase"] == 0.5)
    assert batch["query_x"].min() >= 0 and batch["query_x"].max() <= 1
    grid = np.linspace(-5, 5, 11)
    np.testing.assert_allclose(Sinusoid.function(2.0, 0.5, grid), 2.0 * np.sin(grid - 0.5))


def test_sinusoid_seed_reproducible_and_seeds_differ():
    assert_same(Sinusoid(seed=7).sample(4), Sinusoid(seed=7).sample(4))
    a, b = Sinusoid(seed=7).sample(4), Sinusoid(seed=8).sample(4)
    assert not np.array_equal(to_np(a["amplitude"]), to_np(b["amplitude"]))


def test_sinusoid_state_dict_round_trip_through_json():
    sampler = Sinusoid(seed=5)
    sampler.sample(3)
    state = json.loads(json.dumps(sampler.state_dict()))
    later = [sampler.sample(2), sampler.sample(4)]
    sampler.sample(10)
    sampler.load_state_dict(state)
    again = [sampler.sample(2), sampler.sample(4)]
    for x, y in zip(later, again):
        assert_same(x, y)
    # and a brand-new sampler picks up the stream too
    fresh = Sinusoid(seed=999)
    fresh.load_state_dict(state)
    assert_same(fresh.sample(2), later[0])


def test_sinusoid_config_rebuilds_the_same_sampler():
    sampler = Sinusoid(k_support=3, k_query=4, amplitude=(1, 2), seed=11, dtype="float32")
    config = json.loads(json.dumps(sampler.config()))
    assert config["k_support"] == 3 and config["amplitude"] == [1.0, 2.0]
    assert config["dtype"] == "float32"
    assert_same(Sinusoid(**config).sample(3), sampler.sample(3))


def test_sinusoid_dtype_follows_default_and_argument():
    old = backend.get_default_dtype()
    try:
        backend.set_default_dtype("float32")
        assert Sinusoid(seed=0).sample(2)["support_x"].dtype == np.float32
    finally:
        backend.set_default_dtype(old)
    assert Sinusoid(seed=0, dtype="float32").sample(2)["query_y"].dtype == np.float32
    assert Sinusoid(seed=0).sample(2)["query_y"].dtype == np.float64


@pytest.mark.parametrize("kwargs, call, match", [
    ({"k_support": 0}, None, "k_support"),
    ({"k_query": 0}, None, "k_query"),
    ({"k_support": 2.5}, None, "k_support must be an integer"),
    ({"k_query": True}, None, "k_query must be an integer"),
    ({"amplitude": (5.0, 0.1)}, None, "amplitude range .* inverted"),
    ({"phase": (3.0, 1.0)}, None, "phase range .* inverted"),
    ({"x_range": (5, -5)}, None, "x_range range .* inverted"),
    ({"x_range": (0, float("inf"))}, None, "x_range"),
    ({"amplitude": 3.0}, None, "amplitude must be a"),
    ({"seed": -1}, None, "seed"),
    ({}, 0, "n_tasks"),
    ({}, 2.0, "n_tasks must be an integer"),
])
def test_sinusoid_bad_arguments_raise_value_error(kwargs, call, match):
    with pytest.raises(ValueError, match=match):
        Sinusoid(**kwargs).sample(call)


def test_load_state_dict_rejects_garbage():
    with pytest.raises(ValueError, match="state"):
        Sinusoid().load_state_dict({"rng": {"bit_generator": "MT19937"}})
    with pytest.raises(ValueError, match="rng"):
        Sinusoid().load_state_dict([1, 2])


@given(k=st.integers(1, 6), q=st.integers(1, 6), t=st.integers(1, 5), seed=st.integers(0, 2**32))
@settings(max_examples=25, deadline=None)
def test_sinusoid_shapes_and_resume_for_any_sizes(k, q, t, seed):
    sampler = Sinusoid(k_support=k, k_query=q, seed=seed)
    state = sampler.state_dict()
    first = sampler.sample(t)
    assert tuple(first["support_x"].shape) == (t, k, 1)
    assert tuple(first["query_y"].shape) == (t, q, 1)
    sampler.load_state_dict(state)
    assert_same(sampler.sample(t), first)


# ---------------------------------------------------------------- function tasks

def linear(x, params):
    # y = w . x + b, per task
    return np.einsum("tmd,td->tm", x, params["w"]) + params["b"][:, None]


def linear_params(rng, n_tasks):
    return {"w": rng.normal(size=(n_tasks, 2)), "b": rng.normal(size=n_tasks),
            "degree": np.ones(n_tasks, dtype=np.int64)}


def test_function_tasks_evaluate_the_user_function():
    tasks = FunctionTasks(linear, linear_params, k_support=4, k_query=6,
                          x_range=(-1, 1), x_dim=2, seed=2)
    batch = as_host(tasks.sample(5))
    assert batch["support_x"].shape == (5, 4, 2) and batch["support_y"].shape == (5, 4, 1)
    assert batch["query_x"].shape == (5, 6, 2) and batch["w"].shape == (5, 2)
    assert batch["degree"].dtype == np.int64        # integer parameters stay integers
    for part in ("support", "query"):
        x = batch[f"{part}_x"]
        assert np.abs(x).max() <= 1
        np.testing.assert_allclose(batch[f"{part}_y"][..., 0],
                                   linear(x, {"w": batch["w"], "b": batch["b"]}))
    config = json.loads(json.dumps(tasks.config()))
    assert config["fn"].endswith("linear") and config["x_dim"] == 2


def test_function_tasks_state_round_trip():
    tasks = FunctionTasks(linear, linear_params, x_dim=2, seed=4)
    state = json.loads(json.dumps(tasks.state_dict()))
    first = tasks.sample(3)
    tasks.load_state_dict(state)
    assert_same(tasks.sample(3), first)


def test_function_tasks_validate_callables_and_shapes():
    with pytest.raises(TypeError, match="fn must be callable"):
        FunctionTasks(3, linear_params)
    bad_sampler = FunctionTasks(linear, lambda rng, t: {"w": rng.normal(size=(t + 1, 2)),
                                                        "b": np.zeros(t)}, x_dim=2)
    with pytest.raises(ValueError, match="'w' .*n_tasks=3"):
        bad_sampler.sample(3)
    bad_fn = FunctionTasks(lambda x, p: x[:, :1], linear_params, x_dim=2)
    with pytest.raises(ValueError, match="fn returned shape"):
        bad_fn.sample(3)
    with pytest.raises(ValueError, match="x_dim"):
        FunctionTasks(linear, linear_params, x_dim=0)


# ---------------------------------------------------------------- episodes

def toy_dataset(counts, offset=100):
    """Class offset+c has counts[c] examples; image i is filled with the value i."""
    labels = np.repeat(np.arange(len(counts)) + offset, counts)
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(labels.size)]       # interleave the classes
    images = np.broadcast_to(np.arange(labels.size, dtype=np.float64)[:, None, None, None],
                             (labels.size, 1, 2, 3)).copy()
    return images, labels


COUNTS = [6, 7, 8, 9, 10, 6, 7, 8, 9, 10, 6, 7]
TRAIN = np.arange(100, 108)
TEST = np.arange(108, 112)
FLOAT_LABELS, SHORT_IMAGES = object(), object()     # markers for the table below


def test_episode_shapes_labels_and_class_major_order():
    images, labels = toy_dataset(COUNTS)
    sampler = EpisodeSampler(images, labels, TRAIN, n_way=3, k_shot=2, n_query=4, seed=0)
    batch = sampler.sample(6)
    assert tuple(batch["support_x"].shape) == (6, 6, 1, 2, 3)
    assert tuple(batch["query_x"].shape) == (6, 12, 1, 2, 3)
    assert batch["support_y"].dtype == np.int64 and batch["query_y"].dtype == np.int64
    batch = as_host(batch)
    np.testing.assert_array_equal(batch["support_y"], np.tile([0, 0, 1, 1, 2, 2], (6, 1)))
    np.testing.assert_array_equal(batch["query_y"], np.tile(np.repeat([0, 1, 2], 4), (6, 1)))
    # every image really is an example of the class its label stands for
    for part in ("support", "query"):
        index = batch[f"{part}_x"][:, :, 0, 0, 0].astype(int)          # image i holds value i
        true_class = labels[index]
        np.testing.assert_array_equal(
            true_class, np.take_along_axis(batch["classes"], batch[f"{part}_y"], axis=1))


def test_training_episodes_never_touch_test_classes_or_repeat_examples():
    images, labels = toy_dataset(COUNTS)
    sampler = EpisodeSampler(images, labels, TRAIN, n_way=5, k_shot=3, n_query=3, seed=1)
    classes, support, query = sampler.sample_indices(300)
    assert np.isin(classes, TRAIN).all() and not np.isin(labels[support], TEST).any()
    assert not np.isin(labels[query], TEST).any()
    both = np.concatenate([support, query], axis=1)
    for row, picked in zip(both, classes):
        assert np.unique(row).size == row.size               # no repeated example
        assert np.unique(picked).size == picked.size          # no repeated class
    # over many episodes every train class and every train example turns up
    assert set(np.unique(classes)) == set(TRAIN)
    assert set(np.unique(both)) == set(np.flatnonzero(np.isin(labels, TRAIN)))


def test_class_choice_is_uniform():
    images, labels = toy_dataset(COUNTS)
    sampler = EpisodeSampler(images, labels, TRAIN, n_way=2, k_shot=1, n_query=1, seed=3)
    classes, _, _ = sampler.sample_indices(8000)
    freq = np.bincount(classes.ravel() - 100, minlength=8) / classes.size
    assert np.abs(freq - 1 / 8).max() < 0.01
    # label 0 is any class equally often: the order of picked classes is random too
    first = np.bincount(classes[:, 0] - 100, minlength=8) / classes.shape[0]
    assert np.abs(first - 1 / 8).max() < 0.02


def test_episodes_seeded_and_resumable():
    images, labels = toy_dataset(COUNTS)
    make = lambda seed: EpisodeSampler(images, labels, TRAIN, 4, 1, 2, seed=seed)
    assert_same(make(9).sample(5), make(9).sample(5))
    assert not np.array_equal(make(9).sample_indices(5)[1], make(10).sample_indices(5)[1])
    sampler = make(9)
    sampler.sample(2)
    state = json.loads(json.dumps(sampler.state_dict()))
    later = sampler.sample(3)
    sampler.sample(7)
    sampler.load_state_dict(state)
    assert_same(sampler.sample(3), later)
    config = json.loads(json.dumps(sampler.config()))
    assert config["n_way"] == 4 and config["classes"] == TRAIN.tolist()


def test_n_way_can_use_every_class_of_the_split():
    # Snell et al.'s higher-way training: N = all classes of the split
    images, labels = toy_dataset(COUNTS)
    classes, _, _ = EpisodeSampler(images, labels, TRAIN, 8, 2, 4, seed=0).sample_indices(3)
    assert all(sorted(row) == TRAIN.tolist() for row in classes)


def test_episode_dtype_argument():
    images, labels = toy_dataset(COUNTS)
    batch = EpisodeSampler(images, labels, TRAIN, 2, 1, 1, dtype="float32").sample(1)
    assert batch["support_x"].dtype == np.float32 and batch["support_y"].dtype == np.int64


@pytest.mark.parametrize("change, match", [
    ({"n_way": 9}, r"n_way=9 .* classes in the split \(8\)"),
    ({"k_shot": 4, "n_query": 3}, r"class 100 has 6 examples .* 4 \+ 3 = 7"),
    ({"classes": []}, "split is empty"),
    ({"classes": [100, 100, 101]}, "repeated"),
    ({"classes": [100, 555, 556]}, r"not present in labels: \[555, 556\]"),
    ({"labels": FLOAT_LABELS}, "labels must be integers, got dtype float64"),
    ({"classes": [100.0, 101.0]}, "classes must be integers"),
    ({"images": SHORT_IMAGES}, "images and labels differ in length: 92 images vs 93 labels"),
    ({"n_way": 0}, "n_way must be >= 1"),
    ({"k_shot": 1.5}, "k_shot must be an integer"),
    ({"n_query": 0}, "n_query"),
    ({"seed": "x"}, "seed"),
])
def test_episode_bad_configurations_raise(change, match):
    images, labels = toy_dataset(COUNTS)
    args = {"images": images, "labels": labels, "classes": TRAIN, "n_way": 3,
            "k_shot": 2, "n_query": 2, "seed": 0}
    args.update(change)
    if args["labels"] is FLOAT_LABELS:
        args["labels"] = labels.astype(float)
    if args["images"] is SHORT_IMAGES:
        args["images"] = images[:-1]
    with pytest.raises(ValueError, match=match):
        EpisodeSampler(**args)


def test_n_episodes_must_be_positive_integer():
    images, labels = toy_dataset(COUNTS)
    sampler = EpisodeSampler(images, labels, TRAIN, 2, 1, 1)
    with pytest.raises(ValueError, match="n_episodes"):
        sampler.sample(0)


@given(data=st.data())
@settings(max_examples=40, deadline=None)
def test_episode_invariants_for_random_configurations(data):
    n_classes = data.draw(st.integers(1, 9), label="n_classes")
    counts = data.draw(st.lists(st.integers(2, 9), min_size=n_classes, max_size=n_classes))
    images, labels = toy_dataset(counts, offset=0)
    split = np.array(data.draw(st.lists(st.integers(0, n_classes - 1), min_size=1,
                                        unique=True)), dtype=np.int64)
    n_way = data.draw(st.integers(1, split.size))
    smallest = int(np.min(np.asarray(counts)[split]))
    k_shot = data.draw(st.integers(1, smallest - 1))
    n_query = data.draw(st.integers(1, smallest - k_shot))
    sampler = EpisodeSampler(images, labels, split, n_way, k_shot, n_query,
                             seed=data.draw(st.integers(0, 100)))
    classes, support, query = sampler.sample_indices(data.draw(st.integers(1, 4)))
    assert support.shape[1] == n_way * k_shot and query.shape[1] == n_way * n_query
    assert np.isin(classes, split).all()
    for c, s, q in zip(classes, support, query):
        both = np.concatenate([s, q])
        assert np.unique(both).size == both.size
        # class-major blocks: block j holds only examples of class c[j]
        np.testing.assert_array_equal(labels[s], np.repeat(c, k_shot))
        np.testing.assert_array_equal(labels[q], np.repeat(c, n_query))


# ---------------------------------------------------------------- within-group (alphabet) episodes

# TRAIN's 8 classes in three "alphabets": 0 has 3 classes, 1 has 4, 2 has 1
GROUPS = np.array([0, 0, 0, 1, 1, 1, 1, 2])


def test_within_group_episodes_never_mix_groups():
    images, labels = toy_dataset(COUNTS)
    sampler = EpisodeSampler(images, labels, TRAIN, 3, 1, 2, seed=4, groups=GROUPS)
    classes, support, query = sampler.sample_indices(500)
    group_of = dict(zip(TRAIN.tolist(), GROUPS.tolist()))
    picked = np.vectorize(group_of.get)(classes)                        # (E, N)
    assert (picked == picked[:, :1]).all()                              # one group per episode
    for part in (support, query):                                       # examples follow classes
        assert (np.vectorize(group_of.get)(labels[part]) == picked[:, :1]).all()
    # group 2 (1 class) cannot hold a 3-way episode; groups 0 and 1 each come up about half
    share = np.bincount(picked[:, 0], minlength=3) / len(picked)
    assert share[2] == 0 and abs(share[0] - 0.5) < 0.08
    # inside group 1 every class turns up
    assert set(classes[picked[:, 0] == 1].ravel()) == set(TRAIN[GROUPS == 1])


def test_without_groups_episodes_do_mix():
    images, labels = toy_dataset(COUNTS)
    classes, _, _ = EpisodeSampler(images, labels, TRAIN, 3, 1, 2, seed=4).sample_indices(200)
    group_of = dict(zip(TRAIN.tolist(), GROUPS.tolist()))
    picked = np.vectorize(group_of.get)(classes)
    assert (picked != picked[:, :1]).any()


def test_within_group_state_config_and_errors():
    images, labels = toy_dataset(COUNTS)
    sampler = EpisodeSampler(images, labels, TRAIN, 4, 1, 1, seed=2, groups=GROUPS)
    state = sampler.state_dict()
    first = sampler.sample_indices(5)
    sampler.load_state_dict(state)
    for a, b in zip(first, sampler.sample_indices(5)):
        np.testing.assert_array_equal(a, b)
    assert sampler.config()["groups"] == GROUPS.tolist()
    with pytest.raises(ValueError, match="larger than every group.*4 classes"):
        EpisodeSampler(images, labels, TRAIN, 5, 1, 1, groups=GROUPS)
    with pytest.raises(ValueError, match="one group per class: 3 groups for 8 classes"):
        EpisodeSampler(images, labels, TRAIN, 2, 1, 1, groups=GROUPS[:3])


# ---------------------------------------------------------------- the task registry

def test_registry_names_every_task_and_train_asks_it():
    import inspect

    from scratchmeta import train
    from scratchmeta.tasks import registry
    assert set(registry.TASKS) == {"sinusoid", "linreg", "glyphs", "omniglot",
                                   "omniglot-minimal", "digits"}
    assert set(registry.CLASSIFICATION) == {"glyphs", "omniglot", "omniglot-minimal", "digits"}
    # train.make_sampler has no per-task branches left: no task name in its source
    source = inspect.getsource(train.make_sampler)
    assert not any(f'"{name}"' in source for name in registry.TASKS)
    with pytest.raises(ValueError, match="unknown task 'mnist'"):
        registry.make_sampler({"task": {"name": "mnist"}}, "train")


def test_a_new_task_is_one_registry_entry(monkeypatch):
    from scratchmeta import train
    from scratchmeta.tasks import registry
    entry = registry.Task("sine-5", "regression",
                          lambda task, split, seed, algo: Sinusoid(k_support=5, k_query=3, seed=seed),
                          {"shots": "k_support"}, "five-shot sines")
    monkeypatch.setitem(registry.TASKS, "sine-5", entry)
    config = {"algorithm": "maml", "task": {"name": "sine-5"}, "seed": 7}
    batch = as_host(train.make_sampler(config, "train").sample(2))
    assert batch["support_x"].shape == (2, 5, 1)
    held_out = as_host(train.make_sampler(config, "test").sample(2))       # another stream
    assert not np.array_equal(batch["support_x"], held_out["support_x"])
    assert registry.task_overrides("sine-5", shots=9) == {"k_support": 9}


def test_task_overrides_map_flags_and_refuse_flags_a_task_lacks():
    from scratchmeta.tasks import registry
    assert registry.task_overrides("omniglot-minimal", shots=1, ways=20, within_alphabet=True) == {
        "k_shot": 1, "n_way": 20, "within_alphabet": True}
    assert registry.task_overrides("sinusoid", shots=5, queries=7) == {
        "k_support": 5, "k_query": 7}
    with pytest.raises(ValueError, match="--ways applies to classification tasks, not 'sinusoid'"):
        registry.task_overrides("sinusoid", ways=3)
    with pytest.raises(ValueError, match="--shots applies to tasks with support and query sets"):
        registry.task_overrides("linreg", shots=3)
    with pytest.raises(ValueError, match="--within-alphabet applies to tasks with alphabets"):
        registry.task_overrides("glyphs", within_alphabet=True)
    with pytest.raises(ValueError, match="--noise-std applies to the linreg task"):
        registry.task_overrides("sinusoid", noise_std=0.1)


def test_tasks_package_has_no_import_circle():
    """Loaders import datasets.py, never the reverse; the registry imports the loaders."""
    import ast
    import pathlib

    import scratchmeta.tasks as tasks
    folder = pathlib.Path(tasks.__file__).parent
    imports = {}
    for path in folder.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names.add(node.module or "")
        imports[path.stem] = names - {""}
    seen, stack = set(), []

    def visit(module):                          # depth-first search for a back edge
        assert module not in stack, f"import circle: {' -> '.join(stack + [module])}"
        if module in seen or module not in imports:
            return
        stack.append(module)
        for other in imports[module]:
            visit(other)
        stack.pop()
        seen.add(module)

    for module in imports:
        visit(module)
    assert "registry" not in imports["datasets"] and "glyphs" not in imports["datasets"]


# ---------------------------------------------------------------- device transfer

def test_samplers_cross_to_the_backend_only_explicitly():
    # a CuPy-like namespace that raises on any implicit host <-> device conversion
    strict_xp = pytest.importorskip("strict_xp")
    images, labels = toy_dataset(COUNTS)
    backend._use_namespace("strict", strict_xp.namespace)      # conftest restores it
    episodes = EpisodeSampler(images, labels, TRAIN, 3, 2, 2, seed=0).sample(2)
    sines = Sinusoid(seed=0).sample(2)
    for batch in (episodes, sines):
        for name, value in batch.items():
            assert backend.is_array(value) and not isinstance(value, np.ndarray), name
    assert episodes["support_y"].dtype == np.int64
    sines = as_host(sines)
    np.testing.assert_allclose(sines["query_y"], Sinusoid.function(
        sines["amplitude"][:, None, None], sines["phase"][:, None, None], sines["query_x"]))


@given(data=st.data())
@settings(max_examples=30, deadline=None)
def test_smallest_equals_the_head_of_an_argsort(data):
    from scratchmeta.tasks.episodes import smallest
    shape = data.draw(st.tuples(st.integers(1, 4), st.integers(1, 40)))
    keys = np.random.default_rng(data.draw(st.integers(0, 1000))).random(shape)
    n = data.draw(st.integers(1, shape[1]))
    np.testing.assert_array_equal(smallest(keys, n), np.argsort(keys, axis=1)[:, :n])
