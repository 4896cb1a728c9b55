"""Double backward: a second derivative and a Hessian-vector product, checked by finite differences.

Shows the two facts MAML's meta-gradient rests on (Finn et al. 2017,
arXiv:1703.03400v3, the Hessian term of the meta-gradient of Eq. 1):

1. grad(..., create_graph=True) returns a gradient that is itself a
   differentiable function of the input, so differentiating it again gives
   the second derivative. For tanh, d2/dx2 tanh(x) = -2 tanh(x) (1 - tanh(x)^2).
2. Differentiating <grad f(x), v> once more gives the Hessian-vector product
   H v without ever forming H. For f(x) = x0^2 x1 + x1^3 at x = (1, 2) and
   v = (1, -1): grad f = (4, 13), H = [[4, 2], [2, 12]], H v = (2, -10).

Both are compared with central finite differences. docs/engine.md walks
through the same numbers against the code that computes them.

    python examples/01_double_backward.py
"""
import numpy as np

import scratchmeta as sm


def second_derivative_of_tanh(x0):
    """d2/dx2 tanh at x0 by double backward, and its closed form."""
    x = sm.tensor(x0, requires_grad=True)
    y = x.tanh()
    (dy,) = sm.grad(y, x, create_graph=True)    # 1 - tanh^2, recorded as a graph
    (d2y,) = sm.grad(dy, x)                      # differentiate the gradient
    t = np.tanh(x0)
    return d2y.item(), -2 * t * (1 - t * t)


def f(x):
    """f(x) = x0^2 x1 + x1^3."""
    return x[0] ** 2 * x[1] + x[1] ** 3


def gradient(x):
    x = sm.tensor(x, requires_grad=True)
    (g,) = sm.grad(f(x), x)
    return g.numpy()


def main(x0=0.5, point=(1.0, 2.0), vector=(1.0, -1.0), eps=1e-5, verbose=True):
    """Compute both quantities, check them by finite differences, print a few numbers."""
    d2, closed_form = second_derivative_of_tanh(x0)
    # central difference of the first derivative 1 - tanh^2: error O(eps^2)
    d1 = lambda z: 1 - np.tanh(z) ** 2
    d2_fd = (d1(x0 + eps) - d1(x0 - eps)) / (2 * eps)

    x, v = np.asarray(point), np.asarray(vector)
    _, hv = sm.hvp(f, sm.tensor(x), sm.tensor(v))
    hv = hv.numpy()
    # H v = d/dt grad f(x + t v) at t = 0, by central differences
    hv_fd = (gradient(x + eps * v) - gradient(x - eps * v)) / (2 * eps)

    assert np.isclose(d2, closed_form, rtol=1e-12), (d2, closed_form)
    assert np.isclose(d2, d2_fd, rtol=1e-6), (d2, d2_fd)
    assert np.allclose(hv, hv_fd, rtol=1e-6), (hv, hv_fd)
    if verbose:
        print(f"d2/dx2 tanh({x0}):  double backward {d2:.12f}")
        print(f"                    closed form     {closed_form:.12f}")
        print(f"                    finite diff.    {d2_fd:.12f}")
        print(f"H v at x={tuple(point)}, v={tuple(vector)}: double backward {hv}, finite diff. {hv_fd}")
    return {"d2_tanh": d2, "d2_tanh_closed_form": closed_form, "d2_tanh_fd": d2_fd,
            "hvp": hv, "hvp_fd": hv_fd}


if __name__ == "__main__":
    import argparse
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()   # --help only
    main()
