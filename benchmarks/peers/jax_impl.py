"""JAX: jit + vmap over tasks, grad of grad for the meta-gradient.

Compilation happens ahead of time when the runner is built (jit.lower().compile()),
so neither the timings nor the step-phase memory include it.
"""
from . import Runner

try:
    import jax
    import jax.numpy as jnp
    from jax import lax
    jax.config.update("jax_enable_x64", True)      # float64 runs need it
except ImportError as e:          # reported by available()
    jax, _MISSING = None, str(e)

NAME = "jax"


def available():
    return (True, "") if jax is not None else (False, f"jax not installed ({_MISSING})")


def _compile(fn, *args):
    """AOT-compile fn for these arguments; step() then only runs it."""
    return jax.jit(fn).lower(*args).compile()


def _numpy(tree):
    import numpy as np
    return {k: np.asarray(v, dtype=np.float64) for k, v in tree.items()}


# --------------------------------------------------------------- the models

def mlp(params, x):
    h = jax.nn.relu(x @ params["fc1.weight"].T + params["fc1.bias"])
    h = jax.nn.relu(h @ params["fc2.weight"].T + params["fc2.bias"])
    return h @ params["fc3.weight"].T + params["fc3.bias"]


def _max_pool2(x):
    """2x2 max pool, stride 2, floor mode (7 -> 3 drops the last row/column)."""
    n, c, h, w = x.shape
    x = x[:, :, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def conv4(params, x):
    for i in range(1, 5):
        x = lax.conv_general_dilated(x, params[f"conv{i}.weight"], (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
        x = x + params[f"conv{i}.bias"][None, :, None, None]
        mean = x.mean(axis=(0, 2, 3), keepdims=True)               # batch statistics
        var = ((x - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
        x = (x - mean) / jnp.sqrt(var + 1e-5)
        x = x * params[f"bn{i}.weight"][None, :, None, None] + params[f"bn{i}.bias"][None, :, None, None]
        x = _max_pool2(jax.nn.relu(x))
    x = x.reshape(x.shape[0], -1)
    if "head.weight" in params:
        x = x @ params["head.weight"].T + params["head.bias"]
    return x


def mse(pred, target):
    return ((pred - target) ** 2).mean()


def cross_entropy(logits, labels):
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_p, labels[:, None], axis=1).mean()


_MASKED = -1e9      # scratchmeta.transformer.MASKED


def _layer_norm(x, w, b, eps=1e-5):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * w + b


def prompt_tokens(x, y):
    """x (B, n, d), y (B, n) -> (B, 2n, d): x_1, (y_1, 0..0), x_2, ... (icl.prompt_tokens)."""
    B, n, d = x.shape
    y_wide = jnp.concatenate([y[..., None], jnp.zeros((B, n, d - 1), x.dtype)], axis=-1)
    return jnp.stack([x, y_wide], axis=2).reshape(B, 2 * n, d)


def transformer(params, tokens, depth, heads):
    """scratchmeta.transformer.Transformer (learned positions, pre-norm, tanh GELU)."""
    B, L, _ = tokens.shape
    h = tokens @ params["read_in.w"].T + params["read_in.b"] + params["pos"][:L]
    D = h.shape[-1]
    mask = jnp.tril(jnp.ones((L, L), dtype=bool))
    for i in range(depth):
        b = f"block{i}."
        a = _layer_norm(h, params[b + "ln1.w"], params[b + "ln1.b"])
        qkv = a @ params[b + "attn.w_qkv"].T + params[b + "attn.b_qkv"]
        q, k, v = qkv.reshape(B, L, 3, heads, D // heads).transpose(2, 0, 3, 1, 4)
        scores = (q @ k.swapaxes(-1, -2)) * (1.0 / (D // heads) ** 0.5)
        scores = jnp.where(mask, scores, _MASKED)
        att = (jax.nn.softmax(scores, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(B, L, D)
        h = h + att @ params[b + "attn.w_out"].T + params[b + "attn.b_out"]
        m = _layer_norm(h, params[b + "ln2.w"], params[b + "ln2.b"])
        m = jax.nn.gelu(m @ params[b + "mlp.w1"].T + params[b + "mlp.b1"], approximate=True)
        h = h + m @ params[b + "mlp.w2"].T + params[b + "mlp.b2"]
    h = _layer_norm(h, params["ln_f.w"], params["ln_f.b"])
    return h @ params["read_out.w"].T + params["read_out.b"]


# -------------------------------------------------------------- workloads

def _maml(problem, forward, loss, batch_tasks="vmap"):
    """grad_theta mean_t L_query_t(phi_t).

    batch_tasks="vmap" batches tasks with vmap; "unroll" sums an unrolled
    loop inside the jit. Conv4 uses "unroll": XLA:CPU turns the vmapped
    second-order convolutions into grouped convolutions that ran ~12x slower
    here (13 s vs 1.1 s per meta-step, float64, one thread).
    """
    h = problem.hyper
    theta = {k: jnp.asarray(v) for k, v in problem.params.items()}
    data = tuple(jnp.asarray(problem.data[k]) for k in ("support_x", "support_y", "query_x", "query_y"))

    def task_query_loss(theta, xs, ys, xq, yq):
        phi = theta
        for _ in range(h["inner_steps"]):
            g = jax.grad(lambda p: loss(forward(p, xs), ys))(phi)
            if h["first_order"]:
                g = lax.stop_gradient(g)                 # FOMAML: no Hessian term
            phi = jax.tree_util.tree_map(lambda w, gw: w - h["alpha"] * gw, phi, g)
        return loss(forward(phi, xq), yq)

    def meta_loss(theta, *data):
        if batch_tasks == "vmap":
            return jax.vmap(task_query_loss, in_axes=(None, 0, 0, 0, 0))(theta, *data).mean()
        n_tasks = data[0].shape[0]
        return sum(task_query_loss(theta, *(a[t] for a in data)) for t in range(n_tasks)) / n_tasks

    meta_grad = _compile(jax.grad(meta_loss), theta, *data)
    out = {}

    def step():
        out["grads"] = jax.block_until_ready(meta_grad(theta, *data))

    return Runner(step, lambda: _numpy(out["grads"]))


def maml_sine(problem):
    return _maml(problem, mlp, mse)


def maml_conv4(problem):
    return _maml(problem, conv4, cross_entropy, batch_tasks="unroll")


def reptile_sine(problem):
    """Reptile (Nichol et al. 2018, Algorithm 1): mean_t (phi_t - theta), tasks vmapped."""
    h = problem.hyper
    theta = {k: jnp.asarray(v) for k, v in problem.params.items()}
    xs, ys = jnp.asarray(problem.data["support_x"]), jnp.asarray(problem.data["support_y"])

    def task_delta(theta, xs, ys):
        phi = theta
        for _ in range(h["inner_steps"]):
            g = jax.grad(lambda p: mse(mlp(p, xs), ys))(phi)
            phi = jax.tree_util.tree_map(lambda w, gw: w - h["alpha"] * gw, phi, g)
        return jax.tree_util.tree_map(lambda p, t: p - t, phi, theta)

    def direction(theta, xs, ys):
        deltas = jax.vmap(task_delta, in_axes=(None, 0, 0))(theta, xs, ys)
        return jax.tree_util.tree_map(lambda d: d.mean(axis=0), deltas)

    compiled = _compile(direction, theta, xs, ys)
    out = {}

    def step():
        out["direction"] = jax.block_until_ready(compiled(theta, xs, ys))

    return Runner(step, lambda: _numpy(out["direction"]))


def protonet(problem):
    h = problem.hyper
    params = {k: jnp.asarray(v) for k, v in problem.params.items()}
    d = {k: jnp.asarray(v) for k, v in problem.data.items()}

    def loss(params, d):
        n_support = d["support_x"].shape[0]
        z = conv4(params, jnp.concatenate([d["support_x"], d["query_x"]]))
        prototypes = z[:n_support].reshape(h["n_way"], h["k_shot"], -1).mean(axis=1)
        dist = ((z[n_support:, None, :] - prototypes[None, :, :]) ** 2).sum(-1)
        return cross_entropy(-dist, d["query_y"])

    compiled = _compile(jax.grad(loss), params, d)
    out = {}

    def step():
        out["grads"] = jax.block_until_ready(compiled(params, d))

    return Runner(step, lambda: _numpy(out["grads"]))


def icl_transformer(problem):
    """One ICL training step (Garg et al. 2022): value_and_grad of the prefix MSE, jitted."""
    h = problem.hyper
    params = {k: jnp.asarray(v) for k, v in problem.params.items()}
    x, y = jnp.asarray(problem.data["x"]), jnp.asarray(problem.data["y"])

    def loss(params, x, y):
        pred = transformer(params, prompt_tokens(x, y), h["depth"], h["heads"])[:, 0::2, 0]
        return ((pred - y) ** 2).mean()

    compiled = _compile(jax.value_and_grad(loss), params, x, y)
    out = {}

    def step():
        out["loss"], out["grads"] = jax.block_until_ready(compiled(params, x, y))

    return Runner(step, lambda: _numpy({"loss": out["loss"], **out["grads"]}))
