"""scratchmeta, through the library's own algorithm code: what its users run.

Every workload calls scratchmeta's modules, not a copy written for the
benchmark: nn.MLP / nn.Conv4 (pure functions of a parameter dict),
algorithms.maml.meta_gradient (tasks batched on a leading axis: weights of
shape (T, out, in) and batched matmul, batched convolution for Conv4, no
Python loop over tasks), algorithms.reptile.reptile_direction, and
Prototypical Networks' loss from algorithms.protonet, and the in-context
learner's training step (algorithms.icl.InContextLearner.meta_step on a
transformer.Transformer). Parameters arrive in PyTorch's names and are
renamed to the library's (fc1.weight -> w0, conv1.weight -> conv0.w,
bn1.weight -> bn0.w, head.weight -> head.w); the transformer's already
carry the library's names.

Two workloads are written as a user writes them rather than through the
library's learners: maml_conv4_api (a Python loop over tasks with F.conv2d,
F.batch_norm, F.max_pool2d, F.cross_entropy and sm.grad(create_graph=True))
and protonet_omniglot (EpisodeSampler -> ProtoNet.meta_step -> optim.Adam,
the training loop's step).

Each step runs with scratchmeta's fast paths switched on (this module) or off
(peers/scratchmeta_plain.py, the same code), so one run shows both.
"""

import numpy as np

from . import Runner

try:
    import scratchmeta as sm
    from scratchmeta import backend
    F = sm.functional
    sm.grad                      # noqa: B018  (the engine has landed)
except (ImportError, AttributeError) as e:   # reported by available()
    sm, _MISSING = None, str(e)

NAME = "scratchmeta"


def available():
    return (True, "") if sm is not None else (False, f"scratchmeta engine not importable ({_MISSING})")


# ------------------------------------------------------------------ helpers

def _tensor(a, requires_grad=False):
    """Host NumPy -> Tensor on the active backend, keeping the dtype."""
    return sm.tensor(a, requires_grad=requires_grad, dtype=a.dtype)


def _labels(a):
    """Integer class indices as a raw backend array (F.cross_entropy takes them so)."""
    return backend.asarray(a)


def _numpy(tensors):
    return {k: np.asarray(t.numpy(), dtype=np.float64) for k, t in tensors.items()}


def _per_task(theta, zeros):
    """theta[k] of shape s -> shape (T, *s): one copy per task, by broadcasting."""
    return {k: w.reshape(1, *w.shape) + zeros[w.ndim] for k, w in theta.items()}


def _zeros_for(theta, n_tasks, dtype):
    """Broadcast partners: zeros (T, 1, ..., 1) for each parameter rank."""
    ranks = {w.ndim for w in theta.values()}
    return {r: _tensor(np.zeros((n_tasks,) + (1,) * r, dtype=dtype)) for r in ranks}


# ------------------------------------------------------------------ names

def _rename(name):
    """PyTorch-style benchmark names -> scratchmeta's nn names."""
    layer, kind = name.split(".")
    short = {"weight": "w", "bias": "b"}[kind]
    if layer.startswith("fc"):
        return f"{short}{int(layer[2:]) - 1}"
    if layer.startswith(("conv", "bn")):
        stem = layer.rstrip("0123456789")
        return f"{stem}{int(layer[len(stem):]) - 1}.{short}"
    return f"{layer}.{short}"


def _theta(problem):
    from collections import OrderedDict
    return OrderedDict((_rename(k), _tensor(v, requires_grad=True)) for k, v in problem.params.items())


def _back(grads, problem):
    """Library names -> benchmark names, as float64 host arrays."""
    names = {_rename(k): k for k in problem.params}
    return {names[k]: np.asarray(t.numpy(), dtype=np.float64) for k, t in grads.items()}


def _batch(d, labels=False):
    conv = _labels if labels else (lambda a: _tensor(a).data)
    return {"support_x": _tensor(d["support_x"]).data, "query_x": _tensor(d["query_x"]).data,
            "support_y": conv(d["support_y"]), "query_y": conv(d["query_y"])}


def _mlp(theta):
    """The nn.MLP whose layer widths theta's weights have."""
    from scratchmeta.nn import MLP
    return MLP([theta["w0"].shape[1]] + [theta[f"w{i}"].shape[0] for i in range(len(theta) // 2)])


# -------------------------------------------------------------- workloads

def _maml_sine(problem):
    """algorithms.maml.meta_gradient on an nn.MLP, 25 tasks batched."""
    from scratchmeta.algorithms import maml
    h = problem.hyper
    theta = _theta(problem)
    model, batch, out = _mlp(theta), _batch(problem.data), {}

    def step():
        out["grads"] = maml.meta_gradient(model, theta, batch, h["alpha"], h["inner_steps"],
                                          first_order=h["first_order"], loss="mse")
        backend.synchronize()

    return Runner(step, lambda: _back(out["grads"], problem))


def _reptile_sine(problem):
    """algorithms.reptile.reptile_direction (Nichol et al. 2018, Algorithm 1), tasks batched.

    The library returns theta - mean_t(phi_t), the direction an outer SGD step
    descends; the benchmark compares mean_t(phi_t) - theta, its negative.
    """
    from scratchmeta.algorithms import reptile
    h = problem.hyper
    theta = _theta(problem)
    model, batch, out = _mlp(theta), _batch(problem.data), {}

    def step():
        direction, _ = reptile.reptile_direction(model, theta, batch, h["alpha"], h["inner_steps"])
        with sm.no_grad():
            out["direction"] = {k: -v for k, v in direction.items()}
        backend.synchronize()

    return Runner(step, lambda: _back(out["direction"], problem))


def _maml_conv4(problem):
    """algorithms.maml.meta_gradient on nn.Conv4: the tasks batched through batched convolution."""
    from scratchmeta.algorithms import maml
    from scratchmeta.nn import Conv4
    h = problem.hyper
    theta = _theta(problem)
    model = Conv4(in_channels=problem.data["support_x"].shape[-3], hidden=theta["conv0.w"].shape[0],
                  n_classes=h["n_way"], image_size=problem.data["support_x"].shape[-1])
    batch, out = _batch(problem.data, labels=True), {}

    def step():
        out["grads"] = maml.meta_gradient(model, theta, batch, h["alpha"], h["inner_steps"],
                                          first_order=h["first_order"], loss="cross_entropy")
        backend.synchronize()

    return Runner(step, lambda: _back(out["grads"], problem))


def _protonet(problem):
    """One ProtoNet episode (Snell et al. 2017, Eq. 1 prototypes, Eq. 2 distance softmax).

    nn.Conv4 embeds support and query in one batch (one set of batch-norm
    statistics, as the peers do), then algorithms.protonet's loss.
    """
    from scratchmeta.algorithms import protonet as proto
    from scratchmeta.nn import Conv4
    h, d = problem.hyper, problem.data
    params = _theta(problem)
    model = Conv4(in_channels=d["support_x"].shape[-3], hidden=params["conv0.w"].shape[0],
                  n_classes=None, image_size=d["support_x"].shape[-1])
    n_support = len(d["support_y"])
    x = _tensor(np.concatenate([d["support_x"], d["query_x"]]))
    y_support = _tensor(d["support_y"].reshape(1, -1)).data
    y_query = _tensor(d["query_y"].reshape(1, -1)).data
    out = {}

    def step():
        z = model(params, x)                                         # (S + Q, dim)
        zs = z[:n_support].reshape(1, n_support, z.shape[1])
        zq = z[n_support:].reshape(1, z.shape[0] - n_support, z.shape[1])
        loss = proto.episode_loss(zs, y_support, zq, y_query, h["n_way"]).mean()
        out["grads"] = dict(zip(params, sm.grad(loss, list(params.values()), retain_graph=False)))
        backend.synchronize()

    return Runner(step, lambda: _back(out["grads"], problem))


def _icl_transformer(problem):
    """One training step of algorithms.icl (Garg et al. 2022): InContextLearner.meta_step.

    The learner builds the tokens (icl.prompt_tokens), runs its
    transformer.Transformer and differentiates the mean squared error over
    prompts and prefixes w.r.t. every parameter, exactly as training does
    (the optimiser's update is left out).
    """
    from collections import OrderedDict
    from scratchmeta.algorithms import icl
    h, d = problem.hyper, problem.data
    learner = icl.InContextLearner(
        model={k: h[k] for k in ("width", "depth", "heads", "positions", "mlp_ratio")},
        task={"n_dims": h["n_dims"], "n_points": h["n_points"]})
    # the benchmark's parameters must be the model's own, name for name and shape for shape
    with sm.no_grad():
        layout = {k: tuple(v.shape) for k, v in learner.model.init(0, dtype=problem.dtype).items()}
    given = {k: tuple(v.shape) for k, v in problem.params.items()}
    if layout != given:
        raise ValueError(f"icl_transformer: parameters {given} do not match the model's {layout}")
    theta = OrderedDict((k, _tensor(v, requires_grad=True)) for k, v in problem.params.items())
    batch = {"x": _tensor(d["x"]).data, "y": _tensor(d["y"]).data}
    out = {}

    def step():
        loss, grads, _ = learner.meta_step(theta, batch)
        out["loss"], out["grads"] = loss.detach(), grads      # not the loss's graph
        backend.synchronize()

    return Runner(step, lambda: _numpy({"loss": out["loss"], **out["grads"]}))


def _conv4_api(p, x):
    """Conv4 with the public functional API; p uses the benchmark's PyTorch names."""
    for i in range(1, 5):
        x = F.conv2d(x, p[f"conv{i}.weight"], p[f"conv{i}.bias"], padding=1)
        x = F.batch_norm(x, p[f"bn{i}.weight"], p[f"bn{i}.bias"], eps=1e-5)   # batch statistics
        x = F.max_pool2d(x.relu(), 2)
    x = x.reshape(x.shape[0], -1)                                             # (N, 64)
    return F.linear(x, p["head.weight"], p["head.bias"])


def _maml_conv4_api(problem):
    """Second-order MAML (Finn et al. 2017, Eq. 1 inside) as a user's loop over tasks."""
    h, d = problem.hyper, problem.data
    theta = {k: _tensor(v, requires_grad=True) for k, v in problem.params.items()}
    tasks = [tuple(_tensor(d[key][t]) if key.endswith("_x") else _labels(d[key][t])
                   for key in ("support_x", "support_y", "query_x", "query_y"))
             for t in range(d["support_x"].shape[0])]
    out = {}

    def step():
        total = 0
        for support_x, support_y, query_x, query_y in tasks:
            phi = theta
            for _ in range(h["inner_steps"]):
                loss = F.cross_entropy(_conv4_api(phi, support_x), support_y)
                grads = sm.grad(loss, list(phi.values()), create_graph=True)
                phi = {k: w - h["alpha"] * g for (k, w), g in zip(phi.items(), grads)}
            total = total + F.cross_entropy(_conv4_api(phi, query_x), query_y)
        grads = sm.grad(total / len(tasks), list(theta.values()))
        out["grads"] = dict(zip(theta, grads))
        backend.synchronize()

    return Runner(step, lambda: _numpy(out["grads"]))


def _protonet_omniglot(problem):
    """One training step as scratchmeta's training loop takes it (train.meta_train):
    an episode from tasks.EpisodeSampler, ProtoNet.meta_step on nn.Conv4, optim.Adam.

    result(): the first step's loss, gradient and (float64 only) updated parameters.
    """
    from scratchmeta.algorithms.protonet import ProtoNet
    from scratchmeta.nn import Conv4
    from scratchmeta.optim import Adam
    from scratchmeta.tasks.episodes import EpisodeSampler
    h, d = problem.hyper, problem.data
    sampler = EpisodeSampler(d["images"], d["labels"], np.unique(d["labels"]), h["n_way"],
                             h["k_shot"], h["n_query"], seed=h["sampler_seed"],
                             dtype=problem.dtype.name)
    theta = _theta(problem)
    learner = ProtoNet(Conv4(in_channels=d["images"].shape[1], hidden=theta["conv0.w"].shape[0],
                             n_classes=None, image_size=d["images"].shape[-1]))
    optimizer = Adam(lr=h["lr"])
    state, first = {"theta": theta}, {}

    def step():
        loss, grads, _ = learner.meta_step(state["theta"], sampler.sample(1))
        state["theta"] = optimizer.step(state["theta"], grads)
        if not first:
            first.update(loss=loss, grads=grads, theta=state["theta"])
        backend.synchronize()

    def result():
        res = {"loss": np.float64(first["loss"].item())}
        res.update(_back(first["grads"], problem))
        if problem.dtype == np.float64:
            res.update({f"adam.{k}": v for k, v in _back(first["theta"], problem).items()})
        return res

    return Runner(step, result)


# ------------------------------------------------ fast paths on / off

KINDS = ("maml_sine", "reptile_sine", "maml_conv4", "maml_conv4_api", "protonet",
         "protonet_omniglot", "icl_transformer")


def switched(build, fast):
    """build(problem) -> Runner, with every step run under sm.use_fast_paths(fast).

    An engine without the switch runs as it is (the overlay did not exist yet).
    """
    def workload(problem):
        runner = build(problem)
        if not hasattr(sm, "use_fast_paths"):
            return runner

        def step():
            previous = sm.use_fast_paths(fast)
            try:
                runner.step()
            finally:
                sm.use_fast_paths(previous)

        return Runner(step, runner.result)

    workload.__doc__ = build.__doc__
    return workload


def workloads(fast):
    """kind -> workload function, with the fast paths on or off."""
    return {kind: switched(globals()["_" + kind], fast) for kind in KINDS}


globals().update(workloads(fast=True))
