"""Test-time augmentation (TTA) of held-out episodes for embedding learners.

Ours, not part of Prototypical Networks (Snell, Swersky & Zemel 2017,
arXiv:1703.05175v2) or Matching Networks (Vinyals et al. 2016): at
evaluation, each support image x (and, with queries=True, each query image)
is embedded as the mean of the embeddings of M views of it,

    z(x) = 1/M sum_{m=0}^{M-1} f_theta(A_m x),    A_0 = identity,

with A_1 .. A_{M-1} random distortions (tasks.augment.Distortion; by default
the training recipe's HANDWRITING_AUGMENT affine maps), drawn afresh for
every image and view. Prototypes (Snell et al. Eq. 1) and attention
(Vinyals et al. Eq. 2) are then computed from those means as usual.

View m is the whole episode with its support (and query) images distorted,
embedded the way the learner embeds any test episode; with transductive
batch norm each view is normalised with its own statistics. View 0 is the
images as drawn, so M = 1 is exactly the plain evaluation. Without
queries=True the queries keep view 0's embeddings: nothing but the support
is distorted. The distortions come from a generator of their own, seeded
from the held-out seed, so every M scores the same episodes and a result is
reproducible from the seed (and the batch size, which orders the draws).
Cost: M embedding passes an episode instead of one.
"""
import numbers

from . import backend
from .backend import host
from .recipes import HANDWRITING_AUGMENT
from .tasks.augment import Distortion

TTA_STREAM = 7_000_001          # the distortions' generator: SeedSequence([TTA_STREAM, seed])


def check_views(views):
    """M as an int >= 1 (1: no augmentation), or a ValueError naming the value."""
    if isinstance(views, bool) or not isinstance(views, numbers.Integral) or views < 1:
        raise ValueError(f"tta must be an integer >= 1 (views of each held-out image; 1 is off), "
                         f"got {views!r}")
    return int(views)


class TestTimeAugmentation:
    """learner.test_augmentation: (embed, theta, batch) -> (z_support, z_query), view-averaged.

    views: M, the original image included (>= 1)
    distortion: a dict of tasks.augment.Distortion's parameters (default HANDWRITING_AUGMENT)
    queries: average the query images' views too (default: the support only)
    seed: the held-out seed the distortions are drawn from (None: fresh entropy)
    """

    __test__ = False            # not a pytest class, despite its name

    def __init__(self, views, distortion=None, queries=False, seed=0):
        self.views = check_views(views)
        spec = dict(HANDWRITING_AUGMENT) if distortion is None else distortion
        self.distortion = Distortion.from_config(spec)
        if self.distortion is None or not self.distortion.active:
            raise ValueError(f"tta: the distortion must be active (some parameter > 0), got {spec!r}")
        self.queries = bool(queries)
        entropy = None if seed is None else [TTA_STREAM, int(seed)]
        self._rng = host.random.default_rng(entropy)

    def config(self):
        return {"views": self.views, "queries": self.queries, "distortion": self.distortion.config()}

    def distort(self, x):
        """A distorted copy of images x (T, n, C, H, W): a fresh map for each image."""
        images = backend.to_numpy(x)
        flat = images.reshape((-1,) + images.shape[2:])                  # (T * n, C, H, W)
        return backend.asarray(self.distortion(flat, self._rng).reshape(images.shape), dtype=x.dtype)

    def __call__(self, embed, theta, batch):
        """embed(theta, batch)'s (z_support (T, n, d), z_query (T, M, d)), averaged over the views."""
        z_support, z_query = embed(theta, batch)                         # view 0: as drawn
        if self.views == 1:
            return z_support, z_query
        for _ in range(1, self.views):
            view = dict(batch, support_x=self.distort(batch["support_x"]))
            if self.queries:
                view["query_x"] = self.distort(batch["query_x"])
            zs, zq = embed(theta, view)
            z_support = z_support + zs
            if self.queries:
                z_query = z_query + zq
        z_support = z_support * (1.0 / self.views)                       # the mean over views
        if self.queries:
            z_query = z_query * (1.0 / self.views)
        return z_support, z_query


def install(learner, views, queries=False, seed=0, distortion=None):
    """Give `learner` test-time augmentation with M = views (M = 1 leaves it unchanged).

    A ValueError names M when it is not an integer >= 1, or when the
    learner has no embedding to average (only protonet and matching have one).
    """
    views = check_views(views)
    if views == 1:
        return learner
    if not hasattr(learner, "test_embed"):
        raise ValueError(f"tta={views}: {learner.name} has no embedding to average; test-time "
                         f"augmentation applies to the embedding learners (protonet, matching)")
    learner.test_augmentation = TestTimeAugmentation(views, distortion, queries, seed)
    return learner
