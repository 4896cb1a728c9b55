"""Random distortions of training images (scratchmeta.tasks.augment): affine, elastic, stroke width."""
import json
import os

import numpy as np
import pytest

from scratchmeta import recipes, train
from scratchmeta.tasks import EpisodeSampler, registry
from scratchmeta.tasks.augment import (Distortion, RandomAffine, affine_warp, gaussian_smoother,
                                       restroke)

STRONG = {"rotation": 10.0, "scale": 0.1, "shear": 10.0, "translate": 2.0}
ELASTIC = {"elastic": 20.0, "elastic_sigma": 3.0, "stroke": 0.5}     # no affine part
ALL = dict(STRONG, **ELASTIC)


def glyph_images(n=6, size=12, dtype=np.float32):
    """n small images with an off-centre bar each, so every distortion shows."""
    rng = np.random.default_rng(3)
    images = np.zeros((n, 1, size, size), dtype=dtype)
    for i in range(n):
        r, c = rng.integers(2, size - 4, size=2)
        images[i, 0, r:r + 3, c:c + 1] = 1.0
        images[i, 0, r, c:c + 3] = 0.5
    return images


def episode_sampler(augment, seed=0):
    images = glyph_images(40, size=8)
    labels = np.repeat(np.arange(8), 5)
    return EpisodeSampler(images, labels, np.arange(8), n_way=3, k_shot=2, n_query=2,
                          seed=seed, augment=augment)


def test_the_same_seed_gives_the_same_distortions():
    images = glyph_images()
    aug = RandomAffine(**STRONG)
    a = aug(images, np.random.default_rng(7))
    b = aug(images, np.random.default_rng(7))
    c = aug(images, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, images)
    # an augmenting sampler is reproducible from its seed, and from its checkpointed state
    s1, s2 = episode_sampler(STRONG), episode_sampler(STRONG)
    for _ in range(2):
        e1, e2 = s1.sample(4), s2.sample(4)
        for name in e1:
            np.testing.assert_array_equal(np.asarray(e1[name]), np.asarray(e2[name]))
    state = s1.state_dict()
    first = s1.sample(3)["query_x"]
    s1.load_state_dict(json.loads(json.dumps(state)))
    np.testing.assert_array_equal(np.asarray(s1.sample(3)["query_x"]), np.asarray(first))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 1, 12, 12), (5, 12, 12), (5, 3, 10, 14)])
def test_distortions_keep_shape_and_dtype(shape, dtype):
    images = np.random.default_rng(0).random(shape).astype(dtype)
    out = RandomAffine(**STRONG)(images, np.random.default_rng(0))
    assert out.shape == images.shape and out.dtype == dtype
    assert 0 <= out.min() and out.max() <= 1 + 1e-6          # bilinear: a convex mix of pixels
    plain, augmented = episode_sampler(None).sample(2), episode_sampler(STRONG).sample(2)
    for name in plain:
        assert augmented[name].shape == plain[name].shape
        assert augmented[name].dtype == plain[name].dtype
    for name in ("support_y", "query_y", "classes"):          # labels and classes untouched
        np.testing.assert_array_equal(np.asarray(augmented[name]), np.asarray(plain[name]))


def test_zero_strength_is_the_identity():
    images = glyph_images()
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert RandomAffine()(images, rng) is images
    assert rng.bit_generator.state == state                   # nothing drawn
    eye, zero = np.tile(np.eye(2), (6, 1, 1)), np.zeros((6, 2))
    np.testing.assert_array_equal(affine_warp(images, eye, zero), images)
    # a sampler with zero-strength augmentation draws exactly the unaugmented episodes
    a, b = episode_sampler({}).sample(5), episode_sampler(None).sample(5)
    for name in a:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]))


def test_known_maps_move_pixels_where_they_should():
    images = glyph_images()
    n = len(images)
    quarter = np.tile(np.array([[0.0, -1.0], [1.0, 0.0]]), (n, 1, 1))   # (row, col) -> (-col, row)
    turned = affine_warp(images, quarter, np.zeros((n, 2)))
    assert any(np.array_equal(turned, np.rot90(images, k, axes=(2, 3))) for k in (1, 3))
    shifted = affine_warp(images, np.tile(np.eye(2), (n, 1, 1)), np.tile([0.0, 1.0], (n, 1)))
    np.testing.assert_array_equal(shifted[..., 1:], images[..., :-1])   # one column right
    assert (shifted[..., 0] == 0).all()                                 # background comes in


def test_the_default_recipe_augments_training_episodes():
    config = train.build_config("protonet", "omniglot-minimal")
    assert config["task"]["augment"] == recipes.HANDWRITING_AUGMENT
    assert registry.make_sampler(config, "train").augment is not None


def _held_out_episodes(augment):
    """(held-out sampler, its episodes, the episodes without augmentation), with
    `augment` set for the training split."""
    config = train.build_config("protonet", "omniglot-minimal")
    config["task"]["augment"] = dict(augment)
    held_out = registry.make_sampler(config, "test")
    plain = dict(config, task=dict(config["task"], augment=None))
    return held_out, held_out.sample(3), registry.make_sampler(plain, "test").sample(3)


def test_the_held_out_sampler_never_augments():
    held_out, a, b = _held_out_episodes(recipes.HANDWRITING_AUGMENT)
    assert held_out.augment is None
    assert all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


@pytest.mark.parametrize("spec, name", [
    ({"rotation": -1}, "rotation"), ({"rotation": 181}, "rotation"),
    ({"rotation": True}, "rotation"), ({"scale": 1.0}, "scale"), ({"scale": -0.1}, "scale"),
    ({"shear": 90}, "shear"), ({"translate": float("nan")}, "translate"),
    ({"translate": "1"}, "translate")])
def test_bad_parameters_name_the_parameter(spec, name):
    with pytest.raises(ValueError, match=f"augment: {name} must be"):
        RandomAffine.from_config(spec)
    with pytest.raises(ValueError, match=f"augment: {name} must be"):
        episode_sampler(spec)


def test_bad_augment_specs_and_images_are_refused():
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['rotate'\]"):
        RandomAffine.from_config({"rotate": 5})
    with pytest.raises(ValueError, match="augment must be None or a dict"):
        RandomAffine.from_config(5)
    with pytest.raises(ValueError, match=r"augment needs images of shape \(n, ..., H, W\)"):
        RandomAffine(rotation=5)(np.zeros((4, 4)), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"augment needs images of shape"):
        EpisodeSampler(np.zeros((4, 9)), np.arange(4) % 2, [0, 1], 2, 1, 1, augment=STRONG)


def test_cli_no_augment_switches_augmentation_off(tmp_path, capsys):
    from scratchmeta import cli
    common = ["--steps", "1", "--train-ways", "5", "--eval-every", "0", "--no-progress"]
    for flag, expected in (([], recipes.HANDWRITING_AUGMENT), (["--no-augment"], None)):
        out = str(tmp_path / f"run{len(flag)}")
        assert cli.main(["train", "protonet", "--task", "omniglot-minimal", "--out", out]
                        + common + flag) == 0
        with open(os.path.join(out, "config.json")) as f:
            assert json.load(f)["task"]["augment"] == expected
    capsys.readouterr()
    with pytest.raises(SystemExit):     # a recipe without augmentation: refused, not ignored
        cli.main(["train", "protonet", "--task", "digits", "--out", str(tmp_path / "d"),
                  "--no-augment"] + common)
    assert "--no-augment: the protonet recipe on digits does not augment" in capsys.readouterr().err
    with pytest.raises(SystemExit):     # a resumed run keeps its settings
        cli.main(["train", "--resume", str(tmp_path / "run0"), "--no-augment"])
    assert "--no-augment would be ignored" in capsys.readouterr().err


# -- elastic distortion (Simard et al. 2003) and stroke width --------------------------------
@pytest.mark.parametrize("spec", [ELASTIC, ALL, {"elastic": 20.0}, {"stroke": 0.5}])
def test_elastic_and_stroke_are_seeded_and_keep_shape_dtype_and_range(spec):
    images = glyph_images()
    aug = Distortion(**spec)
    a, b = aug(images, np.random.default_rng(7)), aug(images, np.random.default_rng(7))
    c = aug(images, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, images)
    assert a.shape == images.shape and a.dtype == images.dtype
    assert 0 <= a.min() and a.max() <= 1 + 1e-6              # convex mixes of pixels
    e1, e2 = episode_sampler(spec).sample(4), episode_sampler(spec).sample(4)   # from the seed
    for name in e1:
        np.testing.assert_array_equal(np.asarray(e1[name]), np.asarray(e2[name]))


def test_affine_parameters_alone_reproduce_random_affine_exactly():
    images = glyph_images()
    a = RandomAffine(**STRONG)(images, np.random.default_rng(5))
    b = Distortion(**STRONG)(images, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert Distortion.from_config(RandomAffine(**STRONG)).config() == dict(
        STRONG, elastic=0.0, elastic_sigma=4.0, stroke=0.0)


def test_zero_elastic_and_stroke_strength_is_the_identity():
    images = glyph_images()
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert Distortion(elastic=0.0, elastic_sigma=2.0, stroke=0.0)(images, rng) is images
    assert rng.bit_generator.state == state                   # nothing drawn
    n = len(images)
    eye, zero = np.tile(np.eye(2), (n, 1, 1)), np.zeros((n, 2))
    field = np.zeros((n, 2) + images.shape[-2:])
    np.testing.assert_array_equal(affine_warp(images, eye, zero, field), images)
    np.testing.assert_array_equal(restroke(images, np.zeros(n)), images)


def test_a_constant_field_is_a_shift_and_the_smoother_is_a_gaussian_blur():
    images = glyph_images()
    n, size = len(images), images.shape[-1]
    field = np.zeros((n, 2, size, size))
    field[:, 1] = 1.0                                          # out(p) = in(p + one column)
    moved = affine_warp(images, np.tile(np.eye(2), (n, 1, 1)), np.zeros((n, 2)), field)
    np.testing.assert_array_equal(moved[..., :-1], images[..., 1:])
    assert (moved[..., -1] == 0).all()
    # the smoother is scipy.ndimage.gaussian_filter1d(mode="constant"): a normalised, truncated kernel
    sigma = 1.5
    radius = int(4 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    u = np.random.default_rng(0).uniform(-1, 1, size)
    np.testing.assert_allclose(gaussian_smoother(size, sigma) @ u,
                               np.convolve(u, k / k.sum())[radius:radius + size], rtol=1e-12, atol=1e-12)


def test_stroke_weights_one_and_minus_one_are_dilation_and_erosion():
    images = glyph_images()
    padded = np.pad(images, [(0, 0), (0, 0), (1, 1), (1, 1)])
    size = images.shape[-1]
    windows = np.stack([padded[..., r:r + size, c:c + size] for r in range(3) for c in range(3)])
    n = len(images)
    np.testing.assert_array_equal(restroke(images, np.ones(n)), windows.max(axis=0))
    np.testing.assert_array_equal(restroke(images, -np.ones(n)), windows.min(axis=0))
    half = restroke(images, np.full(n, 0.5))
    assert images.sum() < half.sum() < windows.max(axis=0).sum()   # thicker, not fully dilated


def test_the_held_out_sampler_never_distorts_elastically():
    config = train.build_config("protonet", "omniglot-minimal")
    config["task"]["augment"] = dict(ALL)
    assert registry.make_sampler(config, "train").augment.elastic.active
    held_out, a, b = _held_out_episodes(ALL)
    assert held_out.augment is None
    assert all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


@pytest.mark.parametrize("spec, name", [
    ({"elastic": -1}, "elastic"), ({"elastic": float("inf")}, "elastic"),
    ({"elastic": "8"}, "elastic"), ({"elastic_sigma": 0}, "elastic_sigma"),
    ({"elastic_sigma": -2.0}, "elastic_sigma"), ({"elastic_sigma": False}, "elastic_sigma"),
    ({"stroke": 1.5}, "stroke"), ({"stroke": -0.1}, "stroke"), ({"stroke": None}, "stroke")])
def test_bad_elastic_and_stroke_parameters_name_the_parameter(spec, name):
    with pytest.raises(ValueError, match=f"augment: {name} must be"):
        Distortion.from_config(spec)
    with pytest.raises(ValueError, match=f"augment: {name} must be"):
        episode_sampler(spec)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['sigma'\]"):
        Distortion.from_config({"elastic": 8, "sigma": 4})
