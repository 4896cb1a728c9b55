"""What the meta-training loop needs from an algorithm.

Every algorithm (MAML, Reptile, ProtoNets, the in-context transformer...) is a
`MetaLearner`: it owns a model, creates the meta-parameters theta, turns one
meta-batch of tasks into the direction the outer optimiser descends, and
scores held-out tasks. `scratchmeta.train` drives any of them the same way,
so the CLI, checkpoints and resumption are written once.

A meta-batch is a dict of backend arrays with a leading task axis, e.g.
support_x (T, K, ...), support_y, query_x, query_y (see scratchmeta.tasks).
"""


class MetaLearner:
    """Base class; subclasses fill in the four methods below."""

    name = "base"
    metric = "loss"          # the headline evaluation metric
    higher_is_better = False

    def config(self):
        """JSON-serialisable hyper-parameters (saved with the run)."""
        raise NotImplementedError

    def init(self, seed):
        """Initial meta-parameters theta: an OrderedDict name -> Tensor (requires_grad)."""
        raise NotImplementedError

    def meta_step(self, theta, batch):
        """One meta-batch -> (loss, grads, metrics).

        loss: a 0-d Tensor (left on the device; the loop reads it only to print).
        grads: dict name -> Tensor, the direction the outer optimiser descends
               (the meta-gradient, or for Reptile theta - mean(phi)).
        metrics: dict name -> 0-d Tensor, extra numbers for the progress bar and logs.
        """
        raise NotImplementedError

    def evaluate(self, theta, batch, **options):
        """Score held-out tasks: dict name -> backend array of shape (T,), one value a task.

        Must contain `self.metric`. Options (e.g. inner_steps, shots) come from
        `scratchmeta eval` flags.
        """
        raise NotImplementedError

    # A learner with randomness of its own (e.g. the CNP's context sizes) also
    # defines state_dict() -> JSON-able dict and load_state_dict(dict); the
    # training loop saves it in every checkpoint so resumed runs stay exact.
