"""Linear-regression prompts: the task family of Garg et al. 2022.

Garg, Tsipras, Liang & Valiant 2022, arXiv:2208.01066v3, Sec. 3: a prompt is

    P = (x_1, f(x_1), x_2, f(x_2), ..., x_k, f(x_k), x_query)

with f(x) = w.x, w ~ N(0, I_d) and every x ~ N(0, I_d). One sampled prompt
of n points serves as n prompts at once: its prefix with i examples asks for
f(x_{i+1}). In the meta-learning reading, each prompt is one task and its
in-context examples are the support set; pretraining on prompts is
meta-training.

Variants (Sec. 4 and Appendix A of the paper), all flags of the sampler:

    noise_std > 0   noisy linear regression   y = w.x + eps, eps ~ N(0, noise_std^2)
    sparsity = s    sparse linear regression  w has s non-zero N(0, 1) coordinates

The curriculum of the paper (Sec. 3, "Curriculum learning") starts training
on prompts with fewer effective dimensions (coordinates past d_cur of x are
zero) and fewer points, and grows both every `interval` calls to sample():

    curriculum = {"dims":   {"start": 2, "end": 5,  "inc": 1, "interval": 200},
                  "points": {"start": 5, "end": 15, "inc": 2, "interval": 200}}

sample(T) returns backend arrays

    x (T, n, d)   y (T, n)   w (T, d)

where n is the current number of points (n_points without a curriculum).
Noisy prompts also carry f (T, n) = w.x, the labels before the noise: the
target against which an estimator's excess risk is measured.
"""
import numbers

from .. import backend
from ..backend import host
from .seeding import SeededSampler, check_count, dtype_name


def _check_schedule(name, schedule, final):
    """A curriculum entry {"start", "end", "inc", "interval"} with end == final."""
    if not isinstance(schedule, dict) or set(schedule) != {"start", "end", "inc", "interval"}:
        raise ValueError(f"curriculum[{name!r}] must be a dict with keys start, end, inc, "
                         f"interval, got {schedule!r}")
    out = {k: check_count(f"curriculum[{name!r}][{k!r}]", v, minimum=0 if k == "inc" else 1)
           for k, v in schedule.items()}
    if out["start"] > out["end"]:
        raise ValueError(f"curriculum[{name!r}]: start {out['start']} exceeds end {out['end']}")
    if out["end"] != final:
        raise ValueError(f"curriculum[{name!r}]: end must equal the sampler's "
                         f"{'n_dims' if name == 'dims' else 'n_points'} = {final}, got {out['end']}")
    return out


def curriculum_value(schedule, t):
    """min(end, start + inc * floor(t / interval)) after t calls."""
    return min(schedule["end"], schedule["start"] + schedule["inc"] * (t // schedule["interval"]))


class LinearRegressionPrompts(SeededSampler):
    """Random prompts (x_1, w.x_1, ..., x_n, w.x_n), one w per prompt.

    n_dims: d; n_points: points per prompt (the model sees predictions with
    0..n_points-1 in-context examples); noise_std: label noise; sparsity:
    number of non-zero coordinates of w (None: dense); curriculum: None or the
    dict in the module docstring.
    """

    def __init__(self, n_dims=5, n_points=15, noise_std=0.0, sparsity=None,
                 curriculum=None, seed=0, dtype=None):
        self.n_dims = check_count("n_dims", n_dims)
        self.n_points = check_count("n_points", n_points)
        if isinstance(noise_std, bool) or not isinstance(noise_std, numbers.Real) or not noise_std >= 0:
            raise ValueError(f"noise_std must be a real number >= 0, got {noise_std!r}")
        self.noise_std = float(noise_std)
        if sparsity is not None:
            sparsity = check_count("sparsity", sparsity)
            if sparsity > self.n_dims:
                raise ValueError(f"sparsity {sparsity} exceeds n_dims {self.n_dims}")
        self.sparsity = sparsity
        if curriculum is not None:
            if not isinstance(curriculum, dict) or not set(curriculum) <= {"dims", "points"}:
                raise ValueError(f"curriculum must be a dict with keys 'dims' and/or 'points', "
                                 f"got {curriculum!r}")
            curriculum = {name: _check_schedule(name, s, self.n_dims if name == "dims" else self.n_points)
                          for name, s in curriculum.items()}
        self.curriculum = curriculum
        self.dtype = dtype_name(dtype)
        self.t = 0                              # calls to sample(): the curriculum's clock
        super().__init__(seed)

    def config(self):
        return {"n_dims": self.n_dims, "n_points": self.n_points, "noise_std": self.noise_std,
                "sparsity": self.sparsity, "curriculum": self.curriculum,
                "seed": self.seed, "dtype": self.dtype}

    def state_dict(self):
        state = super().state_dict()
        state["t"] = self.t
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.t = int(state.get("t", 0))

    def current(self):
        """(d_cur, n_cur): effective dimension and number of points at this call."""
        c = self.curriculum or {}
        d = curriculum_value(c["dims"], self.t) if "dims" in c else self.n_dims
        n = curriculum_value(c["points"], self.t) if "points" in c else self.n_points
        return d, n

    def normaliser(self):
        """d: Garg et al. report squared error divided by d.

        For dense w, d = E[(w.x)^2] is the error of the zero predictor; for
        s-sparse w the zero predictor scores s / d on this scale.
        """
        return float(self.n_dims)

    def sample(self, n_tasks):
        """T prompts: x (T, n, d), y (T, n), w (T, d) as backend arrays; f (T, n) if noisy."""
        n_tasks = check_count("n_tasks", n_tasks)
        d_cur, n = self.current()
        self.t += 1
        rng, d = self._rng, self.n_dims
        w = rng.standard_normal((n_tasks, d))                       # w ~ N(0, I_d)
        if self.sparsity is not None:
            # keep s random coordinates of each w; zero the rest
            keep = rng.random((n_tasks, d)).argsort(axis=1)[:, :self.sparsity]
            mask = host.zeros((n_tasks, d), dtype=bool)
            host.put_along_axis(mask, keep, True, axis=1)
            w = w * mask
        x = rng.standard_normal((n_tasks, n, d))                    # x ~ N(0, I_d)
        x[:, :, d_cur:] = 0.0                                       # curriculum: d_cur live coordinates
        f = host.einsum("tnd,td->tn", x, w)                         # f(x_i) = w.x_i
        y = f + self.noise_std * rng.standard_normal(f.shape) if self.noise_std else f
        dtype = backend.resolve_dtype(self.dtype)
        batch = {"x": backend.asarray(x, dtype=dtype), "y": backend.asarray(y, dtype=dtype),
                 "w": backend.asarray(w, dtype=dtype)}
        if self.noise_std:
            batch["f"] = backend.asarray(f, dtype=dtype)            # clean targets
        return batch
