"""scratchmeta: meta-learning from scratch, on an autodiff engine of any order.

    import scratchmeta as sm
    x = sm.tensor([1.0, 2.0], requires_grad=True)
    (g,) = sm.grad((x.tanh() ** 2).sum(), x, create_graph=True)

The public engine surface follows PyTorch's names (see docs/engine.md).
"""
from .backend import (get_backend, set_backend, get_default_dtype, set_default_dtype)
from .tensor import (Tensor, tensor, as_tensor, grad, no_grad, enable_grad,
                     is_grad_enabled, use_fast_paths, fast_paths_enabled)
from . import methods, windows, normalization, activations  # noqa: F401  (methods binds Tensor's operators)
from .ops import where, maximum, minimum, clip, sin, cos, log1p, expm1  # noqa: F401
from .checks import (GradcheckError, check_grads, gradcheck, gradgradcheck, hessian, hvp)
from . import functional
from . import functional as F  # noqa: F401  (sm.F shorthand)
from . import fast  # noqa: F401  (registers the speed overlay's entries)
from .backend import xp as _xp


def zeros(*shape, dtype=None, requires_grad=False):
    """A tensor of zeros of the default (or given) dtype."""
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    from .backend import resolve_dtype
    return tensor(_xp.zeros(tuple(shape), dtype=resolve_dtype(dtype)), requires_grad=requires_grad)


def ones(*shape, dtype=None, requires_grad=False):
    """A tensor of ones of the default (or given) dtype."""
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    from .backend import resolve_dtype
    return tensor(_xp.ones(tuple(shape), dtype=resolve_dtype(dtype)), requires_grad=requires_grad)


__version__ = "0.1.0"
__all__ = ["Tensor", "tensor", "as_tensor", "grad", "no_grad", "enable_grad", "is_grad_enabled",
           "set_backend", "get_backend", "set_default_dtype", "get_default_dtype",
           "gradcheck", "gradgradcheck", "check_grads", "hvp", "hessian", "GradcheckError",
           "functional", "F", "zeros", "ones", "use_fast_paths", "fast_paths_enabled",
           "where", "maximum", "minimum", "clip", "sin", "cos", "log1p", "expm1"]
