"""The bundled Omniglot's mirror-image training classes (`reflections`, off by default)."""
import json

import numpy as np
import pytest

from scratchmeta import runs, train
from scratchmeta.tasks import load_omniglot_minimal
from scratchmeta.tasks import registry

N_CHARACTERS = 242
N_EXISTING = 4 * N_CHARACTERS               # ids 4c + r: every character's 4 rotations


@pytest.fixture(scope="module")
def plain():
    return load_omniglot_minimal()


@pytest.fixture(scope="module")
def mirrored():
    return load_omniglot_minimal(reflections=True)


def test_default_ids_and_classes_are_unchanged(plain, mirrored):
    assert len(plain.train_classes) == 716 and len(plain.class_names) == N_EXISTING
    assert plain.train_classes.max() < N_EXISTING and plain.labels.max() < N_EXISTING
    # reflections=False is the default, and the reflected set begins with the plain one
    off = load_omniglot_minimal(reflections=False)
    for name in ("images", "labels", "train_classes", "val_classes", "test_classes", "groups"):
        np.testing.assert_array_equal(getattr(off, name), getattr(plain, name), err_msg=name)
    assert off.class_names == plain.class_names
    n = plain.labels.size
    np.testing.assert_array_equal(mirrored.images[:n], plain.images)
    np.testing.assert_array_equal(mirrored.labels[:n], plain.labels)
    assert mirrored.class_names[:N_EXISTING] == plain.class_names
    np.testing.assert_array_equal(mirrored.groups[:N_EXISTING], plain.groups)


def test_reflected_classes_are_the_flipped_originals_in_each_rotation(plain, mirrored):
    for c in (int(plain.train_classes[5]) // 4, int(plain.train_classes[-1]) // 4):
        upright = plain.images[plain.labels == 4 * c]
        for r in range(4):
            new = N_EXISTING + 4 * c + r
            np.testing.assert_array_equal(mirrored.images[mirrored.labels == new],
                                          np.rot90(np.flip(upright, axis=3), r, axes=(2, 3)))
            assert mirrored.class_names[new] == f"{plain.class_names[4 * c]}/mirror".replace(
                "/rot0/", f"/rot{90 * r}/")
            assert mirrored.groups[new] == plain.groups[4 * c]          # the character's alphabet
    # a drawing is not its own mirror image (an asymmetric one, at least)
    assert not np.array_equal(mirrored.images[mirrored.labels == N_EXISTING + 4 * c], upright)


def test_reflected_classes_are_training_classes_only(plain, mirrored):
    assert len(mirrored.train_classes) == 8 * 179 == 1432
    np.testing.assert_array_equal(mirrored.val_classes, plain.val_classes)
    np.testing.assert_array_equal(mirrored.test_classes, plain.test_classes)
    new = mirrored.train_classes[mirrored.train_classes >= N_EXISTING]
    assert len(new) == 716
    np.testing.assert_array_equal(np.sort(new - N_EXISTING), plain.train_classes)
    assert set(np.unique(mirrored.labels[mirrored.labels >= N_EXISTING])) == set(new.tolist())
    assert np.array_equal(np.bincount(mirrored.labels)[mirrored.train_classes], np.full(1432, 20))
    names = mirrored.group_names
    assert {names[g] for g in mirrored.groups[new]} == {
        "Greek", "Japanese_(katakana)", "Korean", "Latin", "Sanskrit"}
    # without rotations, the mirror image alone: 2 x 179 training classes
    flat = load_omniglot_minimal(rotations=False, reflections=True)
    assert len(flat.train_classes) == 2 * 179
    assert set((flat.train_classes % 4).tolist()) == {0}


def _config(**task):
    return train.build_config("protonet", "omniglot-minimal",
                              {"task": dict(task), "steps": 1, "eval_every": 0, "seed": 0})


def test_the_task_key_reaches_the_training_sampler_and_not_the_held_out_one():
    assert "reflections" not in _config()["task"]                 # off by default
    on = _config(reflections=True)
    sampler = registry.make_sampler(on, "train")
    classes = set(np.unique(sampler.classes).tolist())
    assert len(classes) == 1432 and max(classes) >= N_EXISTING
    # 20-way training episodes draw mirrored classes
    drawn = np.asarray(sampler.sample_indices(50)[0])
    assert (drawn >= N_EXISTING).any() and (drawn < N_EXISTING).any()
    # the held-out episodes are the same, drawing for drawing, with the option on or off
    on["task"].update(n_way=20, k_shot=1, n_query=1, within_alphabet=True)
    a = registry.make_sampler(on, "test").sample(3)
    b = registry.make_sampler(_config(n_way=20, k_shot=1, n_query=1, within_alphabet=True),
                              "test").sample(3)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)
    # off (False) is the default's dataset, the very same object
    assert registry.make_sampler(_config(reflections=False), "train").classes.size == 716


def test_bad_values_are_refused_with_the_key_named(tmp_path):
    with pytest.raises(ValueError, match="reflections must be true or false, got 'yes'"):
        load_omniglot_minimal(reflections="yes")
    with pytest.raises(runs.RunFileError, match="reflections must be true or false, got 'yes'"):
        train.build(_config(reflections="yes"))
    with pytest.raises(runs.RunFileError, match="reflections must be true or false, got 1"):
        train.build(_config(reflections=1))
    with pytest.raises(runs.RunFileError, match=r'task.reflections is "yes", expected true or false'):
        train.validate_config(_config(reflections="yes"))
    train.validate_config(_config(reflections=True))
    glyphs = train.build_config("protonet", "glyphs", {"task": {"reflections": True}})
    with pytest.raises(runs.RunFileError, match="task.reflections applies to omniglot-minimal, "
                                                "not 'glyphs'"):
        train.build(glyphs)


def test_a_run_with_reflections_trains_and_keeps_the_option(tmp_path):
    config = _config(reflections=True)
    config["algo"]["train_ways"] = 5
    out = str(tmp_path / "run")
    train.run(config, out, progress=False)
    with open(f"{out}/config.json") as f:
        assert json.load(f)["task"]["reflections"] is True
    _, _, _, step = train.load_run(out)
    assert step == 1
