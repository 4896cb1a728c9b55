"""N-way K-shot episodes over any labelled dataset.

An episode picks N classes of a split, then K support and Q query examples
of each, and relabels the classes 0..N-1 in the order they were picked (the
episodic training of Vinyals et al. 2016, arXiv:1606.04080; Snell, Swersky
& Zemel 2017, arXiv:1703.05175, Algorithm 1). Training with a larger N than
at test time, which Snell et al. found helpful, is just a larger n_way.

Sampling is vectorised with the sort-random-keys trick: sorting i.i.d.
uniform keys gives a uniformly random permutation, so the positions of the
n smallest keys are a uniform sample of n items without replacement, in
random order. One call picks the classes of every episode at once, a second
the examples within every (episode, class) pair; no Python loop runs over
episodes or examples.

Within-group episodes (Lake, Salakhutdinov & Tenenbaum 2015's one-shot
runs: 20 characters of one alphabet per run): with `groups` (one group id,
e.g. an alphabet, per class), each episode first picks one group uniformly
among those with at least N classes, then N of that group's classes; the
keys of every other class are set above any uniform draw, so they sort last.
"""
from .. import backend
from ..backend import host
from .augment import Distortion
from .seeding import SeededSampler, check_count, dtype_name


def _integer_array(name, value):
    array = host.asarray(value)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size and array.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers, got dtype {array.dtype}")
    return array.astype(host.int64)


def smallest(keys, n):
    """Positions of the n smallest keys along the last axis, smallest first.

    Equal to argsort(keys)[..., :n], but an argpartition finds the n first
    in O(M) and only those n are sorted.
    """
    part = host.argpartition(keys, n - 1, axis=-1)[..., :n]
    order = host.argsort(host.take_along_axis(keys, part, axis=-1), axis=-1, kind="stable")
    return host.take_along_axis(part, order, axis=-1)


def class_index_table(labels, classes):
    """Per-class example indices, padded: (table (M, width), counts (M,)).

    table[m, :counts[m]] are the indices i with labels[i] == classes[m], in
    increasing order; the rest of the row is -1.
    """
    order = host.argsort(labels, kind="stable")           # examples grouped by label
    sorted_labels = labels[order]
    starts = host.searchsorted(sorted_labels, classes, side="left")
    counts = host.searchsorted(sorted_labels, classes, side="right") - starts
    width = int(counts.max()) if counts.size else 0
    column = host.arange(width)
    filled = column < counts[:, None]                      # (M, width)
    table = host.full((classes.size, width), -1, dtype=host.int64)
    table[filled] = order[(starts[:, None] + column)[filled]]
    return table, counts


class EpisodeSampler(SeededSampler):
    """N-way K-shot episodes from `images` restricted to `classes`.

    images:  host array (n, C, H, W) (any (n, ...) works), e.g. float in [0, 1]
    labels:  (n,) integer class ids
    classes: the class ids of this split; examples of other classes are never used
    groups:  None, or one group id per entry of `classes`: each episode then
             draws its N classes from a single group (within-alphabet episodes)
    augment: None, or a Distortion (or a dict of its parameters: affine,
             elastic, stroke width): every
             drawn support and query image is distorted afresh, with this
             sampler's RNG (scratchmeta.tasks.augment; for training only)

    sample(E) returns backend arrays
        support_x (E, N*K, C, H, W)   support_y (E, N*K) int64 in 0..N-1
        query_x   (E, N*Q, C, H, W)   query_y   (E, N*Q) int64 in 0..N-1
        classes   (E, N) int64: the original id of each episode label
    in class-major order: class 0's K shots, then class 1's, and so on.
    """

    def __init__(self, images, labels, classes, n_way, k_shot, n_query, seed=0, dtype=None,
                 groups=None, augment=None):
        self.n_way = check_count("n_way", n_way)
        self.k_shot = check_count("k_shot", k_shot)
        self.n_query = check_count("n_query", n_query)
        self.dtype = dtype_name(dtype)
        images = host.asarray(images)
        labels = _integer_array("labels", labels)
        n_images = images.shape[0] if images.ndim else 0
        if n_images != labels.shape[0]:
            raise ValueError(f"images and labels differ in length: {n_images} images "
                             f"vs {labels.shape[0]} labels")
        classes = _integer_array("classes", classes)
        if classes.size == 0:
            raise ValueError("the split is empty: classes has no entries")
        unique = host.unique(classes)
        if unique.size != classes.size:
            raise ValueError(f"classes has repeated ids: {classes.size} entries, "
                             f"{unique.size} distinct")
        if self.n_way > classes.size:
            raise ValueError(f"n_way={self.n_way} is larger than the number of classes "
                             f"in the split ({classes.size})")
        table, counts = class_index_table(labels, classes)
        missing = classes[counts == 0]
        if missing.size:
            raise ValueError(f"classes not present in labels: {missing[:10].tolist()}"
                             + (f" and {missing.size - 10} more" if missing.size > 10 else ""))
        needed = self.k_shot + self.n_query
        short = host.flatnonzero(counts < needed)
        if short.size:
            m = short[0]
            raise ValueError(f"class {int(classes[m])} has {int(counts[m])} examples but "
                             f"k_shot + n_query = {self.k_shot} + {self.n_query} = {needed} "
                             f"are needed ({short.size} class(es) too small)")
        self.images, self.labels, self.classes = images, labels, classes
        self.groups = self._eligible = None
        if groups is not None:
            groups = _integer_array("groups", groups)
            if groups.shape != classes.shape:
                raise ValueError(f"groups must give one group per class: {groups.size} groups "
                                 f"for {classes.size} classes")
            ids, sizes = host.unique(groups, return_counts=True)
            self._eligible = ids[sizes >= self.n_way]
            if self._eligible.size == 0:
                raise ValueError(f"n_way={self.n_way} is larger than every group: the largest "
                                 f"group (alphabet) of the split has {int(sizes.max())} classes")
            self.groups = groups
        self.augment = Distortion.from_config(augment)
        if self.augment is not None and images.ndim < 3:
            raise ValueError(f"augment needs images of shape (n, ..., H, W), got {images.shape}")
        self._table, self._counts = table, counts
        super().__init__(seed)

    @property
    def n_classes(self):
        return int(self.classes.size)

    def config(self):
        return {"n_way": self.n_way, "k_shot": self.k_shot, "n_query": self.n_query,
                "seed": self.seed, "dtype": self.dtype, "classes": self.classes.tolist(),
                "groups": None if self.groups is None else self.groups.tolist(),
                "augment": None if self.augment is None else self.augment.config()}

    def sample_indices(self, n_episodes):
        """Host int64 arrays: class ids (E, N), support (E, N*K), query (E, N*Q).

        The index arrays point into `images`; per episode the draws are
        without replacement, so no example repeats within an episode.
        """
        n_episodes = check_count("n_episodes", n_episodes)
        e, n, k, q = n_episodes, self.n_way, self.k_shot, self.n_query
        # N distinct classes per episode: first N of a random permutation of the M rows
        keys = self._rng.random((e, self.n_classes))                         # (E, M)
        if self.groups is not None:
            # one group per episode; the classes of other groups sort last (2 > any key)
            group = self._eligible[self._rng.integers(self._eligible.size, size=e)]
            keys = host.where(self.groups == group[:, None], keys, 2.0)
        rows = smallest(keys, n)                                             # (E, N)
        # K+Q distinct examples per picked class; padding keys (2 > any uniform) sort last
        width = self._table.shape[1]
        keys = self._rng.random((e, n, width))
        valid = host.arange(width) < self._counts[rows][..., None]          # (E, N, width)
        keys = host.where(valid, keys, 2.0)
        columns = smallest(keys, k + q)                                      # (E, N, K+Q)
        index = self._table[rows[..., None], columns]                        # (E, N, K+Q)
        support = index[..., :k].reshape(e, n * k)                           # class-major
        query = index[..., k:].reshape(e, n * q)
        return self.classes[rows], support, query

    def _draw(self, index):
        """The images at `index` (E, M) -> (E, M, ...), each with a fresh distortion
        from this sampler's RNG when it augments."""
        x = self.images[index]
        if self.augment is None:
            return x
        flat = x.reshape((-1,) + self.images.shape[1:])
        return self.augment(flat, self._rng).reshape(x.shape)

    def sample(self, n_episodes):
        """E episodes as backend arrays (see the class docstring)."""
        class_ids, support, query = self.sample_indices(n_episodes)
        e, n = class_ids.shape
        dtype = backend.resolve_dtype(self.dtype)
        # label j marks the j-th picked class: 0..0, 1..1, ... (K or Q of each)
        support_y = host.broadcast_to(host.repeat(host.arange(n), self.k_shot), support.shape)
        query_y = host.broadcast_to(host.repeat(host.arange(n), self.n_query), query.shape)
        support_x, query_x = self._draw(support), self._draw(query)       # support first
        return {"support_x": backend.asarray(support_x, dtype=dtype),
                "support_y": backend.asarray(support_y, dtype=host.int64),
                "query_x": backend.asarray(query_x, dtype=dtype),
                "query_y": backend.asarray(query_y, dtype=host.int64),
                "classes": backend.asarray(class_ids, dtype=host.int64)}
