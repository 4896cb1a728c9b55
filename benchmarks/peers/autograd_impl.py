"""HIPS autograd: a Python loop over tasks, nested autograd.grad for second order.

autograd has no convolution primitive fit for nested differentiation, so the
3x3 convolution is written as nine shifted slices contracted with tensordot
(im2col); every piece is an autograd.numpy op, so any order works.
"""
from . import Runner

try:
    import autograd
    import autograd.numpy as anp
    from autograd.tracer import getval
except ImportError as e:          # reported by available()
    autograd, _MISSING = None, str(e)

NAME = "autograd"


def available():
    return (True, "") if autograd is not None else (False, f"autograd not installed ({_MISSING})")


def _numpy(tree):
    return {k: anp.asarray(v, dtype="float64") for k, v in tree.items()}


# --------------------------------------------------------------- the models

def _relu(x):
    # x * (x > 0) rather than maximum(x, 0): the same derivative at every
    # order and no tie-splitting at exactly 0
    return x * (x > 0)


def mlp(params, x):
    h = _relu(anp.dot(x, params["fc1.weight"].T) + params["fc1.bias"])
    h = _relu(anp.dot(h, params["fc2.weight"].T) + params["fc2.bias"])
    return anp.dot(h, params["fc3.weight"].T) + params["fc3.bias"]


def conv3x3(x, w, b):
    """3x3 convolution, stride 1, padding 1: (N, C, H, W), (O, C, 3, 3) -> (N, O, H, W)."""
    n, c, h, wd = x.shape
    xp = anp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="constant")
    patches = anp.stack([xp[:, :, i:i + h, j:j + wd] for i in range(3) for j in range(3)],
                        axis=2)                                   # (N, C, 9, H, W)
    out = anp.tensordot(patches, anp.reshape(w, (w.shape[0], c, 9)),
                        axes=([1, 2], [1, 2]))                    # (N, H, W, O)
    return anp.transpose(out, (0, 3, 1, 2)) + b[None, :, None, None]


def _max_pool2(x):
    n, c, h, w = x.shape
    x = x[:, :, : h // 2 * 2, : w // 2 * 2]
    return anp.max(anp.reshape(x, (n, c, h // 2, 2, w // 2, 2)), axis=(3, 5))


def conv4(params, x):
    for i in range(1, 5):
        x = conv3x3(x, params[f"conv{i}.weight"], params[f"conv{i}.bias"])
        mean = anp.mean(x, axis=(0, 2, 3), keepdims=True)          # batch statistics
        var = anp.mean((x - mean) ** 2, axis=(0, 2, 3), keepdims=True)
        x = (x - mean) / anp.sqrt(var + 1e-5)
        x = x * params[f"bn{i}.weight"][None, :, None, None] + params[f"bn{i}.bias"][None, :, None, None]
        x = _max_pool2(_relu(x))
    x = anp.reshape(x, (x.shape[0], -1))
    if "head.weight" in params:
        x = anp.dot(x, params["head.weight"].T) + params["head.bias"]
    return x


def mse(pred, target):
    return anp.mean((pred - target) ** 2)


def cross_entropy(logits, labels):
    shifted = logits - anp.max(logits, axis=1, keepdims=True)
    log_p = shifted - anp.log(anp.sum(anp.exp(shifted), axis=1, keepdims=True))
    return -anp.mean(log_p[anp.arange(len(labels)), labels])


_MASKED = -1e9      # scratchmeta.transformer.MASKED


def _layer_norm(x, w, b, eps=1e-5):
    mean = anp.mean(x, axis=-1, keepdims=True)
    var = anp.mean((x - mean) ** 2, axis=-1, keepdims=True)
    return (x - mean) / anp.sqrt(var + eps) * w + b


def _gelu(x):
    """tanh form, as scratchmeta.functional.gelu."""
    return 0.5 * x * (1 + anp.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


def _softmax(x):
    e = anp.exp(x - getval(anp.max(x, axis=-1, keepdims=True)))    # shift by a constant
    return e / anp.sum(e, axis=-1, keepdims=True)


def prompt_tokens(x, y):
    """x (B, n, d), y (B, n) -> (B, 2n, d): x_1, (y_1, 0..0), x_2, ... (icl.prompt_tokens)."""
    B, n, d = x.shape
    y_wide = anp.concatenate([y[..., None], anp.zeros((B, n, d - 1), dtype=x.dtype)], axis=-1)
    return anp.reshape(anp.stack([x, y_wide], axis=2), (B, 2 * n, d))


def transformer(params, tokens, depth, heads):
    """scratchmeta.transformer.Transformer (learned positions, pre-norm, tanh GELU)."""
    B, L, _ = tokens.shape
    h = anp.dot(tokens, params["read_in.w"].T) + params["read_in.b"] + params["pos"][:L]
    D = h.shape[-1]
    mask = anp.tril(anp.ones((L, L), dtype=bool))
    for i in range(depth):
        b = f"block{i}."
        a = _layer_norm(h, params[b + "ln1.w"], params[b + "ln1.b"])
        qkv = anp.dot(a, params[b + "attn.w_qkv"].T) + params[b + "attn.b_qkv"]
        qkv = anp.transpose(anp.reshape(qkv, (B, L, 3, heads, D // heads)), (2, 0, 3, 1, 4))
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = anp.matmul(q, anp.swapaxes(k, -1, -2)) * (1.0 / (D // heads) ** 0.5)
        scores = anp.where(mask, scores, _MASKED)
        att = anp.reshape(anp.transpose(anp.matmul(_softmax(scores), v), (0, 2, 1, 3)), (B, L, D))
        h = h + anp.dot(att, params[b + "attn.w_out"].T) + params[b + "attn.b_out"]
        m = _layer_norm(h, params[b + "ln2.w"], params[b + "ln2.b"])
        m = _gelu(anp.dot(m, params[b + "mlp.w1"].T) + params[b + "mlp.b1"])
        h = h + anp.dot(m, params[b + "mlp.w2"].T) + params[b + "mlp.b2"]
    h = _layer_norm(h, params["ln_f.w"], params["ln_f.b"])
    return anp.dot(h, params["read_out.w"].T) + params["read_out.b"]


# -------------------------------------------------------------- workloads

def _maml(problem, forward, loss):
    h = problem.hyper
    theta = dict(problem.params)
    d = problem.data
    n_tasks = d["support_x"].shape[0]

    def task_query_loss(theta, t):
        phi = theta
        support_grad = autograd.grad(lambda p: loss(forward(p, d["support_x"][t]), d["support_y"][t]))
        for _ in range(h["inner_steps"]):
            # FOMAML: the gradient at the plain values is a constant (no Hessian term)
            g = support_grad({k: getval(v) for k, v in phi.items()} if h["first_order"] else phi)
            phi = {k: phi[k] - h["alpha"] * g[k] for k in phi}
        return loss(forward(phi, d["query_x"][t]), d["query_y"][t])

    def meta_loss(theta):
        return sum(task_query_loss(theta, t) for t in range(n_tasks)) / n_tasks

    meta_grad = autograd.grad(meta_loss)
    out = {}

    def step():
        out["grads"] = meta_grad(theta)

    return Runner(step, lambda: _numpy(out["grads"]))


def maml_sine(problem):
    return _maml(problem, mlp, mse)


def maml_conv4(problem):
    return _maml(problem, conv4, cross_entropy)


def reptile_sine(problem):
    """Reptile (Nichol et al. 2018, Algorithm 1): mean_t (phi_t - theta)."""
    h = problem.hyper
    theta = dict(problem.params)
    d = problem.data
    n_tasks = d["support_x"].shape[0]
    out = {}

    def step():
        direction = {k: anp.zeros_like(v) for k, v in theta.items()}
        for t in range(n_tasks):
            support_grad = autograd.grad(lambda p: mse(mlp(p, d["support_x"][t]), d["support_y"][t]))
            phi = theta
            for _ in range(h["inner_steps"]):
                g = support_grad(phi)
                phi = {k: phi[k] - h["alpha"] * g[k] for k in phi}
            for k in direction:
                direction[k] = direction[k] + (phi[k] - theta[k]) / n_tasks
        out["direction"] = direction

    return Runner(step, lambda: _numpy(out["direction"]))


def protonet(problem):
    h = problem.hyper
    params = dict(problem.params)
    d = problem.data

    def loss(params):
        n_support = d["support_x"].shape[0]
        z = conv4(params, anp.concatenate([d["support_x"], d["query_x"]]))
        prototypes = anp.mean(anp.reshape(z[:n_support], (h["n_way"], h["k_shot"], -1)), axis=1)
        dist = anp.sum((z[n_support:, None, :] - prototypes[None, :, :]) ** 2, axis=-1)
        return cross_entropy(-dist, d["query_y"])

    loss_grad = autograd.grad(loss)
    out = {}

    def step():
        out["grads"] = loss_grad(params)

    return Runner(step, lambda: _numpy(out["grads"]))


def icl_transformer(problem):
    """One ICL training step (Garg et al. 2022): value_and_grad of the prefix MSE."""
    h = problem.hyper
    params = dict(problem.params)
    x, y = problem.data["x"], problem.data["y"]

    def loss(params):
        pred = transformer(params, prompt_tokens(x, y), h["depth"], h["heads"])[:, 0::2, 0]
        return anp.mean((pred - y) ** 2)

    loss_grad = autograd.value_and_grad(loss)
    out = {}

    def step():
        out["loss"], out["grads"] = loss_grad(params)

    return Runner(step, lambda: _numpy({"loss": out["loss"], **out["grads"]}))
