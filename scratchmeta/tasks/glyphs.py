"""An offline, Omniglot-like glyph set rendered from matplotlib's DejaVu fonts.

Omniglot (Lake et al. 2015) has many classes with few examples each, drawn
by different hands. This set imitates that without a download: a class is
one character from one of several scripts, and an example is that character
in a random DejaVu face (Sans, Serif, Mono; regular, bold, oblique), with a
random stroke width and a random affine distortion, rendered at 56x56 and
box-downsampled to 28x28, ink 1 on background 0.

Classes are kept only where DejaVu Sans really has a glyph, the glyph is not
(nearly) empty, and its canonical rendering is not (nearly) the same as an
earlier class's: Latin "A", Greek "Alpha" and Cyrillic "A" are one class.
"""
import functools
import hashlib
import json
import math
import os

from ..backend import host
from .datasets import Dataset, default_cache_dir, load_cache, require, save_cache, split_classes
from .seeding import check_count

_VERSION = 1
_FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf", "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf")
# candidate characters in class order: on a near-duplicate the earlier one stays
_SCRIPTS = (
    ("digits", 0x0030, 0x0039), ("Latin capitals", 0x0041, 0x005A),
    ("Latin small", 0x0061, 0x007A), ("Greek capitals", 0x0391, 0x03A9),
    ("Greek small", 0x03B1, 0x03C9), ("Cyrillic", 0x0400, 0x045F),
    ("Armenian capitals", 0x0531, 0x0556), ("Armenian small", 0x0561, 0x0587),
    ("Hebrew", 0x05D0, 0x05EA), ("Georgian", 0x10D0, 0x10FA),
    ("Tifinagh", 0x2D30, 0x2D7F), ("Canadian syllabics", 0x1401, 0x14BF),
    ("arrows", 0x2190, 0x21FF), ("mathematical operators", 0x2200, 0x22FF))

_FONT_SIZE = 40          # px, on the 56 px frame: capitals about 29 px tall
_CANVAS = 112            # the glyph is drawn here first, room for any stroke
_FRAME = 56              # render size; box-downsampled by 2 to IMAGE_SIZE
_FIT = 44.0              # glyphs larger than this (px) are shrunk to fit
IMAGE_SIZE = _FRAME // 2
_MIN_INK = 20.0          # canonical ink mass (sum over 28x28 in [0, 1]); less is a dot
_NEAR_DUPLICATE = 0.1    # relative L1 distance under which two classes are one


@functools.lru_cache(maxsize=None)
def _fonts():
    """[(file name, font at _FONT_SIZE, set of code points it maps)], Sans first."""
    matplotlib = require("matplotlib", "load_glyphs")
    image_font = require("PIL.ImageFont", "load_glyphs")
    tt_lib = require("fontTools.ttLib", "load_glyphs")
    folder = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    fonts = []
    for name in _FONT_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with tt_lib.TTFont(path, lazy=True) as tt:
                cmap = set(tt.getBestCmap())
            fonts.append((name, image_font.truetype(path, _FONT_SIZE), cmap))
    if not fonts or fonts[0][0] != _FONT_FILES[0]:
        raise FileNotFoundError(f"matplotlib's DejaVuSans.ttf was not found in {folder!r}")
    return fonts


@functools.lru_cache(maxsize=None)
def _pil():
    return require("PIL.Image", "load_glyphs"), require("PIL.ImageDraw", "load_glyphs")


def render_glyph(char, font, stroke=0, rotation=0.0, scale=1.0, shear=0.0, shift=(0.0, 0.0)):
    """One glyph as uint8 (28, 28), ink 255; None if it has no ink.

    The ink's bounding-box centre c goes to the frame centre m plus shift;
    a frame point p shows the canvas point  c + A^-1 (p - m - shift)  with
        A = fit * scale * R(rotation) [[1, shear], [0, 1]],
    fit = min(1, 44 / largest side of the ink box). rotation is in degrees,
    shift in pixels of the 28x28 output.
    """
    image, image_draw = _pil()
    canvas = image.new("L", (_CANVAS, _CANVAS), 0)
    image_draw.Draw(canvas).text((_CANVAS / 2, _CANVAS / 2), char, font=font, fill=255,
                                 anchor="mm", stroke_width=int(stroke), stroke_fill=255)
    box = canvas.getbbox()
    if box is None:
        return None
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    fit = min(1.0, _FIT / max(box[2] - box[0], box[3] - box[1]))
    theta = math.radians(rotation)
    cos, sin = math.cos(theta), math.sin(theta)
    zoom = fit * scale
    # A = zoom * R @ Shear = zoom * [[cos, cos*shear - sin], [sin, sin*shear + cos]]
    a, b = zoom * cos, zoom * (cos * shear - sin)
    c, d = zoom * sin, zoom * (sin * shear + cos)
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det          # A^-1
    mx = _FRAME / 2 + 2 * shift[0]                                  # 2: 56 px frame -> 28 px
    my = _FRAME / 2 + 2 * shift[1]
    coeffs = (ia, ib, cx - ia * mx - ib * my, ic, id_, cy - ic * mx - id_ * my)
    frame = canvas.transform((_FRAME, _FRAME), image.Transform.AFFINE, coeffs,
                             resample=image.Resampling.BILINEAR)
    return host.asarray(frame.reduce(2))                            # 2x2 box filter


@functools.lru_cache(maxsize=None)
def glyph_codepoints():
    """The class list: code points kept by the emptiness and duplicate filters.

    Canonical rendering: DejaVu Sans, no stroke, no distortion. A candidate
    is dropped if its ink mass is under _MIN_INK, or if for an earlier kept
    class  sum|a - b| / max(sum a, sum b) < _NEAR_DUPLICATE.
    """
    sans = _fonts()[0]
    candidates = [cp for _, lo, hi in _SCRIPTS for cp in range(lo, hi + 1) if cp in sans[2]]
    kept_images = host.empty((len(candidates), IMAGE_SIZE * IMAGE_SIZE))
    kept_mass = host.empty(len(candidates))
    kept = []
    for cp in candidates:
        glyph = render_glyph(chr(cp), sans[1])
        if glyph is None:
            continue
        x = glyph.ravel() / 255.0
        mass = x.sum()
        if mass < _MIN_INK:
            continue
        # sum|a - b| >= |sum a - sum b|: only classes of similar mass can be too close
        scale = host.maximum(kept_mass[:len(kept)], mass)
        close = host.flatnonzero(host.abs(kept_mass[:len(kept)] - mass) < _NEAR_DUPLICATE * scale)
        distance = host.abs(kept_images[close] - x).sum(axis=1) / scale[close]
        if distance.size and distance.min() < _NEAR_DUPLICATE:
            continue
        kept_images[len(kept)], kept_mass[len(kept)] = x, mass
        kept.append(cp)
    return tuple(kept)


def render_class(codepoint, n_per_class, seed):
    """uint8 (n_per_class, 28, 28) examples of one class.

    The generator is seeded by (seed, codepoint), so a class's examples do
    not depend on which other classes are generated.
    """
    rng = host.random.default_rng([seed, codepoint])
    fonts = [f for f in _fonts() if codepoint in f[2]]
    n = n_per_class
    font = rng.integers(len(fonts), size=n)
    stroke_draw = rng.random(n)                 # stroke 0..2 px, bold faces 0..1
    rotation = rng.uniform(-15.0, 15.0, size=n)
    scale = rng.uniform(0.8, 1.15, size=n)
    shear = rng.uniform(-0.2, 0.2, size=n)
    shift = rng.uniform(-2.0, 2.0, size=(n, 2))
    out = host.zeros((n, IMAGE_SIZE, IMAGE_SIZE), dtype=host.uint8)
    for i in range(n):
        name, face, _ = fonts[font[i]]
        max_stroke = 1 if "Bold" in name else 2
        stroke = int(stroke_draw[i] * (max_stroke + 1))
        glyph = render_glyph(chr(codepoint), face, stroke, rotation[i], scale[i],
                             shear[i], shift[i])
        if glyph is not None:
            out[i] = glyph
    return out


def _cache_key(n_per_class, seed, n_classes):
    pil = require("PIL", "load_glyphs")
    matplotlib = require("matplotlib", "load_glyphs")
    return {"dataset": "glyphs", "version": _VERSION, "n_per_class": n_per_class,
            "seed": seed, "n_classes": n_classes, "pillow": pil.__version__,
            "matplotlib": matplotlib.__version__, "fonts": [f[0] for f in _fonts()]}


def load_glyphs(n_per_class=20, seed=0, cache_dir=None, n_classes=None, split_seed=0,
                use_cache=True):
    """The glyph set as a Dataset: (C * n_per_class, 1, 28, 28) float32.

    C = 849 classes with matplotlib 3.11's DejaVu fonts under Pillow 13.0
    and 12.3 (the filters decide, so other versions may differ by a few);
    the default 20 per class (16,980 images) took 2.3 s to render on an
    idle CPU core (up to 7 s on a loaded one), the class filter 0.6 s more.
    n_classes: only the first n of those classes (for quick tests); a
        class's images are the same whichever n is asked for.
    Split: a permutation of the class ids seeded by split_seed, 60% train,
    20% val, 20% test. Deterministic: one seed gives the same bytes.
    Cache: an .npz under cache_dir (default $SCRATCHMETA_CACHE or
    ~/.cache/scratchmeta) keyed by these arguments, the library versions and
    a format version; use_cache=False neither reads nor writes it.
    """
    n_per_class = check_count("n_per_class", n_per_class)
    seed = check_count("seed", seed, minimum=0)
    split_seed = check_count("split_seed", split_seed, minimum=0)
    codepoints = glyph_codepoints()
    if n_classes is not None:
        n_classes = check_count("n_classes", n_classes)
        if n_classes > len(codepoints):
            raise ValueError(f"n_classes={n_classes} but the glyph set has "
                             f"{len(codepoints)} classes")
        codepoints = codepoints[:n_classes]
    images = None
    if use_cache:
        key = _cache_key(n_per_class, seed, n_classes)
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        path = os.path.join(cache_dir or default_cache_dir(), f"glyphs-v{_VERSION}-{digest}.npz")
        hit = load_cache(path, key)
        if hit is not None and tuple(hit["codepoints"].tolist()) == codepoints:
            images = hit["images"]
    if images is None:
        images = host.stack([render_class(cp, n_per_class, seed) for cp in codepoints])
        if use_cache:
            save_cache(path, key, images=images, codepoints=host.array(codepoints))
    n = len(codepoints)
    train, val, test = split_classes(n, (0.6, 0.2), split_seed)
    return Dataset(images=(images.reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)
                           .astype(host.float32) / 255.0),
                   labels=host.repeat(host.arange(n, dtype=host.int64), n_per_class),
                   train_classes=train, val_classes=val, test_classes=test,
                   name="glyphs", class_names=tuple(chr(cp) for cp in codepoints))
