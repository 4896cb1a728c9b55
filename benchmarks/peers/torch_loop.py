"""PyTorch, the classic way: a Python loop over tasks with fast-weight dicts and
torch.autograd.grad(create_graph=True) for the inner step. This is the
reference every other implementation is checked against.
"""
from . import Runner

try:
    import torch
    import torch.nn.functional as F
    from .torch_common import Conv4, conv4, icl_loss, mlp, protonet_loss, sq_dist, to_numpy, to_torch
except ImportError as e:          # reported by available()
    torch, _MISSING = None, str(e)

NAME = "torch_loop"


def available():
    return (True, "") if torch is not None else (False, f"torch not installed ({_MISSING})")


def _inner_loop(theta, loss_fn, alpha, steps, first_order):
    """phi = theta - alpha * grad L_support(theta), `steps` times (MAML Eq. 1)."""
    phi = theta
    for _ in range(steps):
        grads = torch.autograd.grad(loss_fn(phi), list(phi.values()),
                                    create_graph=not first_order)
        # first order: the returned grads are constants, the Hessian term drops
        phi = {k: w - alpha * g for (k, w), g in zip(phi.items(), grads)}
    return phi


def _maml(problem, forward, support_loss, query_loss):
    """Generic MAML meta-gradient: grad_theta mean_t L_query_t(phi_t)."""
    theta, data = to_torch(problem)
    for w in theta.values():
        w.requires_grad_(True)
    h = problem.hyper
    n_tasks = data["support_x"].shape[0]
    out = {}

    def step():
        total = 0.0
        for t in range(n_tasks):
            phi = _inner_loop(theta, lambda p: support_loss(forward(p, data["support_x"][t]), t),
                              h["alpha"], h["inner_steps"], h["first_order"])
            total = total + query_loss(forward(phi, data["query_x"][t]), t)
        out["grads"] = torch.autograd.grad(total / n_tasks, list(theta.values()))

    return Runner(step, lambda: to_numpy(out["grads"], theta.keys()))


def maml_sine(problem):
    ys = {k: torch.from_numpy(problem.data[f"{k}_y"]) for k in ("support", "query")}
    return _maml(problem, mlp,
                 lambda pred, t: F.mse_loss(pred, ys["support"][t]),
                 lambda pred, t: F.mse_loss(pred, ys["query"][t]))


def maml_conv4(problem):
    ys = {k: torch.from_numpy(problem.data[f"{k}_y"]) for k in ("support", "query")}
    return _maml(problem, conv4,
                 lambda logits, t: F.cross_entropy(logits, ys["support"][t]),
                 lambda logits, t: F.cross_entropy(logits, ys["query"][t]))


# the public-API workload's loop is this same loop: F.conv2d, F.batch_norm, ... per task
maml_conv4_api = maml_conv4


def reptile_sine(problem):
    """Reptile (Nichol et al. 2018, Algorithm 1): direction mean_t (phi_t - theta)."""
    theta, data = to_torch(problem)
    h = problem.hyper
    n_tasks = data["support_x"].shape[0]
    out = {}

    def step():
        direction = {k: torch.zeros_like(w) for k, w in theta.items()}
        for t in range(n_tasks):
            phi = {k: w.clone().requires_grad_(True) for k, w in theta.items()}
            for _ in range(h["inner_steps"]):
                loss = F.mse_loss(mlp(phi, data["support_x"][t]), data["support_y"][t])
                grads = torch.autograd.grad(loss, list(phi.values()))
                with torch.no_grad():
                    phi = {k: (w - h["alpha"] * g).requires_grad_(True)
                           for (k, w), g in zip(phi.items(), grads)}
            with torch.no_grad():
                for k in direction:
                    direction[k] += (phi[k] - theta[k]) / n_tasks
        out["direction"] = direction

    return Runner(step, lambda: {k: v.numpy().astype("float64") for k, v in out["direction"].items()})


def _loss_gradient(problem, loss_of, with_loss=False):
    """A Runner for the gradient of loss_of(params, data, hyper) w.r.t. every parameter."""
    params, data = to_torch(problem)
    for w in params.values():
        w.requires_grad_(True)
    out = {}

    def step():
        loss = loss_of(params, data, problem.hyper)
        out["loss"] = loss.detach()
        out["grads"] = torch.autograd.grad(loss, list(params.values()))

    def result():
        res = {"loss": out["loss"].numpy().astype("float64")} if with_loss else {}
        res.update(to_numpy(out["grads"], params.keys()))
        return res

    return Runner(step, result)


def protonet(problem):
    """Prototypical Networks episode: gradient of the query loss w.r.t. all Conv4 parameters."""
    return _loss_gradient(problem, lambda params, data, h: protonet_loss(
        conv4, params, data, h["n_way"], h["k_shot"]))


def icl_transformer(problem):
    """In-context linear regression (Garg et al. 2022): loss and gradient of one training step."""
    return _loss_gradient(problem, lambda params, data, h: icl_loss(
        params, data["x"], data["y"], h["depth"], h["heads"]), with_loss=True)


def protonet_omniglot(problem):
    """One ProtoNet training step as a PyTorch user writes it: an nn.Module Conv4,
    loss.backward(), torch.optim.Adam. Episodes come from scratchmeta's
    EpisodeSampler (its index draws only, the images indexed here in NumPy),
    seeded as scratchmeta's, so both train on the same episodes.

    result(): the first step's loss, gradient and (float64 only) updated parameters.
    """
    import numpy as np
    from scratchmeta.tasks.episodes import EpisodeSampler
    h, d = problem.hyper, problem.data
    sampler = EpisodeSampler(d["images"], d["labels"], np.unique(d["labels"]), h["n_way"],
                             h["k_shot"], h["n_query"], seed=h["sampler_seed"],
                             dtype=problem.dtype.name)
    model = Conv4(head=False, hidden=problem.params["conv1.weight"].shape[0]).to(
        getattr(torch, problem.dtype.name))
    model.load_state_dict({k: torch.tensor(v) for k, v in problem.params.items()})
    optimizer = torch.optim.Adam(model.parameters(), lr=h["lr"])
    names = [k for k, _ in model.named_parameters()]
    n_support, labels = h["n_way"] * h["k_shot"], torch.arange(h["n_way"])
    query_y = labels.repeat_interleave(h["n_query"])
    first = {}

    def step():
        _, support, query = sampler.sample_indices(1)
        x = torch.from_numpy(d["images"][np.concatenate([support[0], query[0]])])
        z = model(x)                                                       # (S + Q, 64)
        prototypes = z[:n_support].reshape(h["n_way"], h["k_shot"], -1).mean(1)
        loss = F.cross_entropy(-sq_dist(z[n_support:], prototypes), query_y)
        optimizer.zero_grad()
        loss.backward()
        if not first:
            first.update(loss=loss.item(), grads=[p.grad.clone() for p in model.parameters()])
        optimizer.step()
        if "theta" not in first:
            first["theta"] = [p.detach().clone() for p in model.parameters()]

    def result():
        res = {"loss": np.float64(first["loss"])}
        res.update(to_numpy(first["grads"], names))
        if problem.dtype == np.float64:
            res.update({f"adam.{k}": v for k, v in to_numpy(first["theta"], names).items()})
        return res

    return Runner(step, result)
