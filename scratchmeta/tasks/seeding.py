"""Seeded host-side samplers whose random stream can be checkpointed.

Every task sampler draws from one `numpy.random.Generator` on the host
(PCG64, seeded once at construction) and moves its result to the active
backend only at the end of `sample()`. The generator's state is the whole
of a sampler's mutable state, so

    state = sampler.state_dict()        # JSON-serialisable
    ...                                  # sample more
    sampler.load_state_dict(state)       # the same stream again

restores the exact sequence of tasks after a checkpoint.
"""
import numbers

from .. import backend
from ..backend import host


def check_count(name, value, minimum=1):
    """`value` as an int >= minimum, or a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_seed(seed):
    """A seed is None (fresh OS entropy, not reproducible) or an int >= 0."""
    return None if seed is None else check_count("seed", seed, minimum=0)


def dtype_name(dtype):
    """A floating dtype argument as a JSON-friendly name (None stays None)."""
    if dtype is None:
        return None
    resolved = backend.resolve_dtype(dtype)
    if resolved.kind != "f":
        raise ValueError(f"dtype must be a floating dtype, got {dtype!r}")
    return resolved.name


class SeededSampler:
    """Base of every sampler: one host Generator, checkpointable as JSON."""

    def __init__(self, seed):
        self.seed = check_seed(seed)
        self._rng = host.random.default_rng(self.seed)

    def state_dict(self):
        """The RNG state as a plain dict of str/int (json.dumps-able)."""
        # bit_generator.state returns a fresh dict of Python ints each call
        return {"rng": self._rng.bit_generator.state}

    def load_state_dict(self, state):
        """Restore a state from `state_dict()` (also after a JSON round trip)."""
        if not isinstance(state, dict) or "rng" not in state:
            raise ValueError("state must be a dict from state_dict() with key 'rng'")
        rng_state = state["rng"]
        expected = type(self._rng.bit_generator).__name__
        if not isinstance(rng_state, dict) or rng_state.get("bit_generator") != expected:
            raise ValueError(f"state['rng'] must be a {expected} bit-generator state")
        self._rng.bit_generator.state = rng_state

    def config(self):
        """Constructor arguments as a JSON-serialisable dict."""
        raise NotImplementedError
