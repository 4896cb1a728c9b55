"""Functional models: parameters live outside, in an ordered dict name -> Tensor.

A model is a pure function `model(params, x)`. An adapted copy of the
parameters (MAML's phi) is just another dict, and a dict whose tensors have a
leading task axis (weights (T, out, in)) runs every task's copy at once: the
same call, batched.

MLP and Conv4 initialise as PyTorch's defaults do (kaiming-uniform with
a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases):
what the ProtoNet reference (jakesnell/prototypical-networks, PyTorch) ran
with. MAML's reference (cbfinn/maml, TensorFlow) did not: its sinusoid
MLP draws weights from a normal with std 0.01 truncated at two standard
deviations, biases 0 (MLP init="maml"); its Omniglot network is
MAMLConv4 (Xavier-uniform convolutions, an N(0, 1) head). docs/recipes.md
gives each with its file and line.
"""
from collections import OrderedDict
import math

from . import backend
from . import functional as F
from .tensor import tensor


def _uniform(rng, bound, shape, dtype):
    return tensor(backend.asarray(rng.uniform(-bound, bound, size=shape), dtype=dtype),
                  requires_grad=True)


def _constant(value, shape, dtype):
    return tensor(backend.asarray(backend.host.full(shape, value), dtype=dtype), requires_grad=True)


class MLP:
    """Fully connected network, e.g. MAML's sinusoid regressor 1-40-40-1 with ReLU."""

    def __init__(self, sizes=(1, 40, 40, 1), activation="relu", init="pytorch"):
        if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
            raise ValueError(f"MLP: sizes must be at least two positive widths, got {sizes}")
        if activation not in ("relu", "tanh"):
            raise ValueError(f"MLP: unknown activation {activation!r} (relu or tanh)")
        if init not in ("pytorch", "maml"):
            raise ValueError(f"MLP: unknown init {init!r} (pytorch or maml)")
        self.sizes = tuple(int(s) for s in sizes)
        self.activation, self.init_scheme = activation, init

    def config(self):
        cfg = {"model": "mlp", "sizes": list(self.sizes), "activation": self.activation}
        if self.init_scheme != "pytorch":
            cfg["init"] = self.init_scheme
        return cfg

    def init(self, seed=0, dtype=None):
        """init "pytorch": U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases;
        "maml": MAML's reference code, weights from a normal with std 0.01 truncated
        at two standard deviations, biases 0."""
        rng = backend.host.random.default_rng(seed)
        dtype = backend.resolve_dtype(dtype)
        params = OrderedDict()
        for i, (n_in, n_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            if self.init_scheme == "maml":
                w = rng.standard_normal((n_out, n_in))
                while (bad := backend.host.abs(w) > 2).any():      # redraw beyond 2 std
                    w[bad] = rng.standard_normal(int(bad.sum()))
                params[f"w{i}"] = tensor(backend.asarray(0.01 * w, dtype=dtype), requires_grad=True)
                params[f"b{i}"] = _constant(0.0, (n_out,), dtype)
            else:
                bound = 1 / math.sqrt(n_in)
                params[f"w{i}"] = _uniform(rng, bound, (n_out, n_in), dtype)
                params[f"b{i}"] = _uniform(rng, bound, (n_out,), dtype)
        return params

    def features(self, params, x):
        """Everything but the last layer (ANIL's body)."""
        n = len(self.sizes) - 1
        for i in range(n - 1):
            x = F.linear(x, params[f"w{i}"], params[f"b{i}"])
            x = x.relu() if self.activation == "relu" else x.tanh()
        return x

    def head(self, params, h):
        n = len(self.sizes) - 1
        return F.linear(h, params[f"w{n - 1}"], params[f"b{n - 1}"])

    def head_names(self):
        n = len(self.sizes) - 1
        return (f"w{n - 1}", f"b{n - 1}")

    def __call__(self, params, x):
        return self.head(params, self.features(params, x))


class Conv4:
    """The four-block few-shot network of Vinyals et al. 2016, used by MAML and ProtoNets.

    Each block: 3x3 conv (padding 1) -> batch norm (batch statistics) -> ReLU
    -> 2x2 max pool. 28x28 inputs end as 64 x 1 x 1 features. With n_classes
    set, a linear head follows (MAML); with n_classes=None the flattened
    features are the embedding (ProtoNets).

    Input (N, C, H, W) with unbatched params, or (T, N, C, H, W) with params
    that carry a leading task axis.
    """

    def __init__(self, in_channels=1, hidden=64, n_classes=None, image_size=28, blocks=4):
        self.in_channels, self.hidden, self.n_classes = int(in_channels), int(hidden), n_classes
        self.image_size, self.blocks = int(image_size), int(blocks)
        size = self.image_size
        for _ in range(self.blocks):
            size //= 2
        if size < 1:
            raise ValueError(f"Conv4: {self.blocks} pooling blocks do not fit {image_size}x{image_size} inputs")
        self.feature_dim = self.hidden * size * size

    def config(self):
        return {"model": "conv4", "in_channels": self.in_channels, "hidden": self.hidden,
                "n_classes": self.n_classes, "image_size": self.image_size, "blocks": self.blocks}

    def init(self, seed=0, dtype=None):
        rng = backend.host.random.default_rng(seed)
        dtype = backend.resolve_dtype(dtype)
        params = OrderedDict()
        c_in = self.in_channels
        for i in range(self.blocks):
            bound = 1 / math.sqrt(c_in * 9)
            params[f"conv{i}.w"] = _uniform(rng, bound, (self.hidden, c_in, 3, 3), dtype)
            params[f"conv{i}.b"] = _uniform(rng, bound, (self.hidden,), dtype)
            params[f"bn{i}.w"] = _constant(1.0, (self.hidden,), dtype)
            params[f"bn{i}.b"] = _constant(0.0, (self.hidden,), dtype)
            c_in = self.hidden
        if self.n_classes:
            bound = 1 / math.sqrt(self.feature_dim)
            params["head.w"] = _uniform(rng, bound, (self.n_classes, self.feature_dim), dtype)
            params["head.b"] = _uniform(rng, bound, (self.n_classes,), dtype)
        return params

    def head_names(self):
        return ("head.w", "head.b") if self.n_classes else ()

    def features(self, params, x):
        """(N, C, H, W) -> (N, feature_dim), or batched (T, N, ...) -> (T, N, feature_dim).

        Inside, activations keep the layout (..., C, N, H, W) (channels before
        the batch), where each convolution is one matrix product over the
        whole batch (F.conv2d_cnhw); batch norm's statistics are then per
        channel over (N, H, W), per task when the parameters are batched.
        F.conv_batch_norm_cnhw is conv2d_cnhw then batch_norm, and
        F.relu_max_pool2d is ReLU then max pooling: each one composite, so
        that the speed overlay can fuse it.
        """
        batched = params["conv0.w"].ndim == 5
        swap = (0, 2, 1, 3, 4) if batched else (1, 0, 2, 3)        # N <-> C
        x = x.transpose(*swap)
        for i in range(self.blocks):
            x = F.conv_batch_norm_cnhw(x, params[f"conv{i}.w"], params[f"conv{i}.b"],
                                       params[f"bn{i}.w"], params[f"bn{i}.b"], padding=1)
            x = F.relu_max_pool2d(x, 2)
        x = x.transpose(*swap)                                        # (..., N, C, h, w)
        lead = x.shape[:2] if batched else x.shape[:1]
        return x.reshape(lead + (self.feature_dim,))

    def head(self, params, h):
        return F.linear(h, params["head.w"], params["head.b"])

    def __call__(self, params, x):
        h = self.features(params, x)
        return self.head(params, h) if self.n_classes else h


def batched(params, n_tasks):
    """Give every parameter a leading task axis: theta -> (T, ...) copies (differentiable)."""
    return OrderedDict((k, v.broadcast_to((n_tasks,) + v.shape)) for k, v in params.items())


def build_model(config):
    """A model from its `config()` dict."""
    kind = config.get("model")
    kw = {k: v for k, v in config.items() if k != "model"}
    if kind == "mlp":
        return MLP(**kw)
    if kind == "conv4":
        return Conv4(**kw)
    if kind == "maml-conv4":
        return MAMLConv4(**kw)
    raise ValueError(f"unknown model {kind!r} (mlp, conv4 or maml-conv4)")


# ---------------------------------------------------------------------------
# The Omniglot network of MAML's and Reptile's reference code
# ---------------------------------------------------------------------------
def _pad_same(x, k=3, stride=2):
    """TensorFlow's 'SAME' padding of the last two axes for a k x k, stride-s window.

    The output has ceil(H / s) rows; the zeros needed, max((ceil(H/s) - 1) s + k - H, 0),
    go half before and the rest (one more when odd) after: 28 -> 0 before, 1 after.
    """
    from .functional import concatenate
    from .tensor import Tensor
    for axis in (-2, -1):
        n = x.shape[axis]
        total = max((-(-n // stride) - 1) * stride + k - n, 0)
        before, after = total // 2, total - total // 2
        parts = []
        for size in (before, after):
            shape = list(x.shape)
            shape[axis] = size
            parts.append(Tensor(backend.xp.zeros(tuple(shape), dtype=x.dtype)) if size else None)
        x = concatenate([p for p in (parts[0], x, parts[1]) if p is not None], axis=axis)
    return x


class MAMLConv4:
    """Four strided 3x3 conv blocks, as Finn et al.'s code builds its Omniglot network.

    cbfinn/maml utils.py conv_block and maml.py construct_conv_weights/forward_conv:
    each block is a 3x3 convolution with stride 2 and TensorFlow 'SAME'
    padding (no max-pool; 28 -> 14 -> 7 -> 4 -> 2), batch norm with batch
    statistics (tf.contrib.layers.batch_norm: an offset beta, NO scale gamma,
    eps 1e-3), ReLU; then the spatial mean (forward_conv's reduce_mean) and
    a linear head. The batch-norm offsets are not among the weights the inner
    loop adapts (they live outside MAML's `weights` dict) but are trained by
    the outer Adam: inner_names() leaves them out (adapt_bn=False).
    init "maml": conv weights Xavier-uniform (xavier_initializer_conv2d),
    the head N(0, 1) (tf.random_normal), biases and offsets 0.

    Options for openai/supervised-reptile's OmniglotModel (models.py): the
    same strided blocks with a batch-norm scale (bn_scale=True), the
    2 x 2 x 64 features flattened instead of averaged (flatten=True),
    Glorot-uniform head (init "glorot", tf.layers' default), and every
    parameter adapted (adapt_bn=True).
    """

    def __init__(self, in_channels=1, hidden=64, n_classes=5, image_size=28, bn_scale=False,
                 flatten=False, init="maml", adapt_bn=False):
        if init not in ("maml", "glorot"):
            raise ValueError(f"MAMLConv4: unknown init {init!r} (maml or glorot)")
        if not n_classes or int(n_classes) < 1:
            raise ValueError(f"MAMLConv4: n_classes must be a positive integer, got {n_classes!r}")
        self.in_channels, self.hidden, self.n_classes = int(in_channels), int(hidden), int(n_classes)
        self.image_size = int(image_size)
        self.bn_scale, self.flatten, self.init_scheme = bool(bn_scale), bool(flatten), init
        self.adapt_bn = bool(adapt_bn)
        size = self.image_size
        for _ in range(4):
            size = -(-size // 2)                   # 'SAME', stride 2: ceil(size / 2)
        self.feature_dim = self.hidden * (size * size if self.flatten else 1)

    def config(self):
        return {"model": "maml-conv4", "in_channels": self.in_channels, "hidden": self.hidden,
                "n_classes": self.n_classes, "image_size": self.image_size,
                "bn_scale": self.bn_scale, "flatten": self.flatten, "init": self.init_scheme,
                "adapt_bn": self.adapt_bn}

    def init(self, seed=0, dtype=None):
        rng = backend.host.random.default_rng(seed)
        dtype = backend.resolve_dtype(dtype)
        params = OrderedDict()
        c_in = self.in_channels
        for i in range(4):
            # Glorot/Xavier uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)), fans 3*3*channels
            bound = math.sqrt(6.0 / (9 * c_in + 9 * self.hidden))
            params[f"conv{i}.w"] = _uniform(rng, bound, (self.hidden, c_in, 3, 3), dtype)
            params[f"conv{i}.b"] = _constant(0.0, (self.hidden,), dtype)
            if self.bn_scale:
                params[f"bn{i}.w"] = _constant(1.0, (self.hidden,), dtype)
            params[f"bn{i}.b"] = _constant(0.0, (self.hidden,), dtype)
            c_in = self.hidden
        shape = (self.n_classes, self.feature_dim)
        if self.init_scheme == "maml":                # tf.random_normal: std 1, not truncated
            params["head.w"] = tensor(backend.asarray(rng.standard_normal(shape), dtype=dtype),
                                      requires_grad=True)
        else:
            params["head.w"] = _uniform(rng, math.sqrt(6.0 / sum(shape)), shape, dtype)
        params["head.b"] = _constant(0.0, (self.n_classes,), dtype)
        return params

    def inner_names(self):
        """The parameters the inner loop adapts: all but batch norm's unless adapt_bn."""
        return tuple(k for k in self.init(0) if self.adapt_bn or not k.startswith("bn"))

    def head_names(self):
        return ("head.w", "head.b")

    def features(self, params, x):
        """(N, C, H, W) -> (N, feature_dim), or batched (T, N, ...) -> (T, N, feature_dim)."""
        batched = params["conv0.w"].ndim == 5
        swap = (0, 2, 1, 3, 4) if batched else (1, 0, 2, 3)        # N <-> C
        x = x.transpose(*swap)                                      # (..., C, N, H, W)
        for i in range(4):
            x = F.conv_batch_norm_cnhw(_pad_same(x), params[f"conv{i}.w"], params[f"conv{i}.b"],
                                       params.get(f"bn{i}.w"), params[f"bn{i}.b"], stride=2,
                                       eps=1e-3).relu()
        if self.flatten:
            x = x.transpose(*swap)                                  # (..., N, C, h, w)
            lead = x.shape[:2] if batched else x.shape[:1]
            return x.reshape(lead + (self.feature_dim,))
        h = x.mean(axis=(-2, -1))                                   # (..., C, N): spatial mean
        return h.transpose(0, 2, 1) if batched else h.transpose(1, 0)

    def head(self, params, h):
        return F.linear(h, params["head.w"], params["head.b"])

    def __call__(self, params, x):
        return self.head(params, self.features(params, x))


def conv4_features_eval(model, params, x, statistics=None, eps=1e-5):
    """Conv4.features with batch norm's statistics recorded or given (PyTorch's eval mode).

    model: an nn.Conv4; params unbatched; x (N, C, H, W). statistics None:
    normalise with the batch's own mean and (biased) variance, as Conv4 does,
    and return them; a list of (mean, var) per block, each (hidden,): normalise
    with those (running statistics). Returns (features (N, feature_dim), the
    [(mean, var)] used, as backend arrays).
    """
    used = []
    for i in range(model.blocks):
        h = F.conv2d(x, params[f"conv{i}.w"], params[f"conv{i}.b"], padding=1)   # (N, C, H, W)
        if statistics is None:
            mean = h.data.mean(axis=(0, 2, 3))
            var = h.data.var(axis=(0, 2, 3))
        else:
            mean, var = statistics[i]
        used.append((mean, var))
        shape = (1, -1, 1, 1)
        scale = params[f"bn{i}.w"].reshape(shape) * tensor(
            backend.asarray(1.0 / backend.xp.sqrt(var + eps), dtype=h.dtype).reshape(shape))
        h = (h - tensor(backend.asarray(mean, dtype=h.dtype).reshape(shape))) * scale \
            + params[f"bn{i}.b"].reshape(shape)
        x = F.max_pool2d(h, 2).relu()
    return x.reshape((x.shape[0], model.feature_dim)), used
