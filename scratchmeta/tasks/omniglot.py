"""Omniglot (Lake, Salakhutdinov & Tenenbaum 2015) from its PNG folders.

Expected layout (the two folders of github.com/brendenlake/omniglot, unzipped):

    root/images_background/<alphabet>/<character>/*.png    (30 alphabets)
    root/images_evaluation/<alphabet>/<character>/*.png    (20 alphabets)

1623 characters, 20 drawers each, 105x105 black ink on white.

The few-shot protocol of Vinyals et al. 2016 (arXiv:1606.04080), also used
by MAML (Finn et al. 2017, arXiv:1703.03400v3) and ProtoNets (Snell et al.
2017, arXiv:1703.05175): 1200 characters train, the remaining 423 test, and
each rotation by a multiple of 90 degrees of a character is a class of its
own (Santoro et al. 2016, arXiv:1605.06065), so 4800 train classes.
Here the characters are sorted by (alphabet, character) over both folders
and the first n_train_characters train; earlier papers shuffled before
splitting, so the exact split differs while its sizes match.
"""
import os

from ..backend import host
from .datasets import Dataset, load_cache, require, save_cache
from .seeding import check_count

_FOLDERS = ("images_background", "images_evaluation")
_CACHE_VERSION = 1


def _layout_error(root, problem):
    return FileNotFoundError(
        f"{problem}; expected Omniglot under {root!r} as "
        f"{os.path.join(root, 'images_background')}/<alphabet>/<character>/*.png "
        f"and/or {os.path.join(root, 'images_evaluation')}/<alphabet>/<character>/*.png")


def _subdirs(path):
    return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))


def find_characters(root):
    """[(alphabet, character, [png paths])], sorted by (alphabet, character)."""
    if not os.path.isdir(root):
        raise _layout_error(root, f"Omniglot root {root!r} does not exist")
    folders = [os.path.join(root, f) for f in _FOLDERS if os.path.isdir(os.path.join(root, f))]
    if not folders:
        raise _layout_error(root, f"{root!r} has neither {_FOLDERS[0]}/ nor {_FOLDERS[1]}/")
    characters = []
    for folder in folders:
        for alphabet in _subdirs(folder):
            for character in _subdirs(os.path.join(folder, alphabet)):
                path = os.path.join(folder, alphabet, character)
                pngs = sorted(f for f in os.listdir(path) if f.lower().endswith(".png"))
                if not pngs:
                    raise _layout_error(root, f"no .png files in {path!r}")
                characters.append((alphabet, character, [os.path.join(path, f) for f in pngs]))
    if not characters:
        raise _layout_error(root, f"no <alphabet>/<character>/ folders found in {root!r}")
    return sorted(characters, key=lambda c: (c[0], c[1]))


def decode(sources, image_size, who="load_omniglot"):
    """uint8 (n, image_size, image_size), ink 255 on background 0.

    sources: PNG paths or binary file objects (e.g. members of a zip).
    """
    image_module = require("PIL.Image", who)
    out = host.empty((len(sources), image_size, image_size), dtype=host.uint8)
    for i, source in enumerate(sources):
        with image_module.open(source) as im:
            im = im.convert("L")                         # mode "1" PNG -> 0/255
        # invert to ink-bright, then LANCZOS as in Finn et al.'s resize script
        im = im.point(lambda v: 255 - v)
        out[i] = host.asarray(im.resize((image_size, image_size),
                                        resample=image_module.Resampling.LANCZOS))
    return out


def _decoded(root, image_size, cache):
    """(uint8 images, character index per image, character names), maybe cached."""
    key = {"dataset": "omniglot", "version": _CACHE_VERSION, "image_size": image_size,
           "root": os.path.abspath(root)}
    if cache is not None:
        if os.path.isdir(cache):
            cache = os.path.join(cache, f"omniglot-{image_size}px.npz")
        hit = load_cache(cache, key)
        if hit is not None:
            return hit["images"], hit["character"], [str(n) for n in hit["names"]]
    characters = find_characters(root)
    paths = [p for _, _, pngs in characters for p in pngs]
    character = host.repeat(host.arange(len(characters)),
                            [len(pngs) for _, _, pngs in characters])
    names = [f"{a}/{c}" for a, c, _ in characters]
    images = decode(paths, image_size)
    if cache is not None:
        save_cache(cache, key, images=images, character=character, names=host.array(names))
    return images, character, names


def load_omniglot(root, image_size=28, rotations=True, n_train_characters=1200,
                  n_val_characters=0, cache=None):
    """Omniglot as a Dataset of (n, 1, image_size, image_size) float32 images.

    root: the folder holding images_background/ and images_evaluation/.
    rotations: classes 4c + r hold character c rotated by r * 90 degrees
        counter-clockwise (np.rot90), r = 0..3; else class c is character c.
    n_train_characters: the first ones, in (alphabet, character) order, are
        meta-training characters (1200 as in Vinyals et al.); the rest test.
    n_val_characters: the last this many of those training characters
        become validation classes instead (default 0: no val split, as in
        Vinyals et al. and Finn et al.).
    cache: None (decode the PNGs every call) or a path to an .npz file (or
        an existing folder to hold one) of the decoded, unrotated images
        (uint8, so cached and fresh loads are equal bit for bit); nothing is
        written anywhere else. A cache made from another root or size is
        rebuilt. Decoding all 32,460 PNGs takes some seconds, hence the
        cache. With rotations the full set is 129,840 images, about 410 MB
        of float32 at 28x28.
    The Dataset's `groups[class id]` is the class's alphabet (index into
    `group_names`), for within-alphabet episodes. Vinyals et al.'s split is
    by character, so one alphabet can have classes in train and in test.
    """
    image_size = check_count("image_size", image_size)
    n_train_characters = check_count("n_train_characters", n_train_characters)
    n_val_characters = check_count("n_val_characters", n_val_characters, minimum=0)
    n_fit = n_train_characters - n_val_characters
    if n_fit < 1:
        raise ValueError(f"n_val_characters={n_val_characters} must be smaller than "
                         f"n_train_characters={n_train_characters}")
    root = os.fspath(root)
    images, character, names = _decoded(root, image_size, cache)
    n_chars = len(names)
    if n_train_characters >= n_chars:
        raise ValueError(f"found {n_chars} characters under {root!r}; "
                         f"n_train_characters={n_train_characters} leaves none to test")
    base = (images.astype(host.float32) / 255.0)[:, None]         # (n, 1, s, s)
    char_ids = [host.arange(0, n_fit), host.arange(n_fit, n_train_characters),
                host.arange(n_train_characters, n_chars)]
    if rotations:
        # each rotation of a character is a new class: id = 4 * character + r
        images = host.concatenate([host.rot90(base, r, axes=(2, 3)) for r in range(4)])
        labels = host.concatenate([4 * character + r for r in range(4)])
        splits = [(4 * c[:, None] + host.arange(4)).ravel() for c in char_ids]
        class_names = tuple(f"{n}/rot{90 * r}" for n in names for r in range(4))
    else:
        images, labels, splits, class_names = base, character, char_ids, tuple(names)
    train, val, test = (s.astype(host.int64) for s in splits)
    # each class's alphabet, for within-alphabet episodes (Lake et al.'s runs)
    alphabets = sorted({n.split("/")[0] for n in names})
    groups = host.array([alphabets.index(n.split("/")[0]) for n in names], dtype=host.int64)
    return Dataset(images=host.ascontiguousarray(images), labels=labels.astype(host.int64),
                   train_classes=train, val_classes=val, test_classes=test,
                   name="omniglot", class_names=class_names,
                   groups=host.repeat(groups, 4) if rotations else groups,
                   group_names=tuple(alphabets))
