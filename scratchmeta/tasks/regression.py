"""Few-shot regression task distributions: the MAML sinusoids and any y = f(x).

A task is a function drawn from a distribution p(T); an episode gives K
support points to adapt on and Q query points to evaluate the adapted model
(Finn, Abbeel & Levine 2017, arXiv:1703.03400v3, Sec. 2.1 and Sec. 5.1).

`sample(n_tasks)` returns a dict of backend arrays with a leading task axis:

    support_x (T, K, d_x)   support_y (T, K, d_y)
    query_x   (T, Q, d_x)   query_y   (T, Q, d_y)

plus one array per task parameter (T, ...), e.g. `amplitude` and `phase`.
All sampling happens on the host with one seeded Generator; the arrays
cross to the backend once, at the end.
"""
import math
import numbers

from .. import backend
from ..backend import host
from .seeding import SeededSampler, check_count, dtype_name


def check_range(name, value):
    """A (low, high) pair of finite reals with low <= high, else ValueError."""
    try:
        low, high = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair, got {value!r}") from None
    for v in (low, high):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"{name} must hold finite real numbers, got {value!r}")
    if low > high:
        raise ValueError(f"{name} range ({low}, {high}) is inverted: low must be <= high")
    return float(low), float(high)


def _qualname(fn):
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


class FunctionTasks(SeededSampler):
    """Regression tasks y = fn(x, params) with params ~ param_sampler.

    fn(x, params) -> y: x is a host float64 array (T, M, x_dim), params the
        dict returned by param_sampler; y is (T, M) or (T, M, y_dim).
    param_sampler(rng, n_tasks) -> dict of host arrays, each (n_tasks, ...),
        drawn from the numpy Generator `rng` it is given (use no other
        randomness, or seeding and state_dict cannot reproduce the stream).
    x is uniform on x_range in every one of its x_dim coordinates.

    config() records fn and param_sampler by qualified name only: a
    checkpoint restores the stream with load_state_dict on a sampler built
    from the same callables.
    """

    def __init__(self, fn, param_sampler, k_support=10, k_query=10,
                 x_range=(-5.0, 5.0), x_dim=1, seed=0, dtype=None):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        if not callable(param_sampler):
            raise TypeError(f"param_sampler must be callable, got {param_sampler!r}")
        self.fn, self.param_sampler = fn, param_sampler
        self.k_support = check_count("k_support", k_support)
        self.k_query = check_count("k_query", k_query)
        self.x_range = check_range("x_range", x_range)
        self.x_dim = check_count("x_dim", x_dim)
        self.dtype = dtype_name(dtype)
        super().__init__(seed)

    def config(self):
        return {"fn": _qualname(self.fn), "param_sampler": _qualname(self.param_sampler),
                "k_support": self.k_support, "k_query": self.k_query,
                "x_range": list(self.x_range), "x_dim": self.x_dim,
                "seed": self.seed, "dtype": self.dtype}

    def _sample_params(self, n_tasks):
        params = self.param_sampler(self._rng, n_tasks)
        if not isinstance(params, dict):
            raise ValueError("param_sampler must return a dict of arrays")
        params = {name: host.asarray(value) for name, value in params.items()}
        for name, value in params.items():
            if value.ndim == 0 or value.shape[0] != n_tasks:
                raise ValueError(f"param_sampler returned {name!r} with shape {value.shape}; "
                                 f"its leading axis must be n_tasks={n_tasks}")
        return params

    def _evaluate(self, x, params):
        y = host.asarray(self.fn(x, params), dtype=host.float64)
        if y.ndim == 2:
            y = y[..., None]                                # (T, M) -> (T, M, 1)
        if y.ndim != 3 or y.shape[:2] != x.shape[:2]:
            raise ValueError(f"fn returned shape {y.shape}; expected {x.shape[:2]} "
                             f"or {x.shape[:2]} + (y_dim,)")
        return y

    def sample(self, n_tasks):
        """T tasks, each with K support and Q query points (see module doc)."""
        n_tasks = check_count("n_tasks", n_tasks)
        params = self._sample_params(n_tasks)
        n_points = self.k_support + self.k_query
        # support and query come from the same x distribution: one draw, then split
        x = self._rng.uniform(*self.x_range, size=(n_tasks, n_points, self.x_dim))
        y = self._evaluate(x, params)                       # (T, K+Q, y_dim)
        return self._to_backend(x, y, params)

    def _to_backend(self, x, y, params):
        dtype = backend.resolve_dtype(self.dtype)
        k = self.k_support
        out = {"support_x": x[:, :k], "support_y": y[:, :k],
               "query_x": x[:, k:], "query_y": y[:, k:]}
        out = {name: backend.asarray(a, dtype=dtype) for name, a in out.items()}
        for name, value in params.items():
            # floating parameters follow the float dtype; integer ones stay as they are
            out[name] = backend.asarray(value, dtype=dtype if value.dtype.kind == "f" else None)
        return out


class Sinusoid(FunctionTasks):
    """The sinusoid regression tasks of MAML.

    Finn, Abbeel & Levine 2017, arXiv:1703.03400v3, Sec. 5.1: each task is
    y = A sin(x - phi) with amplitude A ~ U[0.1, 5.0], phase phi ~ U[0, pi],
    and inputs x ~ U[-5.0, 5.0]; K points (the paper's K = 5 or 10) are
    given for adaptation, and the loss is the mean-squared error.

    sample(T) -> support_x, support_y (T, K, 1); query_x, query_y (T, Q, 1);
    amplitude, phase (T,). Per call the draws are, in order: amplitudes,
    phases, then all T*(K+Q) inputs.
    """

    def __init__(self, k_support=10, k_query=10, amplitude=(0.1, 5.0),
                 phase=(0.0, math.pi), x_range=(-5.0, 5.0), seed=0, dtype=None):
        self.amplitude = check_range("amplitude", amplitude)
        self.phase = check_range("phase", phase)
        super().__init__(self._function, self._params, k_support=k_support,
                         k_query=k_query, x_range=x_range, x_dim=1, seed=seed, dtype=dtype)

    def config(self):
        return {"k_support": self.k_support, "k_query": self.k_query,
                "amplitude": list(self.amplitude), "phase": list(self.phase),
                "x_range": list(self.x_range), "seed": self.seed, "dtype": self.dtype}

    def _params(self, rng, n_tasks):
        amplitude = rng.uniform(*self.amplitude, size=n_tasks)   # A ~ U[0.1, 5]
        phase = rng.uniform(*self.phase, size=n_tasks)           # phi ~ U[0, pi]
        return {"amplitude": amplitude, "phase": phase}

    @staticmethod
    def _function(x, params):
        # (T, M, 1) inputs, one (A, phi) per task broadcast over the points
        a = params["amplitude"][:, None, None]
        phi = params["phase"][:, None, None]
        return a * host.sin(x - phi)

    @staticmethod
    def function(amplitude, phase, x):
        """y = A sin(x - phi) on the host, with NumPy broadcasting (for plots).

        Accepts scalars, host arrays or backend arrays; returns a host array.
        """
        a, phi, x = (backend.to_numpy(v) for v in (amplitude, phase, x))
        return a * host.sin(x - phi)
