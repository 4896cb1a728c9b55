"""Omniglot's two minimal background sets, bundled: real handwriting, no download.

scratchmeta/data/omniglot/ ships the two zips of github.com/brendenlake/omniglot
(`python/images_background_small1.zip` and `..._small2.zip`, MIT licence,
LICENSE beside them) and `omniglot_minimal_28px.npz`: every drawing decoded
once by scripts/build_omniglot_minimal.py with the `omniglot` loader's own
resize (ink-inverted, LANCZOS to 28x28, uint8), so loading needs neither
Pillow nor a decode. SHA256SUMS holds the checksum of each of the three
files; `load_omniglot_minimal` checks the array file's before using it, and
tests/test_datasets.py re-decodes the zips and compares bit for bit.

Greek and Latin are in both zips (the same PNG bytes), so together the sets
hold 8 alphabets, 242 characters, 20 drawers each (4,840 drawings).

The split is by alphabet, so that meta-training and held-out alphabets never
share a character (Lake et al. 2015's one-shot runs, and the "minimal"
condition of Lake et al. 2019, test on alphabets never seen in training):

    test  Balinese (24 characters), Early_Aramaic (22)   the first two, A-Z
    val   Tagalog (17)                                   the last, A-Z
    train Greek (24), Japanese_(katakana) (47), Korean (40), Latin (26),
          Sanskrit (42): 179 characters

A rule rather than a choice by results: the alphabets sorted by name, the
first two held out for testing (both have at least 20 characters, so each
supports Lake et al.'s 20-way runs within one alphabet), the last for
validation, the five between for meta-training.

Rotations (Santoro et al. 2016; Vinyals et al. 2016): each rotation of a
training character by 90, 180 or 270 degrees is a class of its own, so
meta-training has 4 x 179 = 716 classes. Validation and test classes are
the unrotated characters, as drawn: Lake et al.'s one-shot runs use upright
drawings. Class id 4c + r is character c rotated by r * 90 degrees; val and
test use only r = 0. Each class's group is its alphabet (a rotated
character stays in its alphabet), which is what within-alphabet episodes
draw from (EpisodeSampler's `groups`).

Reflections (ours, off by default: `load_omniglot_minimal(reflections=True)`,
the task key `reflections`): each training character's left-right mirror
image, in each of the 4 rotations, is 4 more classes of its own: each
training character gives 8 classes, one for each symmetry of the square,
and meta-training has 8 x 179 = 1,432 classes. The existing ids do not change: class id 4C + 4c + r (C the
number of characters, 242) is character c mirrored (flipped along the width
axis) and then rotated by r * 90 degrees, named ".../rot{90 r}/mirror".
Validation and test classes stay upright and unreflected.
"""
import hashlib
import io
import os
import zipfile

from ..backend import host
from .datasets import Dataset
from .seeding import check_count

FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "data", "omniglot")
ZIPS = ("images_background_small1.zip", "images_background_small2.zip")
ARRAYS = "omniglot_minimal_28px.npz"
CHECKSUMS = "SHA256SUMS"
IMAGE_SIZE = 28
TEST_ALPHABETS = ("Balinese", "Early_Aramaic")
VAL_ALPHABETS = ("Tagalog",)


def bundled_file(name, folder=FOLDER):
    """The path of one bundled file, or a FileNotFoundError saying the install is incomplete."""
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the bundled Omniglot file {name!r} is missing from {folder!r}; "
                                f"reinstall scratchmeta (its package data holds it)")
    return path


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksums(folder=FOLDER):
    """{file name: sha256 hex} from SHA256SUMS (`sha256sum` format)."""
    sums = {}
    with open(bundled_file(CHECKSUMS, folder)) as f:
        for line in f:
            if line.strip():
                digest, name = line.split()
                sums[name.lstrip("*")] = digest
    return sums


def verify(name, folder=FOLDER):
    """Check one bundled file against SHA256SUMS; a ValueError names a mismatch."""
    expected = checksums(folder).get(name)
    if expected is None:
        raise ValueError(f"{CHECKSUMS} in {folder!r} lists no checksum for {name!r}")
    actual = sha256(bundled_file(name, folder))
    if actual != expected:
        raise ValueError(f"the bundled {name!r} is corrupt or was changed: sha256 {actual}, "
                         f"{CHECKSUMS} says {expected}")


def read_zips(folder=FOLDER):
    """[(alphabet, character, [PNG bytes of its 20 drawings])], sorted by (alphabet, character).

    A character found in both zips (Greek, Latin) must have the same
    drawings, byte for byte, in each; it is kept once.
    """
    characters = {}
    for name in ZIPS:
        with zipfile.ZipFile(bundled_file(name, folder)) as archive:
            drawings = {}
            for member in sorted(archive.namelist()):
                parts = member.split("/")
                if len(parts) == 4 and parts[3].lower().endswith(".png"):
                    drawings.setdefault((parts[1], parts[2]), []).append(archive.read(member))
        for key, pngs in drawings.items():
            if key in characters and characters[key] != pngs:
                raise ValueError(f"{key[0]}/{key[1]} differs between the two zips")
            characters[key] = pngs
    return [(a, c, characters[(a, c)]) for a, c in sorted(characters)]


def decode_zips(folder=FOLDER, image_size=IMAGE_SIZE):
    """The arrays of the bundled .npz, decoded afresh from the zips (needs Pillow).

    images uint8 (n, s, s), ink 255; character int64 (n,) index into
    characters; alphabet int64 (n_characters,) index into alphabets.
    """
    from .omniglot import decode
    characters = read_zips(folder)
    alphabets = sorted({a for a, _, _ in characters})
    images = decode([io.BytesIO(png) for _, _, pngs in characters for png in pngs],
                    image_size, who="omniglot-minimal at a size other than 28")
    return {"images": images,
            "character": host.repeat(host.arange(len(characters), dtype=host.int64),
                                     [len(pngs) for _, _, pngs in characters]),
            "alphabet": host.array([alphabets.index(a) for a, _, _ in characters], dtype=host.int64),
            "alphabets": host.array(alphabets),
            "characters": host.array([f"{a}/{c}" for a, c, _ in characters])}


def load_arrays(folder=FOLDER):
    """The bundled pre-decoded arrays (checksum verified); no Pillow needed."""
    verify(ARRAYS, folder)
    with host.load(bundled_file(ARRAYS, folder), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def check_reflections(reflections):
    """reflections as a bool, or a ValueError naming the value."""
    if not isinstance(reflections, (bool, host.bool_)):
        raise ValueError(f"omniglot-minimal: reflections must be true or false, got {reflections!r}")
    return bool(reflections)


def load_omniglot_minimal(image_size=IMAGE_SIZE, rotations=True, folder=FOLDER, reflections=False):
    """The bundled sets as a Dataset, split by alphabet (see the module docstring).

    image_size: 28 reads the pre-decoded arrays; any other size decodes the
        zips (Pillow needed, a few seconds).
    rotations: each training character's rotations by 90, 180, 270 degrees
        are classes of their own (val and test stay upright).
    reflections: each training character's mirror image (flipped along the
        width axis), and with `rotations` its rotations too, are classes of
        their own, with ids after every existing one (4C + 4c + r for
        character c of C, rotated by r * 90 degrees after the flip); val and
        test stay unreflected. Off by default.
    The Dataset's `groups[class id]` is the alphabet index of that class and
    `group_names` the alphabet names.
    """
    image_size = check_count("image_size", image_size)
    reflections = check_reflections(reflections)
    arrays = load_arrays(folder) if image_size == IMAGE_SIZE else decode_zips(folder, image_size)
    alphabets = [str(a) for a in arrays["alphabets"]]
    names = [str(c) for c in arrays["characters"]]
    unknown = sorted(set(TEST_ALPHABETS + VAL_ALPHABETS) - set(alphabets))
    if unknown:
        raise ValueError(f"the bundled Omniglot has no alphabet(s) {unknown}")
    split_of = {alphabets.index(a): "test" for a in TEST_ALPHABETS}
    split_of.update({alphabets.index(a): "val" for a in VAL_ALPHABETS})
    char_split = [split_of.get(int(a), "train") for a in arrays["alphabet"]]
    base = (arrays["images"].astype(host.float32) / 255.0)[:, None]     # (n, 1, s, s)
    character = arrays["character"].astype(host.int64)
    n_characters = len(names)
    train = host.array([char_split[c] == "train" for c in character], dtype=bool)
    images, labels = [], []
    for r in range(4 if rotations else 1):
        keep = train if r else host.ones(len(character), dtype=bool)
        images.append(host.rot90(base[keep], r, axes=(2, 3)))
        labels.append(4 * character[keep] + r)
    if reflections:                    # after every existing class, so their ids stay as they are
        mirrored = host.flip(base[train], axis=3)
        for r in range(4 if rotations else 1):
            images.append(host.rot90(mirrored, r, axes=(2, 3)))
            labels.append(4 * n_characters + 4 * character[train] + r)
    labels = host.concatenate(labels)
    present = host.unique(labels)

    def ids(split):
        return present[host.array([char_split[(c % (4 * n_characters)) // 4] == split
                                   for c in present], dtype=bool)]

    class_names = tuple(f"{n}/rot{90 * r}" for n in names for r in range(4))
    groups = host.repeat(arrays["alphabet"].astype(host.int64), 4)
    if reflections:
        class_names += tuple(f"{n}/rot{90 * r}/mirror" for n in names for r in range(4))
        groups = host.concatenate([groups, groups])
    return Dataset(images=host.ascontiguousarray(host.concatenate(images)), labels=labels,
                   train_classes=ids("train"), val_classes=ids("val"), test_classes=ids("test"),
                   name="omniglot-minimal", class_names=class_names, groups=groups,
                   group_names=tuple(alphabets))
