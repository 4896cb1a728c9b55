"""scratchmeta, through its public API only (docs: /work/shared/API.md).

The sinusoid workloads are vectorised over tasks: each task gets its own
copy of the parameters, stacked on a leading task axis, e.g. W of shape
(tasks, out, in), and the forward pass is one batched matmul

    x (T, N, in) @ W.transpose(0, 2, 1) (T, in, out) + b (T, 1, out)

so there is no Python loop over tasks. The copies are made by broadcasting
theta against zeros of shape (T, 1, ...): the support loss summed over tasks
then has the per-task gradients as its gradient w.r.t. the copies, and the
meta-gradient flows back to theta through the broadcast (a sum over T).

Conv4 MAML still loops over the 4 tasks in Python: the API has no batched
(grouped) convolution yet.
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


# ------------------------------------------------------ batched MLP (tasks)

def batched_linear(x, w, b):
    """Per-task linear layer: x (T, N, in), w (T, out, in), b (T, out) -> (T, N, out)."""
    return x @ w.transpose(0, 2, 1) + b.reshape(b.shape[0], 1, b.shape[1])


def batched_mlp(params, x):
    h = batched_linear(x, params["fc1.weight"], params["fc1.bias"]).relu()
    h = batched_linear(h, params["fc2.weight"], params["fc2.bias"]).relu()
    return batched_linear(h, params["fc3.weight"], params["fc3.bias"])


def per_task_mse(pred, target):
    """Mean squared error of each task: (T, N, 1), (T, N, 1) -> (T,)."""
    diff = pred - target
    return (diff * diff).reshape(pred.shape[0], -1).mean(axis=1)


# ------------------------------------------------------------------ Conv4

def conv4(params, x):
    """Conv4: (N, 1, 28, 28) -> logits (N, 5) with a head, else embeddings (N, 64)."""
    for i in range(1, 5):
        x = F.conv2d(x, params[f"conv{i}.weight"], params[f"conv{i}.bias"], padding=1)
        x = F.batch_norm(x, params[f"bn{i}.weight"], params[f"bn{i}.bias"], eps=1e-5)
        x = F.max_pool2d(x.relu(), 2)                  # 28 -> 14 -> 7 -> 3 -> 1
    x = x.reshape(x.shape[0], x.shape[1] * x.shape[2] * x.shape[3])
    if "head.weight" in params:
        x = F.linear(x, params["head.weight"], params["head.bias"])
    return x


# -------------------------------------------------------------- workloads

def maml_sine(problem):
    """grad_theta mean_t L_query_t(theta - alpha grad L_support_t(theta)), tasks batched."""
    h, d = problem.hyper, problem.data
    theta = {k: _tensor(v, requires_grad=True) for k, v in problem.params.items()}
    xs, ys, xq, yq = (_tensor(d[k]) for k in ("support_x", "support_y", "query_x", "query_y"))
    zeros = _zeros_for(theta, xs.shape[0], problem.dtype)
    out = {}

    def step():
        phi = _per_task(theta, zeros)                  # (T, ...) copies of theta
        for _ in range(h["inner_steps"]):
            # tasks are independent, so d(sum_t L_t)/d phi_t = d L_t / d phi_t
            support_loss = per_task_mse(batched_mlp(phi, xs), ys).sum()
            grads = sm.grad(support_loss, list(phi.values()), create_graph=not h["first_order"])
            phi = {k: w - h["alpha"] * g for (k, w), g in zip(phi.items(), grads)}
        meta_loss = per_task_mse(batched_mlp(phi, xq), yq).mean()
        out["grads"] = dict(zip(theta, sm.grad(meta_loss, list(theta.values()))))
        backend.synchronize()

    return Runner(step, lambda: _numpy(out["grads"]))


def reptile_sine(problem):
    """Reptile (Nichol et al. 2018, Algorithm 1): mean_t (phi_t - theta), tasks batched."""
    h, d = problem.hyper, problem.data
    n_tasks = d["support_x"].shape[0]
    # theta repeated per task, (T, ...), as plain data: the inner loop is first order
    theta_tasks = {k: _tensor(np.repeat(v[None], n_tasks, axis=0)) for k, v in problem.params.items()}
    xs, ys = _tensor(d["support_x"]), _tensor(d["support_y"])
    out = {}

    def step():
        phi = {k: sm.tensor(w.data, requires_grad=True) for k, w in theta_tasks.items()}
        for _ in range(h["inner_steps"]):
            loss = per_task_mse(batched_mlp(phi, xs), ys).sum()
            grads = sm.grad(loss, list(phi.values()))
            with sm.no_grad():
                phi = {k: w - h["alpha"] * g for (k, w), g in zip(phi.items(), grads)}
            phi = {k: sm.tensor(w.data, requires_grad=True) for k, w in phi.items()}
        with sm.no_grad():
            out["direction"] = {k: (phi[k] - theta_tasks[k]).mean(axis=0) for k in phi}
        backend.synchronize()

    return Runner(step, lambda: _numpy(out["direction"]))


def maml_conv4(problem):
    """Conv4 MAML meta-gradient; a Python loop over the tasks (no grouped conv yet)."""
    h, d = problem.hyper, problem.data
    theta = {k: _tensor(v, requires_grad=True) for k, v in problem.params.items()}
    n_tasks = d["support_x"].shape[0]
    tasks = [(_tensor(d["support_x"][t]), _labels(d["support_y"][t]),
              _tensor(d["query_x"][t]), _labels(d["query_y"][t])) for t in range(n_tasks)]
    out = {}

    def step():
        total = 0.0
        for xs, ys, xq, yq in tasks:
            phi = theta
            for _ in range(h["inner_steps"]):
                loss = F.cross_entropy(conv4(phi, xs), ys)
                grads = sm.grad(loss, list(phi.values()), create_graph=not h["first_order"])
                phi = {k: w - h["alpha"] * g for (k, w), g in zip(phi.items(), grads)}
            total = total + F.cross_entropy(conv4(phi, xq), yq)
        out["grads"] = dict(zip(theta, sm.grad(total / n_tasks, list(theta.values()))))
        backend.synchronize()

    return Runner(step, lambda: _numpy(out["grads"]))


def protonet(problem):
    """ProtoNet episode (Snell et al. 2017, Eq. 1 prototypes, Eq. 2 distance softmax)."""
    h, d = problem.hyper, problem.data
    params = {k: _tensor(v, requires_grad=True) for k, v in problem.params.items()}
    n_support, n_query = len(d["support_y"]), len(d["query_y"])
    # support and query share one batch (and its batch-norm statistics)
    x = _tensor(np.concatenate([d["support_x"], d["query_x"]]))
    labels = _labels(d["query_y"])
    out = {}

    def step():
        z = conv4(params, x)                                        # (S + Q, dim)
        dim = z.shape[1]
        prototypes = z[:n_support].reshape(h["n_way"], h["k_shot"], dim).mean(axis=1)
        diff = z[n_support:].reshape(n_query, 1, dim) - prototypes.reshape(1, h["n_way"], dim)
        sq_dist = (diff * diff).sum(axis=2)                         # (Q, n_way)
        loss = F.cross_entropy(-sq_dist, labels)
        out["grads"] = dict(zip(params, sm.grad(loss, list(params.values()))))
        backend.synchronize()

    return Runner(step, lambda: _numpy(out["grads"]))
