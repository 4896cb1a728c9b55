"""PyTorch with torch.func: functional_call on an nn.Module, grad for the inner
and outer derivatives, vmap over tasks (no Python loop over tasks).
"""
from . import Runner

try:
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad, grad_and_value, vmap
    from .torch_common import MLP, Conv4, icl_loss, protonet_loss, to_torch
except ImportError as e:          # reported by available()
    torch, _MISSING = None, str(e)

NAME = "torch_func"


def available():
    return (True, "") if torch is not None else (False, f"torch not installed ({_MISSING})")


def _numpy(tree):
    return {k: v.detach().numpy().astype("float64") for k, v in tree.items()}


def _adapt(theta, support_loss, alpha, steps, first_order):
    """phi = theta - alpha * grad L_support(theta), `steps` times (MAML Eq. 1)."""
    phi = theta
    for _ in range(steps):
        g = grad(support_loss)(phi)
        if first_order:
            g = {k: v.detach() for k, v in g.items()}   # FOMAML: no Hessian term
        phi = {k: phi[k] - alpha * g[k] for k in phi}
    return phi


def _maml(problem, model, loss):
    """grad_theta mean_t L_query_t(phi_t), tasks batched by vmap."""
    theta, data = to_torch(problem)
    h = problem.hyper

    def task_query_loss(theta, xs, ys, xq, yq):
        support_loss = lambda p: loss(functional_call(model, p, (xs,)), ys)  # noqa: E731
        phi = _adapt(theta, support_loss, h["alpha"], h["inner_steps"], h["first_order"])
        return loss(functional_call(model, phi, (xq,)), yq)

    def meta_loss(theta):
        per_task = vmap(task_query_loss, in_dims=(None, 0, 0, 0, 0))(
            theta, data["support_x"], data["support_y"], data["query_x"], data["query_y"])
        return per_task.mean()

    meta_grad = grad(meta_loss)
    out = {}

    def step():
        out["grads"] = meta_grad(theta)

    return Runner(step, lambda: _numpy(out["grads"]))


def maml_sine(problem):
    model = MLP().to(torch.from_numpy(problem.params["fc1.weight"]).dtype)
    return _maml(problem, model, F.mse_loss)


def maml_conv4(problem):
    # composed batch norm: F.batch_norm's double backward under vmap is wrong
    # in torch 2.13 (see torch_common.BatchNormComposed)
    model = Conv4(composed_bn=True).to(torch.from_numpy(problem.params["conv1.weight"]).dtype)
    return _maml(problem, model, F.cross_entropy)


def reptile_sine(problem):
    """Reptile (Nichol et al. 2018, Algorithm 1): mean_t (phi_t - theta), tasks vmapped."""
    theta, data = to_torch(problem)
    model = MLP().to(theta["fc1.weight"].dtype)
    h = problem.hyper

    def task_update(theta, xs, ys):
        support_loss = lambda p: F.mse_loss(functional_call(model, p, (xs,)), ys)  # noqa: E731
        phi = theta
        for _ in range(h["inner_steps"]):
            g = grad(support_loss)(phi)
            phi = {k: phi[k] - h["alpha"] * g[k] for k in phi}
        return {k: phi[k] - theta[k] for k in phi}

    batched = vmap(task_update, in_dims=(None, 0, 0))
    out = {}

    def step():
        deltas = batched(theta, data["support_x"], data["support_y"])
        out["direction"] = {k: v.mean(0) for k, v in deltas.items()}

    return Runner(step, lambda: _numpy(out["direction"]))


def protonet(problem):
    """One episode, so no vmap: grad of the ProtoNet loss through functional_call."""
    params, data = to_torch(problem)
    model = Conv4(head=False).to(params["conv1.weight"].dtype)
    h = problem.hyper
    embed = lambda p, x: functional_call(model, p, (x,))  # noqa: E731
    loss_grad = grad(lambda p: protonet_loss(embed, p, data, h["n_way"], h["k_shot"]))
    out = {}

    def step():
        out["grads"] = loss_grad(params)

    return Runner(step, lambda: _numpy(out["grads"]))


def icl_transformer(problem):
    """One ICL training step (Garg et al. 2022) through torch.func.grad_and_value.

    The transformer is already a pure function of its parameter dict
    (torch_common.transformer), so no functional_call is needed; one batch of
    prompts, so no vmap.
    """
    params, data = to_torch(problem)
    h = problem.hyper
    loss_grad = grad_and_value(lambda p: icl_loss(p, data["x"], data["y"], h["depth"], h["heads"]))
    out = {}

    def step():
        out["grads"], out["loss"] = loss_grad(params)

    return Runner(step, lambda: _numpy({"loss": out["loss"], **out["grads"]}))
