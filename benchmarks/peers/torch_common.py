"""PyTorch models shared by torch_loop (fast-weight dicts) and torch_func (functional_call).

Parameter names match benchmarks/workloads.py: fc1..fc3 for the MLP;
conv1..4, bn1..4 and head for Conv4; scratchmeta's own names for the
in-context transformer (read_in, pos, block{i}.ln1/attn/ln2/mlp, ln_f, read_out).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


def to_torch(problem):
    """Problem -> (params dict of leaf tensors, data dict of tensors)."""
    params = {k: torch.tensor(v) for k, v in problem.params.items()}
    data = {k: torch.from_numpy(v) for k, v in problem.data.items()}
    return params, data


def to_numpy(grads, names):
    return {k: g.detach().numpy().astype("float64") for k, g in zip(names, grads)}


# ------------------------------------------------------- functional forwards

def mlp(params, x):
    """ReLU MLP fc1 -> fc2 -> fc3 on x (..., 1)."""
    h = F.relu(F.linear(x, params["fc1.weight"], params["fc1.bias"]))
    h = F.relu(F.linear(h, params["fc2.weight"], params["fc2.bias"]))
    return F.linear(h, params["fc3.weight"], params["fc3.bias"])


def conv4(params, x):
    """Conv4 on x (N, 1, 28, 28): (N, 5) logits with a head, else (N, 64) embeddings."""
    for i in range(1, 5):
        x = F.conv2d(x, params[f"conv{i}.weight"], params[f"conv{i}.bias"], padding=1)
        # batch statistics, no running averages (MAML's transductive batch norm)
        x = F.batch_norm(x, None, None, params[f"bn{i}.weight"], params[f"bn{i}.bias"],
                         training=True, eps=1e-5)
        x = F.max_pool2d(F.relu(x), 2)
    x = x.flatten(1)
    if "head.weight" in params:
        x = F.linear(x, params["head.weight"], params["head.bias"])
    return x


def sq_dist(a, b):
    """Squared Euclidean distances: (n, d), (m, d) -> (n, m)."""
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def protonet_loss(embed, params, data, n_way, k_shot):
    """Prototypical Networks loss (Snell et al. 2017, Eq. 1 and 2).

    Support and query go through the embedding in one batch (the batch-norm
    statistics are those of the whole episode).
    """
    n_support = data["support_x"].shape[0]
    z = embed(params, torch.cat([data["support_x"], data["query_x"]]))
    prototypes = z[:n_support].reshape(n_way, k_shot, -1).mean(1)     # (n_way, d)
    logits = -sq_dist(z[n_support:], prototypes)                      # (n_query, n_way)
    return F.cross_entropy(logits, data["query_y"])


# ------------------------------------------- in-context transformer (Garg et al.)

MASKED = -1e9      # scratchmeta.transformer.MASKED: the score of a future position


def prompt_tokens(x, y):
    """x (B, n, d), y (B, n) -> tokens (B, 2n, d): x_1, (y_1, 0..0), x_2, ... (icl.prompt_tokens)."""
    B, n, d = x.shape
    y_wide = torch.cat([y[..., None], x.new_zeros(B, n, d - 1)], dim=-1)
    return torch.stack([x, y_wide], dim=2).reshape(B, 2 * n, d)


def causal_attention(q, k, v):
    """softmax(q k^T / sqrt(d_head) + M) v, future scores replaced by MASKED (Vaswani Eq. 1)."""
    length = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    mask = torch.ones(length, length, dtype=torch.bool).tril()
    scores = scores.masked_fill(~mask, MASKED)
    return torch.softmax(scores, dim=-1) @ v


def transformer(params, tokens, depth, heads):
    """scratchmeta.transformer.Transformer, learned positions: tokens (B, L, d) -> (B, L, 1).

    Pre-norm GPT-2 blocks h <- h + MultiHead(LN(h)); h <- h + W2 GELU(W1 LN(h)),
    layer-norm eps 1e-5, GELU in its tanh form, Q, K, V from one stacked
    (3D, D) weight split into heads by a reshape.
    """
    B, L, _ = tokens.shape
    h = F.linear(tokens, params["read_in.w"], params["read_in.b"]) + params["pos"][:L]
    D = h.shape[-1]
    for i in range(depth):
        b = f"block{i}."
        a = F.layer_norm(h, (D,), params[b + "ln1.w"], params[b + "ln1.b"], eps=1e-5)
        qkv = F.linear(a, params[b + "attn.w_qkv"], params[b + "attn.b_qkv"])
        qkv = qkv.reshape(B, L, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
        att = causal_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(B, L, D)
        h = h + F.linear(att, params[b + "attn.w_out"], params[b + "attn.b_out"])
        m = F.layer_norm(h, (D,), params[b + "ln2.w"], params[b + "ln2.b"], eps=1e-5)
        m = F.gelu(F.linear(m, params[b + "mlp.w1"], params[b + "mlp.b1"]), approximate="tanh")
        h = h + F.linear(m, params[b + "mlp.w2"], params[b + "mlp.b2"])
    h = F.layer_norm(h, (D,), params["ln_f.w"], params["ln_f.b"], eps=1e-5)
    return F.linear(h, params["read_out.w"], params["read_out.b"])


def icl_loss(params, x, y, depth, heads):
    """Garg et al.'s objective: mean over prompts and prefixes of (M(P^i) - y_{i+1})^2,
    the prediction read at each x token."""
    pred = transformer(params, prompt_tokens(x, y), depth, heads)[:, 0::2, 0]
    return ((pred - y) ** 2).mean()


# ------------------------------------------------------------ nn.Modules

class MLP(nn.Module):
    def __init__(self, sizes=(1, 40, 40, 1)):
        super().__init__()
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
            setattr(self, f"fc{i}", nn.Linear(a, b))

    def forward(self, x):
        h = F.relu(self.fc1(x))
        h = F.relu(self.fc2(h))
        return self.fc3(h)


class BatchNormComposed(nn.Module):
    """Batch norm over (N, H, W) with batch statistics, written out from primitives.

    Used under torch.func.vmap: in torch 2.13, second-order MAML through
    F.batch_norm inside vmap returns wrong meta-gradients (off by ~1e-2 for
    the layers below the last batch norm), while the composed form agrees
    with the task loop to 1e-15.
    """

    def __init__(self, channels, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        mean = x.mean((0, 2, 3), keepdim=True)
        var = ((x - mean) ** 2).mean((0, 2, 3), keepdim=True)     # biased, as in training mode
        x_hat = (x - mean) / torch.sqrt(var + self.eps)
        return x_hat * self.weight[None, :, None, None] + self.bias[None, :, None, None]


class Conv4(nn.Module):
    def __init__(self, head=True, hidden=64, n_out=5, composed_bn=False):
        super().__init__()
        c_in = 1
        for i in range(1, 5):
            setattr(self, f"conv{i}", nn.Conv2d(c_in, hidden, 3, padding=1))
            bn = BatchNormComposed(hidden) if composed_bn else \
                nn.BatchNorm2d(hidden, track_running_stats=False)
            setattr(self, f"bn{i}", bn)
            c_in = hidden
        if head:
            self.head = nn.Linear(hidden, n_out)

    def forward(self, x):
        for i in range(1, 5):
            x = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x))
            x = F.max_pool2d(F.relu(x), 2)
        x = x.flatten(1)
        return self.head(x) if hasattr(self, "head") else x
