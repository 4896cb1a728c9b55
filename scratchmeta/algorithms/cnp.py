"""Conditional Neural Processes (Garnelo et al. 2018, arXiv:1807.01613v1).

A model-based meta-learner: the support set (the paper's observations O) is
encoded, averaged into one vector r, and the decoder maps each query x and r
to a Gaussian over y. Adapting to a task is one forward pass (Sec. 2.4):

    r_i   = h_theta(x_i, y_i)               for (x_i, y_i) in O       (Eq. 1)
    r     = (1/n) sum_i r_i                 the commutative aggregate (Eq. 2)
    phi_j = g_theta(x_j, r) = (mu_j, sigma_j)  for every target x_j   (Eq. 3)

with sigma = 0.1 + 0.9 softplus(.) as in the authors' 1-D regression code.
Training (Sec. 2.5, Eq. 4) maximises the Gaussian log-likelihood of the
targets given a random-size subset O_N of the points, N ~ U{1..K}, where the
targets are all the task's points (the context among them):

    L(theta) = -E_f E_N [ sum_j log N(y_j; mu_j, sigma_j^2) ]

Here h and g are small ReLU MLPs (scratchmeta.nn.MLP), batched over tasks by
a leading task axis; the sums over points are means, so K changes no scale.
"""
from collections import OrderedDict
import math

from .. import backend
from .. import functional as F
from ..nn import MLP
from ..tensor import Tensor, grad, no_grad
from .base import MetaLearner
from .common import check_batch

LOG_2PI = math.log(2 * math.pi)


def softplus(x):
    """log(1 + exp(x)) = max(x, 0) + log(1 + exp(-|x|)): no overflow for large |x|."""
    return x.relu() + (1 + (-x.abs()).exp()).log()


def gaussian_nll(y, mu, sigma):
    """-log N(y; mu, sigma^2) = log sigma + (y - mu)^2 / (2 sigma^2) + log(2 pi) / 2, elementwise."""
    z = (y - mu) / sigma
    return sigma.log() + 0.5 * z * z + 0.5 * LOG_2PI


def gaussian_head(out, y_dim):
    """Split the decoder's output into (mu, sigma), sigma = 0.1 + 0.9 softplus(raw) > 0.1."""
    return out[..., :y_dim], 0.1 + 0.9 * softplus(out[..., y_dim:])


def _prefixed(params, prefix):
    """The sub-dict of `params` under `prefix.`, with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in params.items() if k.startswith(prefix + ".")}


def meta_loss_loop(cnp, theta, batch, n_context=None):
    """Eq. 4's loss, one task t at a time, its context the first n_context[t] support points (None: all).

    The paper's equations with unbatched shapes (slow; CNP.meta_loss batches the tasks):
    r = mean_i h(x_i, y_i) over the context (Eqs. 1-2), (mu_j, sigma_j) = g(x_j, r) at
    every point of the task (Eq. 3), and the mean Gaussian NLL, averaged over tasks.
    """
    T = check_batch(batch, "cnp.meta_loss_loop")
    if n_context is None:
        n_context = [batch["support_x"].shape[1]] * T
    encoder, decoder = _prefixed(theta, "encoder"), _prefixed(theta, "decoder")
    total = 0.0
    for t in range(T):
        n = int(n_context[t])
        xs, ys = batch["support_x"][t, :n], batch["support_y"][t, :n]          # O_N: (n, x_dim)
        r = cnp.encoder(encoder, F.concatenate([xs, ys], axis=-1)).mean(axis=0)   # (r_dim,)
        x_all = F.concatenate([batch["support_x"][t], batch["query_x"][t]], axis=0)   # (m, x_dim)
        y_all = F.concatenate([batch["support_y"][t], batch["query_y"][t]], axis=0)
        r_all = r.broadcast_to((x_all.shape[0], cnp.r_dim))
        mu, sigma = gaussian_head(cnp.decoder(decoder, F.concatenate([x_all, r_all], axis=-1)),
                                  cnp.y_dim)
        total = total + gaussian_nll(y_all, mu, sigma).mean() * (1.0 / T)
    return total


class CNP(MetaLearner):
    """Encoder h: (x, y) -> r_i; mean over the context; decoder g: (x, r) -> (mu, sigma).

    x_dim, y_dim: sizes of x and y; r_dim: size of r; encoder, decoder:
    hidden widths. random_context: train on O_N with N ~ U{1..K} per task
    (Sec. 2.5); False uses all K support points. seed: the host RNG of N.
    """

    name = "cnp"
    metric = "mse"

    def __init__(self, x_dim=1, y_dim=1, r_dim=64, encoder=(64, 64), decoder=(64, 64),
                 random_context=True, seed=0):
        self.x_dim, self.y_dim, self.r_dim = int(x_dim), int(y_dim), int(r_dim)
        self.encoder = MLP((self.x_dim + self.y_dim,) + tuple(encoder) + (self.r_dim,))
        self.decoder = MLP((self.x_dim + self.r_dim,) + tuple(decoder) + (2 * self.y_dim,))
        self.random_context, self.seed = bool(random_context), int(seed)
        self._rng = backend.host.random.default_rng(self.seed)

    def state_dict(self):
        """The context-size generator's state: checkpoints save it, so runs resume exactly."""
        return {"rng": self._rng.bit_generator.state}

    def load_state_dict(self, state):
        self._rng.bit_generator.state = state["rng"]

    def config(self):
        return {"model": {"x_dim": self.x_dim, "y_dim": self.y_dim, "r_dim": self.r_dim,
                          "encoder": list(self.encoder.sizes[1:-1]),
                          "decoder": list(self.decoder.sizes[1:-1])},
                "algo": {"random_context": self.random_context, "seed": self.seed}}

    def init(self, seed):
        params = OrderedDict()
        for prefix, mlp, s in (("encoder", self.encoder, seed), ("decoder", self.decoder, seed + 1)):
            for k, v in mlp.init(s).items():
                params[f"{prefix}.{k}"] = v
        return params

    def check_batch(self, x, y, who):
        """Points that fit the model: x (T, n, x_dim), y (T, n, y_dim), n >= 1."""
        if x.ndim != 3 or y.ndim != 3 or x.shape[:2] != y.shape[:2]:
            raise ValueError(f"cnp.{who}: expected x (T, n, x_dim) and y (T, n, y_dim), "
                             f"got shapes {x.shape} and {y.shape}")
        if x.shape[1] == 0:
            raise ValueError(f"cnp.{who}: the context is empty (0 points)")
        if x.shape[2] != self.x_dim or y.shape[2] != self.y_dim:
            raise ValueError(f"cnp.{who}: points have x_dim={x.shape[2]}, y_dim={y.shape[2]}; "
                             f"the model was built for x_dim={self.x_dim}, y_dim={self.y_dim}")

    def represent(self, theta, x, y, mask=None):
        """r = mean_i h(x_i, y_i) over the context (Eqs. 1-2): (T, n, .) -> (T, 1, r_dim).

        mask (T, n) of 0/1 selects each task's context; None uses every point.
        """
        self.check_batch(x, y, "represent")
        r_i = self.encoder(_prefixed(theta, "encoder"), F.concatenate([x, y], axis=-1))
        if mask is None:
            return r_i.mean(axis=1, keepdims=True)
        mask = Tensor(mask[..., None])                                 # (T, n, 1)
        return (r_i * mask).sum(axis=1, keepdims=True) / mask.sum(axis=1, keepdims=True)

    def decode(self, theta, r, x_target):
        """(mu, sigma) at each target (Eq. 3); sigma = 0.1 + 0.9 softplus(raw)."""
        T, m = x_target.shape[:2]
        r = r.broadcast_to((T, m, self.r_dim))
        out = self.decoder(_prefixed(theta, "decoder"), F.concatenate([x_target, r], axis=-1))
        return gaussian_head(out, self.y_dim)

    def context_sizes(self, T, K):
        """N_t ~ U{1..K} for every task (host ints, (T,)); None (all K) without random_context."""
        if not self.random_context:
            return None
        return self._rng.integers(1, K + 1, size=(T, 1))[:, 0]

    def meta_loss(self, theta, batch, n_context):
        """(Eq. 4's loss, mu, y_all) for every task at once.

        Task t's context: its first n_context[t] support points (None: all of them).
        """
        xs, ys = batch["support_x"], batch["support_y"]
        xq, yq = batch["query_x"], batch["query_y"]
        check_batch(batch, "cnp.meta_loss")
        self.check_batch(xq, yq, "meta_loss")
        mask = None
        if n_context is not None:                                              # (T, K) 0/1
            mask = backend.host.arange(xs.shape[1])[None, :] < backend.host.asarray(n_context)[:, None]
            mask = backend.asarray(mask.astype(backend.resolve_dtype(xs.dtype)))
        r = self.represent(theta, xs, ys, mask)
        # targets: every point of the task, the context among them (Sec. 2.5)
        x_all, y_all = F.concatenate([xs, xq], axis=1), F.concatenate([ys, yq], axis=1)
        mu, sigma = self.decode(theta, r, x_all)
        return gaussian_nll(y_all, mu, sigma).mean(), mu, y_all

    def meta_step(self, theta, batch):
        T, K = batch["support_x"].shape[:2]
        loss, mu, y_all = self.meta_loss(theta, batch, self.context_sizes(T, K))
        names = list(theta)
        grads = grad(loss, [theta[k] for k in names])
        with no_grad():
            diff = mu - y_all
            mse = (diff * diff).mean()
        return loss, dict(zip(names, grads)), {"mse": mse}

    @no_grad()
    def evaluate(self, theta, batch, **options):
        """Per task: "mse" of the mean prediction on the query set, and "nll" per query point."""
        if options:
            raise ValueError(f"cnp.evaluate: unsupported options {sorted(options)}")
        xq, yq = batch["query_x"], batch["query_y"]
        check_batch(batch, "cnp.evaluate")
        self.check_batch(xq, yq, "evaluate")
        r = self.represent(theta, batch["support_x"], batch["support_y"])
        mu, sigma = self.decode(theta, r, xq)
        diff = mu - Tensor(yq)
        return {"mse": (diff * diff).mean(axis=(1, 2)).data,
                "nll": gaussian_nll(Tensor(yq), mu, sigma).mean(axis=(1, 2)).data}


def make_learner(config):
    model = dict(config.get("model") or {})
    model.pop("model", None)
    return CNP(**model, **(config.get("algo") or {}))

