"""Dataset loaders: Omniglot folders, bundled Omniglot, the rendered glyph set, scikit-learn digits."""
import json
import os
import shutil
import sys

import numpy as np
import pytest

from scratchmeta import backend
from scratchmeta.tasks import (datasets, load_dataset, load_digits, load_glyphs, load_omniglot,
                               load_omniglot_minimal, omniglot_minimal)


def files_under(path):
    return sorted(os.path.relpath(os.path.join(d, f), path)
                  for d, _, names in os.walk(path) for f in names)


# ---------------------------------------------------------------- Omniglot

def make_omniglot(root, n_characters=3, n_drawers=4):
    """A miniature Omniglot: Alpha in images_background, Beta in images_evaluation.

    Each PNG is 105x105 black ink on white, an asymmetric "L" whose size
    depends on the character and position on the drawer.
    """
    image = pytest.importorskip("PIL.Image")
    draw = pytest.importorskip("PIL.ImageDraw")
    for folder, alphabet in (("images_background", "Alpha"), ("images_evaluation", "Beta")):
        for c in range(n_characters):
            path = root / folder / alphabet / f"character{c + 1:02d}"
            path.mkdir(parents=True)
            for d in range(n_drawers):
                im = image.new("1", (105, 105), 1)                     # white
                pen = draw.Draw(im)
                x0, y0 = 15 + 4 * d, 10 + 3 * d
                pen.rectangle([x0, y0, x0 + 10, y0 + 50 + 8 * c], fill=0)     # stem
                pen.rectangle([x0, y0 + 40 + 8 * c, x0 + 35 + 5 * c, y0 + 50 + 8 * c], fill=0)
                im.save(path / f"{c:04d}_{d + 1:02d}.png")
    return root


@pytest.fixture
def omniglot_root(tmp_path):
    return make_omniglot(tmp_path / "omniglot")


def test_omniglot_counts_split_and_names(omniglot_root):
    data = load_omniglot(omniglot_root, n_train_characters=4)
    assert data.images.shape == (6 * 4 * 4, 1, 28, 28) and data.images.dtype == np.float32
    assert data.labels.dtype == np.int64
    assert np.array_equal(np.bincount(data.labels), np.full(24, 4))   # 24 classes, 4 drawers
    # first 4 characters (x4 rotations) train, the last 2 test, no val
    np.testing.assert_array_equal(data.train_classes, np.arange(16))
    np.testing.assert_array_equal(data.test_classes, np.arange(16, 24))
    assert data.val_classes.size == 0
    assert data.class_names[0] == "Alpha/character01/rot0"
    assert data.class_names[13] == "Beta/character01/rot90"


def test_omniglot_alphabets_are_the_groups_of_within_alphabet_episodes(omniglot_root):
    data = load_omniglot(omniglot_root, n_train_characters=2)
    assert data.group_names == ("Alpha", "Beta")
    np.testing.assert_array_equal(data.groups, np.repeat([0, 1], 12))    # 3 characters x 4 rotations
    # training characters 0-1 are Alpha's; the test split spans both alphabets
    classes, _, _ = data.sampler("test", 4, 1, 1, seed=0, within_group=True).sample_indices(50)
    groups = data.groups[classes]
    assert (groups == groups[:, :1]).all() and set(groups[:, 0].tolist()) == {0, 1}


def test_omniglot_rotation_classes_are_rotated_images(omniglot_root):
    data = load_omniglot(omniglot_root, n_train_characters=4)
    for character in range(6):
        upright = data.images[data.labels == 4 * character]
        for r in (1, 2, 3):
            rotated = data.images[data.labels == 4 * character + r]
            np.testing.assert_array_equal(rotated, np.rot90(upright, r, axes=(2, 3)))
            assert not np.array_equal(rotated, upright)


def test_omniglot_is_inverted_and_resized_with_lanczos(omniglot_root):
    image = pytest.importorskip("PIL.Image")
    data = load_omniglot(omniglot_root, rotations=False, n_train_characters=4)
    assert 0.0 <= data.images.min() and data.images.max() <= 1.0
    assert data.images[:, 0, 0, 0].max() == 0.0 and data.images[:, 0, -1, -1].max() == 0.0
    assert data.images.max() > 0.9                                      # ink is bright
    png = omniglot_root / "images_background" / "Alpha" / "character01" / "0000_01.png"
    with image.open(png) as im:
        ink = image.fromarray(255 - np.asarray(im.convert("L")))
    expected = np.asarray(ink.resize((28, 28), image.Resampling.LANCZOS)) / np.float32(255)
    np.testing.assert_array_equal(data.images[0, 0], expected.astype(np.float32))


def test_omniglot_without_rotations_and_with_val(omniglot_root):
    data = load_omniglot(omniglot_root, rotations=False, n_train_characters=4,
                         n_val_characters=1, image_size=20)
    assert data.images.shape == (24, 1, 20, 20)
    np.testing.assert_array_equal(data.train_classes, [0, 1, 2])
    np.testing.assert_array_equal(data.val_classes, [3])
    np.testing.assert_array_equal(data.test_classes, [4, 5])
    rotated = load_omniglot(omniglot_root, n_train_characters=4, n_val_characters=1)
    np.testing.assert_array_equal(rotated.val_classes, [12, 13, 14, 15])


def test_omniglot_split_size_errors(omniglot_root):
    with pytest.raises(ValueError, match="found 6 characters .*n_train_characters=1200"):
        load_omniglot(omniglot_root)                  # the paper's 1200 leaves none to test
    with pytest.raises(ValueError, match="n_val_characters=4 must be smaller"):
        load_omniglot(omniglot_root, n_train_characters=4, n_val_characters=4)


def test_omniglot_missing_layout_names_path_and_layout(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere.*does not exist.*images_background"):
        load_omniglot(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither images_background/ nor images_eval"):
        load_omniglot(tmp_path / "empty")


def test_omniglot_cache_writes_only_where_asked(omniglot_root, tmp_path):
    before = files_under(tmp_path)
    cache = tmp_path / "cache" / "omni.npz"
    first = load_omniglot(omniglot_root, n_train_characters=4, cache=cache)
    assert files_under(tmp_path) == sorted(before + [os.path.join("cache", "omni.npz")])
    shutil.rmtree(omniglot_root)                      # the cache alone now suffices
    second = load_omniglot(omniglot_root, n_train_characters=4, cache=cache)
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)
    assert first.class_names == second.class_names


def test_omniglot_episodes_stay_in_their_split(omniglot_root):
    data = load_omniglot(omniglot_root, n_train_characters=4)
    train = data.sampler("train", n_way=5, k_shot=1, n_query=3, seed=0)
    classes, support, query = train.sample_indices(50)
    assert np.isin(classes, data.train_classes).all()
    assert not np.isin(data.labels[np.concatenate([support, query], 1)], data.test_classes).any()
    batch = data.sampler("test", 3, 2, 2, seed=1).sample(2)
    assert tuple(batch["support_x"].shape) == (2, 6, 1, 28, 28)
    assert np.isin(backend.to_numpy(batch["classes"]), data.test_classes).all()


# ---------------------------------------------------------------- glyphs

@pytest.fixture
def glyph_deps():
    for module in ("PIL.ImageFont", "matplotlib", "fontTools.ttLib"):
        pytest.importorskip(module)


def test_glyphs_deterministic_for_a_seed_and_different_for_another(glyph_deps):
    a = load_glyphs(n_per_class=3, n_classes=12, seed=0, use_cache=False)
    b = load_glyphs(n_per_class=3, n_classes=12, seed=0, use_cache=False)
    c = load_glyphs(n_per_class=3, n_classes=12, seed=1, use_cache=False)
    assert a.images.tobytes() == b.images.tobytes()                    # bit for bit
    assert not np.array_equal(a.images, c.images)
    np.testing.assert_array_equal(a.labels, c.labels)                  # same classes


def test_glyph_images_shapes_range_and_ink(glyph_deps):
    data = load_glyphs(n_per_class=4, n_classes=12, use_cache=False)
    assert data.images.shape == (48, 1, 28, 28) and data.images.dtype == np.float32
    np.testing.assert_array_equal(data.labels, np.repeat(np.arange(12), 4))
    assert data.images.min() == 0.0 and data.images.max() == 1.0
    assert (data.images.max(axis=(1, 2, 3)) > 0.5).all()              # every example has ink
    border = np.concatenate([data.images[:, 0, 0], data.images[:, 0, -1]])
    assert np.mean(border == 0) > 0.9                                  # background is 0
    # examples of one class differ (random font, stroke and affine)
    assert not np.array_equal(data.images[0], data.images[1])


def test_glyph_split_is_fixed_disjoint_and_complete(glyph_deps):
    data = load_glyphs(n_per_class=1, n_classes=20, use_cache=False)
    parts = [data.train_classes, data.val_classes, data.test_classes]
    assert [p.size for p in parts] == [12, 4, 4]                        # 60/20/20
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(20))
    other_seed = load_glyphs(n_per_class=1, n_classes=20, seed=5, use_cache=False)
    np.testing.assert_array_equal(other_seed.test_classes, data.test_classes)


def test_glyph_class_images_do_not_depend_on_the_subset(glyph_deps):
    small = load_glyphs(n_per_class=2, n_classes=5, use_cache=False)
    large = load_glyphs(n_per_class=2, n_classes=9, use_cache=False)
    np.testing.assert_array_equal(small.images, large.images[:10])
    assert small.class_names == large.class_names[:5]


def test_glyph_class_list_spans_scripts_without_lookalikes(glyph_deps):
    from scratchmeta.tasks.glyphs import glyph_codepoints
    names = set(map(chr, glyph_codepoints()))
    assert len(names) >= 300                                            # several hundred
    assert set("0123456789ABCDEFGHJKabdefhk") <= names
    # Greek Alpha, Cyrillic A and Cyrillic o render as Latin A and o: dropped
    assert not {"\u0391", "\u0410", "\u043e"} & names
    # one letter each of Greek, Cyrillic, Armenian, Hebrew, Georgian, plus arrow and math
    assert {"\u03bb", "\u0416", "\u0533", "\u05d0", "\u10d0", "\u2190", "\u2211"} <= names


def test_glyph_cache_round_trip(glyph_deps, tmp_path, monkeypatch):
    from scratchmeta.tasks import glyphs
    first = load_glyphs(n_per_class=2, n_classes=6, cache_dir=tmp_path)
    cached = files_under(tmp_path)
    assert len(cached) == 1 and cached[0].startswith("glyphs-v") and cached[0].endswith(".npz")

    def no_render(*args):
        raise AssertionError("rendered although a cache exists")

    monkeypatch.setattr(glyphs, "render_class", no_render)
    second = load_glyphs(n_per_class=2, n_classes=6, cache_dir=tmp_path)
    assert first.images.tobytes() == second.images.tobytes()
    with pytest.raises(AssertionError, match="rendered"):              # another key: no hit
        load_glyphs(n_per_class=2, n_classes=6, seed=3, cache_dir=tmp_path)


def test_glyph_cache_default_dir_from_environment(glyph_deps, tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHMETA_CACHE", str(tmp_path / "env"))
    load_glyphs(n_per_class=1, n_classes=3)
    assert len(files_under(tmp_path / "env")) == 1
    load_glyphs(n_per_class=1, n_classes=3, use_cache=False, cache_dir=tmp_path / "unused")
    assert not (tmp_path / "unused").exists()


def test_glyph_bad_arguments(glyph_deps):
    with pytest.raises(ValueError, match="n_classes=100000 but the glyph set has"):
        load_glyphs(n_classes=100000, use_cache=False)
    with pytest.raises(ValueError, match="n_per_class"):
        load_glyphs(n_per_class=0, use_cache=False)


# ---------------------------------------------------------------- digits and dispatch

def test_digits_shapes_classes_and_split():
    pytest.importorskip("sklearn")
    raw = pytest.importorskip("sklearn.datasets").load_digits()
    data = load_digits()
    assert data.images.shape == (1797, 1, 28, 28) and data.images.dtype == np.float32
    np.testing.assert_array_equal(np.unique(data.labels), np.arange(10))
    np.testing.assert_array_equal(data.train_classes, np.arange(5))
    np.testing.assert_array_equal(data.test_classes, np.arange(5, 10))
    assert data.images.min() >= 0 and data.images.max() <= 1
    # bilinear upsampling keeps each image's mean intensity and its ink layout
    np.testing.assert_allclose(data.images.mean(axis=(1, 2, 3)), raw.images.mean(axis=(1, 2)) / 16,
                               atol=1e-5)
    image = pytest.importorskip("PIL.Image")
    for i in (0, 1, 1796):                        # the same bilinear as Pillow's, float mode
        pil = image.fromarray((raw.images[i] / 16).astype(np.float32), "F")
        expected = np.asarray(pil.resize((28, 28), image.Resampling.BILINEAR))
        np.testing.assert_allclose(data.images[i, 0], expected, atol=1e-6)
    batch = data.sampler("train", 5, 1, 2, seed=0).sample(3)
    assert np.isin(backend.to_numpy(batch["classes"]), np.arange(5)).all()
    with pytest.raises(ValueError, match="val split of 'digits' is empty"):
        data.sampler("val", 2, 1, 1)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        data.sampler("dev", 2, 1, 1)


def test_bilinear_matrix_interpolates():
    weights = datasets._bilinear_matrix(28, 8)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)               # rows are convex
    ramp = np.arange(8.0)
    up = weights @ ramp                                                 # a ramp stays a ramp
    assert np.all(np.diff(up) >= 0) and up[0] == 0 and up[-1] == 7


def test_load_dataset_dispatch(omniglot_root, tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*'glyphs', 'omniglot'"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="omniglot' needs root"):
        load_dataset("omniglot")
    with pytest.raises(ValueError, match="takes no root"):
        load_dataset("digits", root=tmp_path)
    data = load_dataset("omniglot", root=omniglot_root, n_train_characters=4)
    assert data.name == "omniglot" and len(data.train_classes) == 16


def test_load_dataset_glyphs_uses_root_as_cache(glyph_deps, tmp_path):
    data = load_dataset("glyphs", root=tmp_path / "c", n_per_class=1, n_classes=3)
    assert data.name == "glyphs" and len(files_under(tmp_path / "c")) == 1


def test_missing_extra_names_the_pip_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'scratchmeta\[data\]'"):
        load_digits()


# ---------------------------------------------------------------- bundled Omniglot (minimal sets)

@pytest.fixture(scope="module")
def minimal():
    return load_omniglot_minimal()


def test_bundled_files_are_shipped_with_their_licence_and_checksums():
    folder = omniglot_minimal.FOLDER
    for name in omniglot_minimal.ZIPS + (omniglot_minimal.ARRAYS,):
        omniglot_minimal.verify(name)                       # raises on a mismatch
    assert "MIT License" in open(os.path.join(folder, "LICENSE")).read()
    assert set(omniglot_minimal.checksums()) == set(omniglot_minimal.ZIPS + (omniglot_minimal.ARRAYS,))
    # setup.cfg's package data covers every bundled file, so a wheel install has them
    import configparser
    import fnmatch
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(os.path.dirname(os.path.dirname(__file__)), "setup.cfg"))
    patterns = cfg["options.package_data"]["scratchmeta"].split()
    for name in os.listdir(folder):
        assert any(fnmatch.fnmatch(f"data/omniglot/{name}", p) for p in patterns), name


def test_checksum_mismatch_is_an_error(tmp_path):
    for name in os.listdir(omniglot_minimal.FOLDER):
        shutil.copy(os.path.join(omniglot_minimal.FOLDER, name), tmp_path / name)
    path = tmp_path / omniglot_minimal.ARRAYS
    payload = bytearray(path.read_bytes())
    payload[len(payload) // 2] ^= 1
    path.write_bytes(bytes(payload))
    with pytest.raises(ValueError, match="omniglot_minimal_28px.npz' is corrupt"):
        load_omniglot_minimal(folder=str(tmp_path))
    os.remove(path)
    with pytest.raises(FileNotFoundError, match="missing.*reinstall scratchmeta"):
        load_omniglot_minimal(folder=str(tmp_path))


def test_bundled_arrays_equal_a_fresh_decode_of_the_zips():
    pytest.importorskip("PIL.Image", reason="re-decoding the zips needs Pillow (the 'data' extra)")
    shipped = omniglot_minimal.load_arrays()
    fresh = omniglot_minimal.decode_zips()
    assert set(shipped) == set(fresh)
    for name in fresh:
        np.testing.assert_array_equal(shipped[name], fresh[name], err_msg=name)


def test_bundled_omniglot_loads_offline_without_pillow(monkeypatch):
    for module in ("PIL", "PIL.Image", "matplotlib", "sklearn"):
        monkeypatch.setitem(sys.modules, module, None)      # importing them now fails
    data = load_omniglot_minimal()
    assert data.images.dtype == np.float32 and data.images.shape[1:] == (1, 28, 28)
    assert 0 <= data.images.min() and data.images.max() <= 1


def test_minimal_split_is_by_alphabet_with_rotated_training_classes(minimal):
    arrays = omniglot_minimal.load_arrays()
    assert arrays["images"].shape == (4840, 28, 28) and arrays["alphabet"].size == 242
    names = minimal.group_names
    alphabet_of = lambda classes: {names[g] for g in minimal.groups[classes]}
    assert alphabet_of(minimal.test_classes) == {"Balinese", "Early_Aramaic"}
    assert alphabet_of(minimal.val_classes) == {"Tagalog"}
    assert alphabet_of(minimal.train_classes) == {"Greek", "Japanese_(katakana)", "Korean",
                                                   "Latin", "Sanskrit"}
    # the rule: sorted by name, the first two test, the last validates
    assert sorted(names)[:2] == ["Balinese", "Early_Aramaic"] and sorted(names)[-1] == "Tagalog"
    # 179 training characters x 4 rotations; held-out characters stay upright (id 4c)
    assert len(minimal.train_classes) == 4 * 179
    assert len(minimal.val_classes) == 17 and len(minimal.test_classes) == 46
    assert (minimal.test_classes % 4 == 0).all() and (minimal.val_classes % 4 == 0).all()
    # no character is in two splits
    chars = [set((c // 4).tolist()) for c in (minimal.train_classes, minimal.val_classes,
                                              minimal.test_classes)]
    assert not (chars[0] & chars[1] or chars[0] & chars[2] or chars[1] & chars[2])
    assert np.array_equal(np.bincount(minimal.labels)[minimal.train_classes], np.full(716, 20))
    # class 4c + r is class 4c's drawings rotated by r * 90 degrees
    c = int(minimal.train_classes[5]) // 4
    upright = minimal.images[minimal.labels == 4 * c]
    np.testing.assert_array_equal(minimal.images[minimal.labels == 4 * c + 1],
                                  np.rot90(upright, 1, axes=(2, 3)))
    assert minimal.class_names[4 * c + 1].endswith("/rot90")


def test_within_alphabet_episodes_on_the_bundled_set(minimal):
    names = minimal.group_names
    held_out = {names.index("Balinese"), names.index("Early_Aramaic"), names.index("Tagalog")}
    train = minimal.sampler("train", 60, 1, 5, seed=0, within_group=True)
    classes, support, query = train.sample_indices(200)
    groups = minimal.groups[classes]
    assert (groups == groups[:, :1]).all()                            # one alphabet an episode
    assert not set(groups.ravel().tolist()) & held_out                  # never a held-out one
    assert not set(minimal.groups[minimal.labels[np.concatenate([support, query], 1)]].ravel()
                   .tolist()) & held_out
    # 60-way within one alphabet uses rotations: Latin has 26 characters, 104 classes
    assert set(groups[:, 0].tolist()) == {names.index(a) for a in
                                          ("Greek", "Japanese_(katakana)", "Korean", "Latin", "Sanskrit")}
    test = minimal.sampler("test", 20, 1, 1, seed=0, within_group=True)
    classes, _, _ = test.sample_indices(100)
    assert (minimal.groups[classes] == minimal.groups[classes][:, :1]).all()
    assert set(minimal.groups[classes[:, 0]].tolist()) == {names.index("Balinese"),
                                                           names.index("Early_Aramaic")}
    with pytest.raises(ValueError, match="larger than every group.*24 classes"):
        minimal.sampler("test", 25, 1, 1, within_group=True)
    with pytest.raises(ValueError, match="has no alphabets"):
        load_digits().sampler("train", 2, 1, 1, within_group=True)


def test_cli_trains_and_evaluates_within_alphabet_on_the_bundled_set(tmp_path, capsys):
    from scratchmeta import cli
    out = str(tmp_path / "run")
    assert cli.main(["train", "protonet", "--task", "omniglot-minimal", "--out", out,
                     "--steps", "2", "--train-ways", "5", "--eval-every", "0",
                     "--within-alphabet", "--no-progress"]) == 0
    config = json.loads(open(os.path.join(out, "config.json")).read())
    assert config["task"]["name"] == "omniglot-minimal" and config["task"]["within_alphabet"]
    capsys.readouterr()
    assert cli.main(["eval", out, "--ways", "20", "--shots", "1", "--within-alphabet",
                     "--tasks", "8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"]["n_way"] == 20 and report["task"]["within_alphabet"] is True
    assert report["tasks"] == 8 and 0 <= report["mean"] <= 1
    with pytest.raises(SystemExit):
        cli.main(["eval", out, "--ways", "25", "--within-alphabet", "--tasks", "2"])
    assert "larger than every group" in capsys.readouterr().err
