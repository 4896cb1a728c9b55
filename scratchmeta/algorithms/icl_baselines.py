"""The baselines of Garg et al. 2022 (arXiv:2208.01066v3, Sec. 4), on every prefix at once.

Each function takes a batch of prompts x (T, n, d), y (T, n) and returns
predictions (T, n): entry i predicts y_i from the first i examples
(x_1, y_1, ..., x_i, y_i), i = 0..n-1, exactly the predictions the
transformer makes at its x positions. With no example (i = 0) every
baseline predicts 0.

These are estimators, not models: nothing here is differentiated, so they
run on raw backend arrays (float64) and solve their small d x d systems with
xp.linalg on stacks of matrices (eigh and solve, both batched in NumPy and CuPy).

The prefix sums make every prefix one batched computation:

    G_i = sum_{j<i} x_j x_j^T   (T, n, d, d)      b_i = sum_{j<i} y_j x_j   (T, n, d)
"""
from ..backend import xp


def _as64(x, y):
    x, y = xp.asarray(x, dtype=xp.float64), xp.asarray(y, dtype=xp.float64)
    if x.ndim != 3 or y.shape != x.shape[:2]:
        raise ValueError(f"baselines: expected x (T, n, d) and y (T, n), got shapes {x.shape} and {y.shape}")
    return x, y


def prefix_sums(x, y):
    """G_i = sum_{j<i} x_j x_j^T and b_i = sum_{j<i} y_j x_j (exclusive prefix sums)."""
    x, y = _as64(x, y)
    outer = x[..., :, None] * x[..., None, :]                       # (T, n, d, d)
    G = xp.cumsum(outer, axis=1) - outer                            # exclude point i itself
    yx = y[..., None] * x                                           # (T, n, d)
    b = xp.cumsum(yx, axis=1) - yx
    return G, b


def _predict(x, w):
    """y_hat_i = w_i . x_i for per-prefix weights w (T, n, d)."""
    return xp.sum(w * x, axis=-1)


def least_squares(x, y):
    """Predictions of minimum-norm least squares (see least_squares_weights)."""
    return _predict(_as64(x, y)[0], least_squares_weights(x, y))


def least_squares_weights(x, y):
    """Minimum-norm least squares per prefix: w_i = G_i^+ b_i = X_i^+ y_i, (T, n, d).

    For i >= d (and x in general position) G_i is invertible and this is the
    ordinary solution (X^T X)^{-1} X^T y; for i < d, G_i^+ picks the
    solution of smallest norm. The pseudo-inverse of the symmetric G_i is
    V diag(1/lambda) V^T over its eigenvalues lambda above a tolerance.
    """
    x, y = _as64(x, y)
    G, b = prefix_sums(x, y)
    lam, V = xp.linalg.eigh(G)                                      # (T, n, d), (T, n, d, d)
    tol = lam.max(axis=-1, keepdims=True) * x.shape[-1] * 1e-12     # relative cut-off
    inv = xp.where(lam > tol, 1.0 / xp.where(lam > tol, lam, 1.0), 0.0)
    coef = xp.sum(V * b[..., :, None], axis=-2) * inv               # V^T b / lambda
    return xp.sum(V * coef[..., None, :], axis=-1)                  # V (V^T b / lambda)


def ridge(x, y, lam):
    """Ridge regression: w_i = (G_i + lam I)^{-1} b_i.

    lam: a scalar, or one value per prefix (n,). As lam -> 0 this tends to
    least squares whenever G_i is invertible (i >= d).
    """
    x, y = _as64(x, y)
    G, b = prefix_sums(x, y)
    d = x.shape[-1]
    lam = xp.asarray(lam, dtype=xp.float64).reshape(-1)
    if lam.shape[0] not in (1, x.shape[1]) or bool(xp.any(lam <= 0)):
        raise ValueError(f"ridge: lam must be positive, one value or one per prefix ({x.shape[1]})")
    A = G + lam[:, None, None] * xp.eye(d)                          # (T, n, d, d)
    w = xp.linalg.solve(A, b[..., None])[..., 0]
    return _predict(x, w)


def averaging(x, y):
    """Garg et al.'s averaging estimator: w_i = (1/i) sum_{j<i} y_j x_j."""
    x, y = _as64(x, y)
    _, b = prefix_sums(x, y)
    count = xp.arange(x.shape[1], dtype=xp.float64)                 # i examples before point i
    w = b / xp.maximum(count, 1.0)[None, :, None]
    return _predict(x, w)


def gd_one_step(x, y, eta):
    """One gradient step from w = 0 on L_i(w) = (1/2i) sum_{j<i} (w.x_j - y_j)^2.

    grad L_i(0) = -(1/i) sum_{j<i} y_j x_j, so w_i = eta (1/i) b_i: the
    averaging estimator scaled by the step size eta (a scalar or (n,)).
    """
    eta = xp.asarray(eta, dtype=xp.float64).reshape(1, -1)
    return eta * averaging(x, y)


def knn(x, y, n_neighbors=3):
    """Mean label of the n_neighbors nearest earlier x_j (Euclidean), fewer if i < n_neighbors."""
    x, y = _as64(x, y)
    T, n, _ = x.shape
    sq = xp.sum(x * x, axis=-1)
    dist = sq[:, :, None] - 2 * (x @ x.transpose(0, 2, 1)) + sq[:, None, :]   # (T, n, n)
    later = xp.triu(xp.ones((n, n), dtype=bool))                    # j >= i: not yet seen
    dist = xp.where(later[None], xp.inf, dist)
    k = min(n_neighbors, n)
    nearest = xp.argsort(dist, axis=-1)[..., :k]                    # (T, n, k)
    labels = xp.take_along_axis(xp.broadcast_to(y[:, None, :], (T, n, n)), nearest, axis=-1)
    seen = xp.arange(k)[None, None, :] < xp.arange(n)[None, :, None]          # rank < i
    count = xp.maximum(xp.sum(seen, axis=-1), 1)
    return xp.sum(xp.where(seen, labels, 0.0), axis=-1) / count


def tune_ridge(x, y, grid):
    """Per prefix, the lam in `grid` with the least squared error on the prompts (x, y)."""
    errors = xp.stack([xp.mean((ridge(x, y, lam) - xp.asarray(y, dtype=xp.float64)) ** 2, axis=0)
                       for lam in grid])                            # (len(grid), n)
    return xp.asarray(grid, dtype=xp.float64)[xp.argmin(errors, axis=0)]


def tune_gd_step(x, y):
    """Per prefix, the least-squares step size eta = <p, y> / <p, p>, p the averaging prediction."""
    x, y = _as64(x, y)
    p = averaging(x, y)
    num, den = xp.sum(p * y, axis=0), xp.sum(p * p, axis=0)
    return xp.where(den > 0, num / xp.where(den > 0, den, 1.0), 0.0)


BASELINES = ("least_squares", "ridge", "knn", "averaging", "gd_one_step")
