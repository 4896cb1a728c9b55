"""A decoder-only transformer as a pure function of a dict of parameters.

The model of Garg et al. 2022 (arXiv:2208.01066v3, Sec. 3) is GPT-2
(Radford et al. 2019) with a linear read-in from the prompt's tokens and a
linear read-out to one number per position. Each piece below is the
equation of Vaswani et al. 2017 (arXiv:1706.03762v7) it names, written with
engine operations only, so every derivative of every order comes from the
primitives:

    attention(Q, K, V) = softmax(Q K^T / sqrt(d_head) + M) V      (Eq. 1)
    head_i = attention(h W_i^Q, h W_i^K, h W_i^V)
    MultiHead(h) = concat(head_1..head_H) W^O                      (Sec. 3.2.2)

M is the causal mask: position i may attend to positions j <= i only.
Blocks are pre-norm, as in GPT-2:

    h <- h + MultiHead(LN(h));   h <- h + W_2 GELU(W_1 LN(h))

Shapes: tokens (B, L, n_dims) -> read-in (B, L, width) -> ... -> read-out
(B, L, 1). Batching is over prompts B; heads are an axis of one reshape.
"""
from collections import OrderedDict
import math

from . import backend
from . import functional as F
from .backend import xp
from .nn import _uniform
from .functional import MASKED
from .tensor import as_tensor, composite, tensor


def causal_mask(length):
    """Boolean (L, L) array, True where query i may see key j (j <= i)."""
    return xp.tril(xp.ones((length, length), dtype=bool))


@composite    # the speed overlay runs it as one primitive (scratchmeta/fast/attention.py)
def attention(q, k, v, causal=True):
    """softmax(q k^T / sqrt(d_head) + M) v, Vaswani et al. Eq. 1.

    q, k, v: (..., L, d_head). With causal=True the scores of keys after the
    query become MASKED (-1e9, minGPT's masked_fill with -inf), so their
    probability is 0 and no gradient flows from a later position into an
    earlier output.
    """
    q, k, v = (as_tensor(a) for a in (q, k, v))
    scores = (q @ k.mT) * (1.0 / math.sqrt(q.shape[-1]))           # (..., L, L)
    mask = causal_mask(scores.shape[-1]) if causal else None        # minGPT: masked_fill, then softmax
    return F.softmax(scores, axis=-1, mask=mask) @ v               # (..., L, d_head)


def multi_head_attention(h, w_qkv, b_qkv, w_out, b_out, n_heads, causal=True):
    """MultiHead(h) = concat(head_1..head_H) W^O, Vaswani et al. Sec. 3.2.2.

    h: (B, L, D). w_qkv (3D, D) holds W^Q, W^K, W^V for all heads stacked;
    the heads are split by a reshape, not a loop:
    (B, L, 3D) -> (B, L, 3, H, D/H) -> (3, B, H, L, D/H).
    """
    B, L, D = h.shape
    if D % n_heads:
        raise ValueError(f"multi_head_attention: width {D} is not divisible by {n_heads} heads")
    d_head = D // n_heads
    qkv = F.linear(h, w_qkv, b_qkv).reshape(B, L, 3, n_heads, d_head)
    qkv = qkv.transpose(2, 0, 3, 1, 4)                              # (3, B, H, L, d_head)
    heads = attention(qkv[0], qkv[1], qkv[2], causal=causal)        # (B, H, L, d_head)
    heads = heads.transpose(0, 2, 1, 3).reshape(B, L, D)           # concat the heads
    return F.linear(heads, w_out, b_out)


def sinusoidal_positions(length, width, dtype=None):
    """Fixed positions of Vaswani et al. Sec. 3.5 as a constant (L, width) Tensor.

    PE(p, 2i) = sin(p / 10000^(2i/width)),  PE(p, 2i+1) = cos(p / 10000^(2i/width)).
    """
    host = backend.host
    p = host.arange(length)[:, None]
    freq = 1.0 / 10000 ** (host.arange(0, width, 2) / width)       # (ceil(width/2),)
    pe = host.zeros((length, width))
    pe[:, 0::2] = host.sin(p * freq)
    pe[:, 1::2] = host.cos(p * freq[: width // 2])
    return tensor(backend.asarray(pe, dtype=backend.resolve_dtype(dtype)))


class Transformer:
    """GPT-2-style decoder: read-in, positions, `depth` pre-norm blocks, read-out.

    n_dims: features per input token; width: the model width D; depth: blocks;
    heads: attention heads; max_len: the longest sequence (context) in tokens;
    positions: "learned" (GPT-2) or "sinusoidal"; mlp_ratio: hidden width of
    the MLP as a multiple of D; n_out: numbers read out per position;
    io_init: how the read-in and read-out maps start (see init).
    """

    IO_INITS = ("pytorch", "gpt2")

    def __init__(self, n_dims, width=64, depth=3, heads=4, max_len=64,
                 positions="learned", mlp_ratio=4, n_out=1, io_init="pytorch"):
        for name, v in (("n_dims", n_dims), ("width", width), ("depth", depth),
                        ("heads", heads), ("max_len", max_len), ("mlp_ratio", mlp_ratio),
                        ("n_out", n_out)):
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"Transformer: {name} must be a positive integer, got {v!r}")
        if width % heads:
            raise ValueError(f"Transformer: width {width} is not divisible by {heads} heads")
        if positions not in ("learned", "sinusoidal"):
            raise ValueError(f"Transformer: positions must be 'learned' or 'sinusoidal', got {positions!r}")
        if io_init not in self.IO_INITS:
            raise ValueError(f"Transformer: io_init must be one of {self.IO_INITS}, got {io_init!r}")
        self.io_init = io_init
        self.n_dims, self.width, self.depth, self.heads = int(n_dims), int(width), int(depth), int(heads)
        self.max_len, self.positions = int(max_len), positions
        self.mlp_ratio, self.n_out = int(mlp_ratio), int(n_out)

    def config(self):
        return {"model": "transformer", "n_dims": self.n_dims, "width": self.width,
                "depth": self.depth, "heads": self.heads, "max_len": self.max_len,
                "positions": self.positions, "mlp_ratio": self.mlp_ratio, "n_out": self.n_out,
                "io_init": self.io_init}

    def init(self, seed=0, dtype=None):
        """GPT-2's initialisation inside the blocks: weights N(0, 0.02^2),
        residual projections scaled by 1/sqrt(2 depth), biases 0, layer-norm
        gains 1, learned positions N(0, 0.02^2).

        The read-in and read-out maps sit outside GPT-2. In Garg et al.'s code
        they are torch.nn.Linear layers and keep PyTorch's default start,
        U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases: io_init
        "pytorch" (the default). io_init "gpt2" starts them like the blocks.
        The difference matters: with read-in weights of size 0.02 the token of
        a label y and its position are equally small, so the first layer norm
        sees little more than sign(y), and training sat on the plateau at the
        zero predictor's error for thousands of steps (docs/icl.md).
        """
        rng = backend.host.random.default_rng(seed)
        dtype = backend.resolve_dtype(dtype)
        D, H = self.width, self.width * self.mlp_ratio

        def normal(*shape, std=0.02):
            return tensor(backend.asarray(rng.normal(0.0, std, size=shape), dtype=dtype),
                          requires_grad=True)

        def const(value, *shape):
            return tensor(backend.asarray(backend.host.full(shape, value), dtype=dtype),
                          requires_grad=True)

        def linear(n_out, n_in):
            if self.io_init == "gpt2":
                return normal(n_out, n_in), const(0.0, n_out)
            bound = 1.0 / math.sqrt(n_in)                   # torch.nn.Linear's default, as nn.MLP
            return _uniform(rng, bound, (n_out, n_in), dtype), _uniform(rng, bound, (n_out,), dtype)

        resid = 0.02 / math.sqrt(2 * self.depth)
        p = OrderedDict()
        p["read_in.w"], p["read_in.b"] = linear(D, self.n_dims)
        if self.positions == "learned":
            p["pos"] = normal(self.max_len, D)
        for i in range(self.depth):
            b = f"block{i}."
            p[b + "ln1.w"], p[b + "ln1.b"] = const(1.0, D), const(0.0, D)
            p[b + "attn.w_qkv"], p[b + "attn.b_qkv"] = normal(3 * D, D), const(0.0, 3 * D)
            p[b + "attn.w_out"], p[b + "attn.b_out"] = normal(D, D, std=resid), const(0.0, D)
            p[b + "ln2.w"], p[b + "ln2.b"] = const(1.0, D), const(0.0, D)
            p[b + "mlp.w1"], p[b + "mlp.b1"] = normal(H, D), const(0.0, H)
            p[b + "mlp.w2"], p[b + "mlp.b2"] = normal(D, H, std=resid), const(0.0, D)
        p["ln_f.w"], p["ln_f.b"] = const(1.0, D), const(0.0, D)
        p["read_out.w"], p["read_out.b"] = linear(self.n_out, D)
        return p

    def check_input(self, tokens):
        """Raise a clear ValueError for a sequence the model cannot read."""
        shape = tokens.shape
        if len(shape) != 3:
            raise ValueError(f"Transformer: tokens must be (batch, length, n_dims), got shape {shape}")
        if shape[1] == 0:
            raise ValueError("Transformer: the sequence is empty (length 0)")
        if shape[2] != self.n_dims:
            raise ValueError(f"Transformer: tokens have {shape[2]} features but the model "
                             f"was built for n_dims={self.n_dims}")
        if shape[1] > self.max_len:
            raise ValueError(f"Transformer: sequence of {shape[1]} tokens is longer than the "
                             f"model's context max_len={self.max_len}")

    def block(self, params, i, h):
        """One pre-norm block: h + MultiHead(LN(h)), then h + MLP(LN(h))."""
        b = f"block{i}."
        a = F.layer_norm(h, params[b + "ln1.w"], params[b + "ln1.b"])
        h = h + multi_head_attention(a, params[b + "attn.w_qkv"], params[b + "attn.b_qkv"],
                                     params[b + "attn.w_out"], params[b + "attn.b_out"],
                                     self.heads, causal=True)
        m = F.layer_norm(h, params[b + "ln2.w"], params[b + "ln2.b"])
        m = F.gelu(F.linear(m, params[b + "mlp.w1"], params[b + "mlp.b1"]))
        return h + F.linear(m, params[b + "mlp.w2"], params[b + "mlp.b2"])

    def __call__(self, params, tokens):
        """tokens (B, L, n_dims) -> outputs (B, L, n_out); output i sees tokens 0..i only."""
        tokens = as_tensor(tokens)
        self.check_input(tokens)
        L = tokens.shape[1]
        h = F.linear(tokens, params["read_in.w"], params["read_in.b"])     # (B, L, D)
        if self.positions == "learned":
            h = h + params["pos"][:L]
        else:
            h = h + sinusoidal_positions(L, self.width, dtype=h.dtype)
        for i in range(self.depth):
            h = self.block(params, i, h)
        h = F.layer_norm(h, params["ln_f.w"], params["ln_f.b"])
        return F.linear(h, params["read_out.w"], params["read_out.b"])     # (B, L, n_out)
