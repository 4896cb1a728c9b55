"""Implementations of the benchmark workloads, one module per library.

Each module exposes:

    NAME                       label printed in the tables
    available() -> (ok, why)   False with a reason when its package is missing
    maml_sine(problem)         -> Runner
    reptile_sine(problem)      -> Runner
    maml_conv4(problem)        -> Runner
    protonet(problem)          -> Runner
    icl_transformer(problem)   -> Runner
    maml_conv4_api(problem)    -> Runner   (torch_loop and scratchmeta only)
    protonet_omniglot(problem) -> Runner   (torch_loop and scratchmeta only)

A module without a workload's function is left out of that workload's table.

A `Runner` holds `step()`, one timed call that computes the result and waits
for it (block_until_ready / device synchronize), and `result()`, the last
result as a dict name -> float64 NumPy array. Set-up work (tensor
conversion, JAX compilation) happens when the runner is built, not in step().
"""
import importlib
from collections import OrderedDict
from typing import Callable, NamedTuple

# order = column order in the tables; the first available one is the reference
MODULES = OrderedDict([
    ("torch_loop", "peers.torch_loop"),
    ("scratchmeta", "peers.scratchmeta_impl"),
    ("scratchmeta_plain", "peers.scratchmeta_plain"),
    ("torch_func", "peers.torch_func"),
    ("jax", "peers.jax_impl"),
    ("autograd", "peers.autograd_impl"),
])
REFERENCE = "torch_loop"


class Runner(NamedTuple):
    step: Callable[[], None]
    result: Callable[[], dict]


def load(name):
    """Import peer `name`; returns (module or None, reason it is unavailable)."""
    try:
        module = importlib.import_module(MODULES[name])
    except ImportError as e:
        return None, f"import failed: {e}"
    ok, why = module.available()
    return (module, "") if ok else (None, why)
