"""Small random distortions of training images (data augmentation).

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
distortions of handwritten digits). Optionally an elastic displacement
field d (ElasticDistortion, Simard et al.'s Sec. 2) moves each output pixel
before the affine map, out(p) = in(A^-1 (p + d(p) - c - t) + c), and the
pen's strokes are thickened or thinned first (StrokeWidth); Distortion
composes the three from one dict of parameters. Here they distort only
meta-training images; held-out episodes are never augmented (tasks.registry).

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


def gaussian_smoother(size, sigma, truncate=4.0):
    """(size, size) matrix S: S @ u convolves u with a Gaussian of std sigma.

    The kernel is g(k) = exp(-k^2 / (2 sigma^2)) at the integers |k| <=
    truncate * sigma, normalised to sum 1, and zero beyond the image's edge
    (scipy.ndimage.gaussian_filter with mode="constant", written as a matrix
    so a field (..., H, W) is smoothed along both axes by S_H @ u @ S_W^T).
    """
    radius = int(truncate * sigma + 0.5)
    k = host.arange(-radius, radius + 1)
    g = host.exp(-0.5 * (k / sigma) ** 2)
    g = g / g.sum()
    offset = host.arange(size)[:, None] - host.arange(size)[None, :]    # i - j
    return host.where(host.abs(offset) <= radius, g[host.clip(offset + radius, 0, 2 * radius)], 0.0)


class ElasticDistortion:
    """Simard, Steinkraus & Platt 2003 (ICDAR), Sec. 2's elastic distortion.

    Each pixel p of the output reads the input at p + d(p), where the
    displacement field is white noise smoothed by a Gaussian and scaled,

        d = alpha * (G_sigma * u),      u ~ U(-1, 1)^(2, H, W),

    one field per image and axis. A small sigma gives a random, nearly
    uncorrelated field; a large one a nearly rigid shift; Simard et al. used
    sigma = 4 and alpha = 34 on 29 x 29 digits ("intermediate values of
    sigma mean more like elastic deformation"). The smoothing keeps the
    field's size small: at sigma = 4 each component of d has a standard
    deviation of about alpha / 25 pixels.

    alpha: scale of the field (the parameter "elastic"), >= 0; 0 is none
    sigma: the smoothing Gaussian's std, pixels ("elastic_sigma"), > 0
    """

    def __init__(self, alpha=0.0, sigma=4.0):
        self.alpha = _check("elastic", alpha)
        self.sigma = _check("elastic_sigma", sigma)
        if self.sigma == 0:
            raise ValueError(f"augment: elastic_sigma must be > 0, got {sigma!r}")

    @property
    def active(self):
        return self.alpha > 0

    def draw(self, rng, n, height, width):
        """n displacement fields (n, 2, H, W): (row, column) offsets in pixels."""
        u = rng.uniform(-1.0, 1.0, size=(n, 2, height, width))
        s_h, s_w = gaussian_smoother(height, self.sigma), gaussian_smoother(width, self.sigma)
        return self.alpha * (s_h @ u @ s_w.T)


class StrokeWidth:
    """Thicker or thinner pen strokes: a random blend with a grey dilation or erosion.

    With D(x) and E(x) the maximum and minimum of x over each pixel's 3 x 3
    neighbourhood (grey-scale dilation and erosion by a flat square; pixels
    outside the image count as background 0) and w ~ U(-stroke, stroke) per image,

        out = x + w (D(x) - x)   if w >= 0    (thicker: up to one pixel a side)
        out = x - w (E(x) - x)   if w < 0     (thinner)

    a convex mix of x and D(x) or E(x), so ink stays in [0, 1]. Ours, not
    Simard et al.'s: handwriting datasets differ in pen width, and Omniglot's
    drawings were rendered from online strokes at one width.

    stroke: largest blend weight |w| (0 to 1); 0 is none
    """

    def __init__(self, stroke=0.0):
        self.stroke = _check("stroke", stroke, 1.0)

    @property
    def active(self):
        return self.stroke > 0

    def __call__(self, images, rng):
        w = self.stroke * rng.uniform(-1.0, 1.0, size=images.shape[0])
        return restroke(images, w)


def restroke(images, w):
    """x + w (D(x) - x) where w >= 0, x - w (E(x) - x) where w < 0 (StrokeWidth).

    images (n, ..., H, W), w (n,) in [-1, 1]; D and E are the 3 x 3 grey
    dilation and erosion, background 0 outside. Returns images' dtype.
    """
    w = host.asarray(w, dtype=host.float64).reshape((-1,) + (1,) * (images.ndim - 1))
    x = images.astype(host.float64)
    height, width = x.shape[-2:]
    padded = host.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)])     # background 0 around
    windows = [padded[..., r:r + height, c:c + width] for r in range(3) for c in range(3)]
    dilated, eroded = host.max(windows, axis=0), host.min(windows, axis=0)
    out = x + host.maximum(w, 0) * (dilated - x) + host.maximum(-w, 0) * (eroded - x)
    return out.astype(images.dtype)


class Distortion:
    """The distortions of one training image, from one flat dict of parameters.

    First the stroke width (StrokeWidth), then one resampling that applies the
    elastic field and then the affine map (ElasticDistortion, RandomAffine):
    out(p) = x'(A^-1 (p + d(p) - c - t) + c), x' the re-stroked image. Random
    draws come in a fixed order (the affine map, the field, the stroke weight),
    each only when its part is active, so affine-only parameters reproduce
    RandomAffine's draws and images exactly, and zero strength draws nothing.
    """

    PARAMETERS = PARAMETERS + ("elastic", "elastic_sigma", "stroke")

    def __init__(self, rotation=0.0, scale=0.0, shear=0.0, translate=0.0,
                 elastic=0.0, elastic_sigma=4.0, stroke=0.0):
        self.affine = RandomAffine(rotation, scale, shear, translate)
        self.elastic = ElasticDistortion(elastic, elastic_sigma)
        self.stroke = StrokeWidth(stroke)

    @classmethod
    def from_config(cls, spec):
        """None (no augmentation), a Distortion or RandomAffine, or a dict of parameters."""
        if spec is None or isinstance(spec, cls):
            return spec
        if isinstance(spec, RandomAffine):
            return cls(**spec.config())
        if not isinstance(spec, dict):
            raise ValueError(f"augment must be None or a dict of {list(cls.PARAMETERS)}, got {spec!r}")
        unknown = sorted(set(spec) - set(cls.PARAMETERS))
        if unknown:
            raise ValueError(f"augment: unknown parameter(s) {unknown}; known: {list(cls.PARAMETERS)}")
        return cls(**spec)

    def config(self):
        return dict(self.affine.config(), elastic=self.elastic.alpha,
                    elastic_sigma=self.elastic.sigma, stroke=self.stroke.stroke)

    def __repr__(self):
        return "Distortion(" + ", ".join(f"{k}={v:g}" for k, v in self.config().items()) + ")"

    @property
    def active(self):
        return self.affine.active or self.elastic.active or self.stroke.active

    def __call__(self, images, rng):
        if images.ndim < 3:
            raise ValueError(f"augment needs images of shape (n, ..., H, W), got {images.shape}")
        if not self.active:
            return images
        n, height, width = images.shape[0], images.shape[-2], images.shape[-1]
        if self.affine.active:
            matrices, shifts = self.affine.draw(rng, n)
        else:
            matrices, shifts = host.tile(host.eye(2), (n, 1, 1)), host.zeros((n, 2))
        field = self.elastic.draw(rng, n, height, width) if self.elastic.active else None
        if self.stroke.active:
            images = self.stroke(images, rng)
        if not (self.affine.active or self.elastic.active):
            return images
        return affine_warp(images, matrices, shifts, field)


def affine_warp(images, matrices, shifts, displacement=None):
    """out[i](p) = images[i](A_i^-1 (p + d_i(p) - c - t_i) + c), bilinear, 0 outside.

    images (n, ..., H, W); matrices (n, 2, 2) and shifts (n, 2) act on
    (row, column) pixel coordinates; c is the image centre; displacement
    (n, 2, H, W), optional, is an elastic field d added to each output
    pixel's position before the affine map (ElasticDistortion): both read
    the image once, so a distortion blurs it once. Returns images' dtype.
    With A = I, t = 0 and no displacement every pixel is read back exactly.
    """
    n, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    flat = images.reshape(n, -1, height * width).astype(host.float64)    # (n, C, P)
    rows, cols = host.meshgrid(host.arange(height), host.arange(width), indexing="ij")
    centre = host.array([(height - 1) / 2, (width - 1) / 2])
    p = host.stack([rows.ravel(), cols.ravel()], axis=-1) - centre       # (P, 2) about the centre
    p = p[None] - shifts[:, None]                                        # (n, P, 2): p - t
    if displacement is not None:
        p = p + displacement.reshape(n, 2, height * width).transpose(0, 2, 1)   # p + d(p) - t
    # source coordinates: A^-1 (p + d(p) - t) + c, for every image and pixel
    inverse = host.linalg.inv(matrices)                                  # (n, 2, 2)
    source = host.einsum("nij,npj->npi", inverse, p) + centre            # (n, P, 2)
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
