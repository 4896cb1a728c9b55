"""Labelled image datasets for few-shot classification, all offline.

Each loader returns a `Dataset`: host float32 images (n, 1, 28, 28) with
background 0 and ink 1, int64 labels, and disjoint train/val/test class
lists, so that meta-test classes are never seen in meta-training (Vinyals
et al. 2016, arXiv:1606.04080). `Dataset.sampler(split, ...)` gives the
EpisodeSampler over one split.

This module holds the Dataset and what every loader shares (optional
imports, caches); the loaders themselves (glyphs.py, omniglot.py,
omniglot_minimal.py, `load_digits` here) import it, never the other way,
and `tasks.registry.load_dataset(name)` dispatches on a name:

    load_dataset("glyphs")              # rendered from matplotlib's DejaVu fonts
    load_dataset("omniglot", root=...)  # Lake et al.'s PNG folders
    load_dataset("omniglot-minimal")    # bundled: Omniglot's two minimal sets
    load_dataset("digits")              # scikit-learn's bundled 8x8 digits

Pillow, matplotlib and scikit-learn are the optional extra
`pip install 'scratchmeta[data]'`; each loader imports what it needs
(omniglot-minimal at 28x28 needs none of them).
"""
import dataclasses
import importlib
import io
import json
import os

from ..backend import host
from ..runs import atomic_write_bytes
from .episodes import EpisodeSampler

DATA_EXTRA = "pip install 'scratchmeta[data]'"


def require(module, purpose):
    """Import an optional dependency, or an ImportError naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{purpose} needs {module.split('.')[0]}: {DATA_EXTRA}") from e


@dataclasses.dataclass(eq=False, repr=False)
class Dataset:
    """Images, labels and a fixed class split.

    images: host float32 (n, 1, H, W) in [0, 1], background 0, ink 1
    labels: host int64 (n,)
    train_classes, val_classes, test_classes: host int64 class ids, disjoint
    class_names: optional readable name per class id
    groups: optional host int64 group (alphabet) per class id, for
        within-group episodes (`sampler(..., within_group=True)`)
    group_names: optional readable name per group id
    """

    images: object
    labels: object
    train_classes: object
    val_classes: object
    test_classes: object
    name: str
    class_names: tuple = ()
    groups: object = None
    group_names: tuple = ()

    def __repr__(self):
        return (f"Dataset({self.name!r}, images={tuple(self.images.shape)}, "
                f"classes train/val/test={len(self.train_classes)}/"
                f"{len(self.val_classes)}/{len(self.test_classes)})")

    def classes(self, split):
        """The class ids of "train", "val" or "test"."""
        splits = {"train": self.train_classes, "val": self.val_classes,
                  "test": self.test_classes}
        if split not in splits:
            raise ValueError(f"unknown split {split!r}; choose 'train', 'val' or 'test'")
        return splits[split]

    def sampler(self, split, n_way, k_shot, n_query, seed=0, dtype=None, within_group=False,
                augment=None):
        """An EpisodeSampler over the classes of one split.

        within_group: every episode's N classes come from one group (one
        alphabet: Lake et al. 2015's within-alphabet runs).
        augment: None, or random affine distortions of every drawn image
        (a dict of tasks.augment.RandomAffine's parameters); meant for
        meta-training only.
        """
        classes = self.classes(split)
        if len(classes) == 0:
            raise ValueError(f"the {split} split of {self.name!r} is empty")
        groups = None
        if within_group:
            if self.groups is None:
                raise ValueError(f"dataset {self.name!r} has no alphabets (groups): "
                                 f"within-alphabet episodes need them")
            groups = self.groups[classes]
        return EpisodeSampler(self.images, self.labels, classes, n_way, k_shot,
                              n_query, seed=seed, dtype=dtype, groups=groups, augment=augment)


def split_classes(n_classes, fractions=(0.6, 0.2), seed=0):
    """train/val/test class ids from a seeded permutation of range(n_classes)."""
    order = host.random.default_rng(seed).permutation(n_classes)
    n_train = int(round(fractions[0] * n_classes))
    n_val = int(round(fractions[1] * n_classes))
    parts = order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]
    return tuple(host.sort(p).astype(host.int64) for p in parts)


def default_cache_dir():
    """$SCRATCHMETA_CACHE, else ~/.cache/scratchmeta."""
    return os.environ.get("SCRATCHMETA_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "scratchmeta")


def save_cache(path, key, **arrays):
    """Write an .npz atomically (runs.atomic_write_bytes: a temp file, then os.replace)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    buf = io.BytesIO()                     # a file object: savez adds no suffix
    host.savez_compressed(buf, cache_key=host.array(json.dumps(key, sort_keys=True)), **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_cache(path, key):
    """The arrays of a cache written with the same key, else None."""
    if not os.path.isfile(path):
        return None
    try:
        with host.load(path, allow_pickle=False) as npz:
            if str(npz["cache_key"]) != json.dumps(key, sort_keys=True):
                return None
            return {name: npz[name] for name in npz.files if name != "cache_key"}
    except (OSError, ValueError, KeyError):   # unreadable or foreign file: rebuild
        return None


def _bilinear_matrix(n_out, n_in):
    """(n_out, n_in) weights of 1-D linear interpolation, half-pixel centres.

    Output pixel i samples the input at s = (i + 0.5) * n_in / n_out - 0.5,
    clamped to the edge pixels (the convention of Pillow and OpenCV).
    """
    s = host.clip((host.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    left = host.minimum(host.floor(s).astype(int), n_in - 2)
    frac = s - left
    weights = host.zeros((n_out, n_in))
    weights[host.arange(n_out), left] = 1 - frac
    weights[host.arange(n_out), left + 1] += frac
    return weights


def load_digits(image_size=28):
    """scikit-learn's 1797 bundled 8x8 digits, upsampled to 28x28.

    Pixel values 0..16 (16 = ink) are scaled to [0, 1] and upsampled by
    separable bilinear interpolation, image' = W image W^T. Ten classes:
    train = digits 0-4, test = digits 5-9, no val. A tiny sanity-check
    dataset, not a benchmark.
    """
    datasets = require("sklearn.datasets", "load_digits")
    digits = datasets.load_digits()
    images = digits.images / 16.0                                  # (n, 8, 8) in [0, 1]
    weights = _bilinear_matrix(image_size, images.shape[-1])      # (28, 8)
    images = host.einsum("ij,njk,lk->nil", weights, images, weights)
    images = host.clip(images, 0.0, 1.0).astype(host.float32)[:, None]
    return Dataset(images=images, labels=digits.target.astype(host.int64),
                   train_classes=host.arange(5, dtype=host.int64),
                   val_classes=host.zeros(0, dtype=host.int64),
                   test_classes=host.arange(5, 10, dtype=host.int64),
                   name="digits", class_names=tuple(str(d) for d in range(10)))
