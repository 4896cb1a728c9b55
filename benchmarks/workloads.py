"""Deterministic benchmark problems, built in plain NumPy.

Every implementation (scratchmeta and each peer) receives the same `Problem`:
parameters in PyTorch layout (linear weight (out, in), conv weight
(out, in, kh, kw)), data batches and hyper-parameters, all seeded. Each
returns its result as a dict name -> float64 NumPy array with the same keys,
so the results can be compared entry by entry.

Workloads
---------
maml_sine_2nd  sinusoid MAML meta-gradient, second order (Finn et al. 2017,
               arXiv:1703.03400v3, Eq. 1 inside, the meta-objective outside):
               grad_theta mean_t L_query_t(theta - alpha grad L_support_t(theta))
maml_sine_1st  the same with the inner gradient held constant (FOMAML)
reptile_sine   Reptile's outer direction (arXiv:1803.02999, Algorithm 1):
               mean_t (phi_t - theta), phi_t after k SGD steps on task t
maml_conv4     5-way 1-shot MAML meta-gradient of a Conv4 on 28x28 images
protonet       a 5-way 1-shot Prototypical Networks episode (arXiv:1703.05175,
               Eq. 1 prototypes, Eq. 2 distance softmax): gradient of the
               query cross-entropy w.r.t. all Conv4 parameters
maml_conv4_api the same meta-gradient written as a user writes it with the public
               API: a Python loop over tasks, F.conv2d / F.batch_norm /
               F.max_pool2d / F.cross_entropy and sm.grad(create_graph=True)
protonet_omniglot  one ProtoNet training step of the Omniglot recipe (Conv4-64,
               20-way 1-shot, 5 queries a class, 28x28): sample an episode from
               an image pool, embed, loss, gradient and one Adam step
icl_transformer  one training step of in-context linear regression (Garg et
               al. 2022, arXiv:2208.01066v3, Sec. 3): loss and gradient of a
               GPT-2-style pre-norm decoder w.r.t. all its parameters, on a
               batch of prompts (x_1, w.x_1, ..., x_n, w.x_n)
"""
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

SEED = 0


@dataclass
class Problem:
    """One workload instance: what every implementation gets."""

    name: str                 # workload name, e.g. "maml_sine_2nd"
    kind: str                 # peer function to call: maml_sine | reptile_sine | maml_conv4 |
                              # protonet | icl_transformer
    params: "OrderedDict[str, np.ndarray]"
    data: dict                # name -> np.ndarray (labels are int64)
    hyper: dict = field(default_factory=dict)

    @property
    def dtype(self):
        return next(iter(self.params.values())).dtype


# ----------------------------------------------------------------- parameters

def _uniform(rng, shape, fan_in, dtype):
    """PyTorch's default Linear/Conv2d init range: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def mlp_params(rng, sizes=(1, 40, 40, 1), dtype=np.float64):
    """MLP fc1..fcL; weight (out, in), bias (out,)."""
    params = OrderedDict()
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        params[f"fc{i}.weight"] = _uniform(rng, (n_out, n_in), n_in, dtype)
        params[f"fc{i}.bias"] = _uniform(rng, (n_out,), n_in, dtype)
    return params


def conv4_params(rng, in_channels=1, hidden=64, n_out=5, head=True, dtype=np.float64):
    """Conv4: four blocks conv3x3(pad 1) -> batch norm -> ReLU -> maxpool 2x2, then head.

    On 28x28 inputs the spatial size goes 28 -> 14 -> 7 -> 3 -> 1, so the
    flattened embedding has `hidden` = 64 features.
    """
    params = OrderedDict()
    c_in = in_channels
    for i in range(1, 5):
        fan_in = c_in * 3 * 3
        params[f"conv{i}.weight"] = _uniform(rng, (hidden, c_in, 3, 3), fan_in, dtype)
        params[f"conv{i}.bias"] = _uniform(rng, (hidden,), fan_in, dtype)
        # batch-norm affine parameters: perturbed around PyTorch's (1, 0)
        # so that a wrong gradient for them cannot hide behind symmetry
        params[f"bn{i}.weight"] = (1.0 + 0.1 * rng.standard_normal(hidden)).astype(dtype)
        params[f"bn{i}.bias"] = (0.1 * rng.standard_normal(hidden)).astype(dtype)
        c_in = hidden
    if head:
        params["head.weight"] = _uniform(rng, (n_out, hidden), hidden, dtype)
        params["head.bias"] = _uniform(rng, (n_out,), hidden, dtype)
    return params


def transformer_params(rng, n_dims=5, width=32, depth=3, max_len=30, mlp_ratio=4, n_out=1,
                       dtype=np.float64):
    """The parameters of scratchmeta.transformer.Transformer, by its names and shapes.

    read_in.{w,b}, pos (learned positions, (max_len, width)), block{i}.ln1.{w,b},
    block{i}.attn.{w_qkv,b_qkv,w_out,b_out} (Q, K, V stacked: w_qkv (3 width, width)),
    block{i}.ln2.{w,b}, block{i}.mlp.{w1,b1,w2,b2}, ln_f.{w,b}, read_out.{w,b};
    every weight (out, in) as in PyTorch. GPT-2's initialisation (N(0, 0.02^2),
    residual projections scaled by 1/sqrt(2 depth)), except that biases and
    layer-norm parameters are perturbed around (0, 1) so that a wrong
    gradient for them cannot hide behind symmetry.
    """
    D, H = width, width * mlp_ratio
    resid = 0.02 / np.sqrt(2 * depth)

    def normal(*shape, std=0.02):
        return rng.normal(0.0, std, size=shape).astype(dtype)

    def gain(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(dtype)

    params = OrderedDict()
    params["read_in.w"], params["read_in.b"] = normal(D, n_dims), normal(D)
    params["pos"] = normal(max_len, D)
    for i in range(depth):
        b = f"block{i}."
        params[b + "ln1.w"], params[b + "ln1.b"] = gain(D), normal(D, std=0.1)
        params[b + "attn.w_qkv"], params[b + "attn.b_qkv"] = normal(3 * D, D), normal(3 * D)
        params[b + "attn.w_out"], params[b + "attn.b_out"] = normal(D, D, std=resid), normal(D)
        params[b + "ln2.w"], params[b + "ln2.b"] = gain(D), normal(D, std=0.1)
        params[b + "mlp.w1"], params[b + "mlp.b1"] = normal(H, D), normal(H)
        params[b + "mlp.w2"], params[b + "mlp.b2"] = normal(D, H, std=resid), normal(D)
    params["ln_f.w"], params["ln_f.b"] = gain(D), normal(D, std=0.1)
    params["read_out.w"], params["read_out.b"] = normal(n_out, D), normal(n_out)
    return params


# ----------------------------------------------------------------------- data

def sine_tasks(rng, n_tasks, k_support=10, k_query=10, dtype=np.float64):
    """Sinusoid regression tasks: y = A sin(x - phase), A in [0.1, 5], phase in [0, pi], x in [-5, 5]."""
    amplitude = rng.uniform(0.1, 5.0, size=(n_tasks, 1, 1))
    phase = rng.uniform(0.0, np.pi, size=(n_tasks, 1, 1))

    def draw(k):
        x = rng.uniform(-5.0, 5.0, size=(n_tasks, k, 1))
        return x.astype(dtype), (amplitude * np.sin(x - phase)).astype(dtype)

    support_x, support_y = draw(k_support)
    query_x, query_y = draw(k_query)
    # shapes: (tasks, points, 1)
    return dict(support_x=support_x, support_y=support_y, query_x=query_x, query_y=query_y)


def image_episode(rng, n_way=5, k_shot=1, n_query=15, size=28, dtype=np.float64):
    """One synthetic N-way K-shot episode of 1x28x28 images.

    Each class is a random template; its images are the template plus noise.
    Support and query are class-major: labels [0]*k + [1]*k + ...
    """
    templates = rng.random((n_way, 1, size, size))

    def draw(per_class):
        labels = np.repeat(np.arange(n_way), per_class)
        noise = rng.random((len(labels), 1, size, size))
        return (0.7 * templates[labels] + 0.3 * noise).astype(dtype), labels.astype(np.int64)

    support_x, support_y = draw(k_shot)
    query_x, query_y = draw(n_query)
    return dict(support_x=support_x, support_y=support_y, query_x=query_x, query_y=query_y)


def linreg_prompts(rng, n_prompts, n_dims=5, n_points=15, dtype=np.float64):
    """Noiseless linear-regression prompts as scratchmeta.tasks.linreg draws them:
    w ~ N(0, I_d) per prompt, x_i ~ N(0, I_d), y_i = w.x_i. x (B, n, d), y (B, n)."""
    w = rng.standard_normal((n_prompts, n_dims))
    x = rng.standard_normal((n_prompts, n_points, n_dims))
    y = np.einsum("tnd,td->tn", x, w)
    return dict(x=x.astype(dtype), y=y.astype(dtype))


def image_meta_batch(rng, meta_batch, **kwargs):
    """`meta_batch` episodes stacked on a new leading task axis."""
    episodes = [image_episode(rng, **kwargs) for _ in range(meta_batch)]
    return {key: np.stack([e[key] for e in episodes]) for key in episodes[0]}


# ------------------------------------------------------------------ workloads

def _maml_sine(name, first_order, dtype, n_tasks=25, inner_steps=1):
    rng = np.random.default_rng(SEED)
    return Problem(
        name=name, kind="maml_sine",
        params=mlp_params(rng, dtype=dtype),
        data=sine_tasks(rng, n_tasks, dtype=dtype),
        hyper=dict(alpha=0.01, inner_steps=inner_steps, first_order=first_order))


def _reptile_sine(name, dtype, n_tasks=25, inner_steps=5):
    rng = np.random.default_rng(SEED)
    return Problem(
        name=name, kind="reptile_sine",
        params=mlp_params(rng, dtype=dtype),
        data=sine_tasks(rng, n_tasks, dtype=dtype),
        hyper=dict(alpha=0.01, inner_steps=inner_steps))


def _maml_conv4(name, dtype, n_tasks=4, inner_steps=1):
    rng = np.random.default_rng(SEED)
    return Problem(
        name=name, kind="maml_conv4",
        params=conv4_params(rng, dtype=dtype),
        data=image_meta_batch(rng, n_tasks, n_way=5, k_shot=1, n_query=15, dtype=dtype),
        # alpha 0.4: the Omniglot 5-way 1-shot step size of Finn et al. 2017
        hyper=dict(alpha=0.4, inner_steps=inner_steps, first_order=False, n_way=5))


def _protonet(name, dtype, n_tasks=None, inner_steps=None):
    rng = np.random.default_rng(SEED)
    return Problem(
        name=name, kind="protonet",
        params=conv4_params(rng, head=False, dtype=dtype),
        data=image_episode(rng, n_way=5, k_shot=1, n_query=15, dtype=dtype),
        hyper=dict(n_way=5, k_shot=1))


def _maml_conv4_api(name, dtype, n_tasks=4, inner_steps=1):
    """maml_conv4's problem, for the loop a user writes with the public API."""
    problem = _maml_conv4(name, dtype, n_tasks=n_tasks, inner_steps=inner_steps)
    problem.kind = "maml_conv4_api"
    return problem


def image_pool(rng, n_classes=100, per_class=20, size=28, dtype=np.float32):
    """A labelled image pool standing in for Omniglot's training alphabets (no download):
    each class a random stroke-like template (sparse ink on 0), its images the template
    plus noise. images (n_classes * per_class, 1, size, size) in [0, 1], labels (n,)."""
    templates = (rng.random((n_classes, 1, size, size)) < 0.15).astype(np.float64)
    labels = np.repeat(np.arange(n_classes), per_class)
    noise = rng.random((len(labels), 1, size, size))
    images = np.clip(0.8 * templates[labels] + 0.2 * noise, 0.0, 1.0)
    return images.astype(dtype), labels.astype(np.int64)


def _protonet_omniglot(name, dtype, n_tasks=None, inner_steps=None):
    """Snell et al.'s Omniglot recipe at 20 ways (the issue's timing recipe): one episode
    a step, 20-way 1-shot, 5 queries a class, Adam at 1e-3. Every implementation samples
    with scratchmeta's EpisodeSampler (seeded alike), so all see the same episodes."""
    rng = np.random.default_rng(SEED)
    images, labels = image_pool(rng, dtype=dtype)
    return Problem(
        name=name, kind="protonet_omniglot",
        params=conv4_params(rng, head=False, dtype=dtype),
        data=dict(images=images, labels=labels),
        hyper=dict(n_way=20, k_shot=1, n_query=5, lr=1e-3, sampler_seed=SEED))


def _icl_transformer(name, dtype, n_tasks=64, inner_steps=None):
    """The configuration of docs/icl.md (icl.default_config): d = 5, 15 points a prompt
    (30 tokens, max_len 30), width 32, 3 pre-norm blocks, 4 heads, learned
    positions, MLP ratio 4, 64 prompts a step; the full task (no curriculum)."""
    rng = np.random.default_rng(SEED)
    d, n, width, depth = 5, 15, 32, 3
    return Problem(
        name=name, kind="icl_transformer",
        params=transformer_params(rng, n_dims=d, width=width, depth=depth, max_len=2 * n,
                                  mlp_ratio=4, dtype=dtype),
        data=linreg_prompts(rng, n_tasks, n_dims=d, n_points=n, dtype=dtype),
        hyper=dict(n_dims=d, n_points=n, width=width, depth=depth, heads=4,
                   positions="learned", mlp_ratio=4))


# name -> (builder, one-line description, default timed repeats, default dtype):
# float64 for the sinusoid regression (the paper's), float32 for the image and
# transformer workloads (what their training configs use)
WORKLOADS = OrderedDict([
    ("maml_sine_2nd", (lambda n, d, **kw: _maml_sine(n, False, d, **kw),
                       "MAML sinusoid, MLP 1-40-40-1, 25 tasks, 10+10 pts, 1 step, 2nd order", 40,
                       "float64")),
    ("maml_sine_1st", (lambda n, d, **kw: _maml_sine(n, True, d, **kw),
                       "MAML sinusoid, same, first order (FOMAML)", 40, "float64")),
    ("reptile_sine", (_reptile_sine,
                      "Reptile outer direction, sinusoid, 25 tasks, k=5 SGD steps", 30, "float64")),
    ("maml_conv4", (_maml_conv4,
                    "MAML Conv4 5-way 1-shot 28x28, meta-batch 4, 15 queries/class, 2nd order", 5,
                    "float32")),
    ("maml_conv4_api", (_maml_conv4_api,
                        "the same, a user's public-API loop over tasks (F.conv2d, F.batch_norm, "
                        "sm.grad(create_graph=True))", 5, "float32")),
    ("protonet", (_protonet,
                  "ProtoNet Conv4 5-way 1-shot episode, 15 queries/class", 9, "float32")),
    ("protonet_omniglot", (_protonet_omniglot,
                           "ProtoNet Omniglot training step: Conv4-64, 20-way 1-shot, 5 queries, "
                           "sampling + Adam", 9, "float32")),
    ("icl_transformer", (_icl_transformer,
                         "ICL transformer training step: d=5, 15 pts, width 32, 3 layers, "
                         "4 heads, batch 64", 20, "float32")),
])


def default_dtype(name):
    """The dtype workload `name` is measured in unless told otherwise."""
    return np.dtype(WORKLOADS[name][3])


def make(name, dtype=None, **overrides):
    """Build workload `name` in `dtype` (None: its default_dtype); overrides:
    n_tasks=..., inner_steps=... (for scaling runs)."""
    builder = WORKLOADS[name][0]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return builder(name, np.dtype(dtype) if dtype is not None else default_dtype(name), **overrides)
