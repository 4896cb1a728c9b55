"""Batch norm in eval mode at test time: running statistics, as PyTorch's BatchNorm2d keeps them.

Snell et al.'s code (jakesnell/prototypical-networks) trains with each
episode's batch statistics and evaluates after model.eval(): every block
normalises with running averages of the training episodes' means and
variances, r <- (1 - m) r + m * batch (m = 0.1; the variance unbiased),
starting from mean 0 and variance 1. scratchmeta's default normalises each
test episode with its own statistics instead (transductive, as MAML's code
does); `RunningStatistics` is the reference's alternative for ProtoNet and
Matching Networks (algo test_batch_norm="running").
"""
from .. import backend, nn
from ..tensor import as_tensor, no_grad

MODES = ("transductive", "running")


class RunningStatistics:
    """Per-block running mean and variance of an nn.Conv4 embedding."""

    def __init__(self, model, momentum=0.1):
        if not isinstance(model, nn.Conv4):
            raise ValueError("test_batch_norm='running' needs the Conv4 embedding "
                             f"(model 'conv4'), got {type(model).__name__}")
        self.model, self.momentum = model, float(momentum)
        self.stats = [(backend.xp.zeros(model.hidden), backend.xp.ones(model.hidden))
                      for _ in range(model.blocks)]

    @no_grad()
    def update(self, theta, batch):
        """Fold in each training episode's statistics (support and query embedded together)."""
        m = self.momentum
        for t in range(batch["support_x"].shape[0]):
            x = backend.xp.concatenate([backend.asarray(batch["support_x"][t]),
                                        backend.asarray(batch["query_x"][t])])
            _, used = nn.conv4_features_eval(self.model, theta, as_tensor(x))
            new = []
            for i, ((r_mean, r_var), (mean, var)) in enumerate(zip(self.stats, used)):
                count = x.shape[0] * (x.shape[2] >> i) * (x.shape[3] >> i)   # values a channel
                unbiased = var * count / max(count - 1, 1)
                new.append(((1 - m) * r_mean + m * mean, (1 - m) * r_var + m * unbiased))
            self.stats = new

    @no_grad()
    def embed(self, theta, batch):
        """(z_support (T, n, d), z_query (T, M, d)), batch norm with the running statistics."""
        sx, qx = backend.asarray(batch["support_x"]), backend.asarray(batch["query_x"])
        T, n, M = sx.shape[0], sx.shape[1], qx.shape[1]
        x = backend.xp.concatenate([sx, qx], axis=1).reshape((T * (n + M),) + sx.shape[2:])
        z, _ = nn.conv4_features_eval(self.model, theta, as_tensor(x), self.stats)
        z = z.reshape(T, n + M, -1)
        return z[:, :n], z[:, n:]

    def state_dict(self):
        return {"running": [[backend.to_numpy(a).tolist() for a in s] for s in self.stats]}

    def load_state_dict(self, state):
        self.stats = [tuple(backend.asarray(backend.host.asarray(a)) for a in s)
                      for s in state["running"]]


def running_statistics(model, mode):
    """RunningStatistics for mode "running", None for "transductive"."""
    if mode not in MODES:
        raise ValueError(f"unknown test_batch_norm {mode!r}; choose one of {MODES}")
    return RunningStatistics(model) if mode == "running" else None


class TestBatchNorm:
    """What a metric learner with `self.running` (None or RunningStatistics) gains:
    the mode's name, test-time embedding, the update, and the state checkpoints save."""

    running = None
    test_augmentation = None   # (embed, theta, batch) -> embeddings: scratchmeta.tta, at evaluation

    @property
    def test_batch_norm(self):
        return "transductive" if self.running is None else "running"

    def update_running(self, theta, batch):
        if self.running is not None:
            self.running.update(theta, batch)

    def test_embed(self, theta, batch):
        embed = self.embed if self.running is None else self.running.embed
        if self.test_augmentation is None:
            return embed(theta, batch)
        return self.test_augmentation(embed, theta, batch)     # each image a mean over views

    def state_dict(self):
        return None if self.running is None else self.running.state_dict()

    def load_state_dict(self, state):
        if self.running is not None and state:
            self.running.load_state_dict(state)
