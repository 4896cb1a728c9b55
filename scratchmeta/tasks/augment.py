"""Small random affine distortions of training images (data augmentation).

Each drawn image gets its own random affine map, drawn afresh every time it
is drawn into an episode: a rotation by theta, a horizontal shear by phi, an
isotropic scaling by s and a translation by t,

    A = R(theta) @ Sh(phi) @ (s I),       R(theta) = [[cos, -sin], [sin, cos]],
                                          Sh(phi)  = [[1, tan phi], [0, 1]]
    theta ~ U(-rotation, rotation) degrees,  phi ~ U(-shear, shear) degrees,
    s ~ U(1 - scale, 1 + scale),             t ~ U(-translate, translate)^2 pixels,

about the image centre c. The output is out(p) = in(A^-1 (p - c - t) + c),
read by bilinear interpolation with background 0 outside the image (ink 1
on 0: scratchmeta.tasks.datasets). Small affine distortions of handwriting
are the classic way to get more training drawings that keep their label
(Simard, Steinkraus & Platt 2003, "Best practices for convolutional neural
networks applied to visual document analysis", ICDAR: affine and elastic
distortions of handwritten digits). Here they distort only meta-training
images; held-out episodes are never augmented (tasks.registry).

The randomness comes from the caller's numpy Generator (an EpisodeSampler's
own), so episodes stay reproducible from the sampler's seed and its
checkpointed state. At zero strength (every parameter 0) nothing is drawn
and images come back unchanged. Host-side work, like the rest of sampling.
"""
import math
import numbers

from ..backend import host

PARAMETERS = ("rotation", "scale", "shear", "translate")


def _check(name, value, upper=None, inclusive=True):
    """`value` as a float in [0, upper], or a ValueError naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"augment: {name} must be a finite number, got {value!r}")
    too_big = upper is not None and (value > upper if inclusive else value >= upper)
    if value < 0 or too_big:
        bound = "" if upper is None else f" and {'<=' if inclusive else '<'} {upper}"
        raise ValueError(f"augment: {name} must be >= 0{bound}, got {value!r}")
    return float(value)


class RandomAffine:
    """Random affine distortion of each image, bilinear, background 0.

    rotation:  largest rotation angle, degrees (0 to 180)
    scale:     largest relative change of size: s in [1 - scale, 1 + scale] (0 to < 1)
    shear:     largest horizontal shear angle, degrees (0 to < 90)
    translate: largest shift along each axis, pixels (>= 0)

    aug(images, rng) returns an array of images' shape and dtype; the first
    axis indexes images, the last two are (H, W), any axes between
    (channels) share the image's map.
    """

    def __init__(self, rotation=0.0, scale=0.0, shear=0.0, translate=0.0):
        self.rotation = _check("rotation", rotation, 180.0)
        self.scale = _check("scale", scale, 1.0, inclusive=False)
        self.shear = _check("shear", shear, 90.0, inclusive=False)
        self.translate = _check("translate", translate)

    @classmethod
    def from_config(cls, spec):
        """None (no augmentation), a RandomAffine, or a dict of its parameters."""
        if spec is None or isinstance(spec, cls):
            return spec
        if not isinstance(spec, dict):
            raise ValueError(f"augment must be None or a dict of {list(PARAMETERS)}, got {spec!r}")
        unknown = sorted(set(spec) - set(PARAMETERS))
        if unknown:
            raise ValueError(f"augment: unknown parameter(s) {unknown}; known: {list(PARAMETERS)}")
        return cls(**spec)

    def config(self):
        return {name: getattr(self, name) for name in PARAMETERS}

    def __repr__(self):
        return "RandomAffine(" + ", ".join(f"{k}={v:g}" for k, v in self.config().items()) + ")"

    @property
    def active(self):
        return any(getattr(self, name) > 0 for name in PARAMETERS)

    def draw(self, rng, n):
        """n random maps: A (n, 2, 2) and t (n, 2), in (row, column) coordinates."""
        u = rng.uniform(-1.0, 1.0, size=(n, 5))                 # one row of draws per image
        theta = host.deg2rad(self.rotation * u[:, 0])
        phi = host.deg2rad(self.shear * u[:, 1])
        s = 1.0 + self.scale * u[:, 2]
        cos, sin, tan = host.cos(theta), host.sin(theta), host.tan(phi)
        # (x, y) = (column, row): R @ Sh @ sI = s [[cos, cos tan - sin], [sin, sin tan + cos]]
        a_xy = s[:, None, None] * host.stack([
            host.stack([cos, cos * tan - sin], axis=-1),
            host.stack([sin, sin * tan + cos], axis=-1)], axis=1)        # (n, 2, 2) on (x, y)
        swap = host.array([[0.0, 1.0], [1.0, 0.0]])                    # (x, y) <-> (row, col)
        matrices = swap @ a_xy @ swap                                    # (n, 2, 2) on (row, col)
        shifts = self.translate * u[:, 3:5]                              # (n, 2) pixels
        return matrices, shifts

    def __call__(self, images, rng):
        if images.ndim < 3:
            raise ValueError(f"augment needs images of shape (n, ..., H, W), got {images.shape}")
        if not self.active:
            return images
        matrices, shifts = self.draw(rng, images.shape[0])
        return affine_warp(images, matrices, shifts)


def affine_warp(images, matrices, shifts):
    """out[i](p) = images[i](A_i^-1 (p - c - t_i) + c), bilinear, 0 outside.

    images (n, ..., H, W); matrices (n, 2, 2) and shifts (n, 2) act on
    (row, column) pixel coordinates; c is the image centre. Returns
    images' dtype. With A = I and t = 0 every pixel is read back exactly.
    """
    n, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    flat = images.reshape(n, -1, height * width).astype(host.float64)    # (n, C, P)
    rows, cols = host.meshgrid(host.arange(height), host.arange(width), indexing="ij")
    centre = host.array([(height - 1) / 2, (width - 1) / 2])
    p = host.stack([rows.ravel(), cols.ravel()], axis=-1) - centre       # (P, 2) about the centre
    # source coordinates: A^-1 (p - t) + c, for every image and pixel
    inverse = host.linalg.inv(matrices)                                  # (n, 2, 2)
    source = host.einsum("nij,npj->npi", inverse, p[None] - shifts[:, None]) + centre  # (n, P, 2)
    r0 = host.floor(source[..., 0]).astype(host.int64)
    c0 = host.floor(source[..., 1]).astype(host.int64)
    fr, fc = source[..., 0] - r0, source[..., 1] - c0                  # fractions in [0, 1)
    out = host.zeros_like(flat)
    # bilinear: the four neighbours, each weighted by the opposite rectangle's area
    for dr, dc, weight in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc),
                           (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        r, c = r0 + dr, c0 + dc
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)      # outside: background 0
        index = host.where(inside, r * width + c, 0)                     # (n, P)
        values = host.take_along_axis(flat, index[:, None, :], axis=2)   # (n, C, P)
        out += values * (weight * inside)[:, None, :]
    return out.reshape(images.shape).astype(images.dtype)
