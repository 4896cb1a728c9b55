"""Every primitive of the engine, to second order (third on a subset), against finite differences.

OP_TABLE has one row per primitive (and per contract entry built on one): the
function, a Hypothesis strategy for its input shapes and static arguments
(size-1 and broadcast axes, 0-d where it makes sense), and the safe domain of
each input (positive for log, away from 0 for abs/relu and divisors, distinct
entries for max). One parametrized test walks the table with
`sm.check_grads(fn, args, order=2)`; test_gpu.py and test_backend.py reuse
the rows with fixed shapes (`Spec.example`).
"""
import functools
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import scratchmeta as sm
from scratchmeta import activations, backend, normalization, ops, tensor, windows
from scratchmeta.tensor import Primitive, _toposort

F = sm.functional
MAX_SIDE = 3


def examples(n):
    """n Hypothesis examples; HYPOTHESIS_PROFILE=thorough draws eight times as many."""
    return n * 8 if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else n


# ---------------------------------------------------------------------------
# values: each input has a domain that keeps it away from non-differentiable points
# ---------------------------------------------------------------------------
def values(shape, domain="real"):
    """A strategy for a float64 host array of `shape` inside `domain`."""
    n = int(np.prod(shape, dtype=int))
    if domain == "real":
        elements = st.floats(-2.0, 2.0, allow_subnormal=False)
        return hnp.arrays(np.float64, shape, elements=elements)
    if domain == "positive":                          # log, sqrt, pow's base
        return hnp.arrays(np.float64, shape, elements=st.floats(0.3, 2.5))
    if domain == "away0":                             # abs, relu, divisors: |x| >= 0.2
        mags = hnp.arrays(np.float64, shape, elements=st.floats(0.2, 2.0))
        signs = hnp.arrays(np.bool_, shape)
        return st.tuples(mags, signs).map(lambda ms: np.where(ms[1], ms[0], -ms[0]))
    if domain == "away1":                             # clip against bounds near +-1
        mags = hnp.arrays(np.float64, shape, elements=st.one_of(st.floats(0.2, 0.8),
                                                                 st.floats(1.2, 2.0)))
        signs = hnp.arrays(np.bool_, shape)
        return st.tuples(mags, signs).map(lambda ms: np.where(ms[1], ms[0], -ms[0]))
    if domain == "distinct":                          # max: every pair 0.3 apart, no ties
        perm = st.permutations(range(n))
        jitter = hnp.arrays(np.float64, (n,), elements=st.floats(-0.1, 0.1))
        return st.tuples(perm, jitter).map(
            lambda pj: ((np.asarray(pj[0], dtype=np.float64) - n / 2) * 0.4 + pj[1]).reshape(shape))
    raise ValueError(domain)


class Spec:
    """One row: fn(*tensors, **kw), a strategy drawing (shapes, kw), input domains.

    `example` is a fixed (shapes, kw) for the non-Hypothesis backend tests.
    """

    def __init__(self, name, fn, shapes, domains="real", example=None):
        self.name, self.fn, self.shapes, self.example = name, fn, shapes, example
        self.domains = domains

    def _domain(self, i):
        return self.domains if isinstance(self.domains, str) else self.domains[i]

    def inputs(self):
        """Strategy: (host arrays, static kw)."""
        def draw_values(shapes_kw):
            shapes, kw = shapes_kw
            arrays = [values(s, self._domain(i)) for i, s in enumerate(shapes)]
            return st.tuples(st.tuples(*arrays), st.just(kw))
        return self.shapes.flatmap(draw_values).map(lambda ak: (list(ak[0]), ak[1]))

    def sample(self, seed=0):
        """Fixed host inputs for `example`: the domains honoured, drawn with NumPy."""
        rng = np.random.default_rng(seed)
        shapes, kw = self.example
        out = []
        for i, s in enumerate(shapes):
            d = self._domain(i)
            if d == "real":
                a = rng.uniform(-2, 2, s)
            elif d == "positive":
                a = rng.uniform(0.3, 2.5, s)
            elif d == "away0":
                a = rng.uniform(0.2, 2.0, s) * rng.choice([-1.0, 1.0], s)
            elif d == "away1":
                a = rng.choice([0.5, 1.6], s) * rng.choice([-1.0, 1.0], s)
            else:
                n = int(np.prod(s, dtype=int))
                a = ((rng.permutation(n) - n / 2) * 0.4 + rng.uniform(-0.1, 0.1, n)).reshape(s)
            out.append(np.asarray(a, dtype=np.float64))
        return out, kw

    def bind(self, kw):
        return functools.partial(self.fn, **kw) if kw else self.fn

    def __repr__(self):
        return self.name


def device(arrays):
    """Host arrays -> arrays of the active backend (the explicit transfer)."""
    return [backend.asarray(a) for a in arrays]


# ---------------------------------------------------------------------------
# shape strategies, each drawing (tuple of input shapes, static kwargs)
# ---------------------------------------------------------------------------
def _shape(min_dims=0, max_dims=3):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=MAX_SIDE)


def unary(min_dims=0, max_dims=3):
    return _shape(min_dims, max_dims).map(lambda s: ((s,), {}))


def broadcast_pair():
    """Two shapes that broadcast, size-1 axes and 0-d included."""
    return hnp.mutually_broadcastable_shapes(
        num_shapes=2, min_dims=0, max_dims=3, min_side=1, max_side=MAX_SIDE).map(
            lambda b: (tuple(b.input_shapes), {}))


def broadcast_triple():
    return hnp.mutually_broadcastable_shapes(
        num_shapes=3, min_dims=0, max_dims=3, min_side=1, max_side=MAX_SIDE).map(
            lambda b: (tuple(b.input_shapes), {}))


@st.composite
def matmul_shapes(draw):
    """1-D @ 1-D, 1-D @ N-D, N-D @ 1-D and batched with broadcast batch axes."""
    n, k, m = (draw(st.integers(1, MAX_SIDE)) for _ in range(3))
    batch = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2,
                                                   min_side=1, max_side=2)).input_shapes
    kind = draw(st.sampled_from(["vv", "vm", "mv", "mm"]))
    a = (k,) if kind in ("vv", "vm") else batch[0] + (n, k)
    b = (k,) if kind in ("vv", "mv") else batch[1] + (k, m)
    return (a, b), {}


@st.composite
def reduction(draw, min_dims=0):
    """A shape with an axis argument: None, one (negative too) or a tuple; keepdims."""
    shape = draw(_shape(min_dims))
    nd = len(shape)
    choices = [st.none()]
    if nd:
        choices.append(st.integers(-nd, nd - 1))
        choices.append(st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd,
                                unique=True).map(tuple))
    axis = draw(st.one_of(*choices))
    return (shape,), {"axis": axis, "keepdims": draw(st.booleans())}


@st.composite
def reshape_shapes(draw):
    """A shape and a target of the same size: its sides permuted, a 1 inserted, a -1."""
    shape = draw(_shape())
    target = list(draw(st.permutations(list(shape))))
    if draw(st.booleans()):
        target.insert(draw(st.integers(0, len(target))), 1)
    if target and draw(st.booleans()):
        target[draw(st.integers(0, len(target) - 1))] = -1
    return (shape,), {"shape": tuple(target)}


@st.composite
def transpose_shapes(draw):
    shape = draw(_shape(min_dims=1))
    axes = draw(st.one_of(st.none(), st.permutations(range(len(shape))).map(tuple)))
    return (shape,), {"axes": axes}


@st.composite
def basic_index_shapes(draw):
    """Slices (negative steps too), integers, None and Ellipsis."""
    shape = draw(_shape(min_dims=1))
    index = draw(hnp.basic_indices(shape, min_dims=0, allow_newaxis=True, allow_ellipsis=True))
    return (shape,), {"index": index}


@st.composite
def int_array_index_shapes(draw):
    """Integer-array indices (NumPy advanced indexing); repeats are common at side <= 3."""
    shape = draw(_shape(min_dims=1))
    index = draw(hnp.integer_array_indices(
        shape, result_shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=4)))
    return (shape,), {"index": index}


@st.composite
def bool_index_shapes(draw):
    """A boolean mask over the leading axes (possibly all of them, possibly all False)."""
    shape = draw(_shape(min_dims=1))
    k = draw(st.integers(1, len(shape)))
    mask = draw(hnp.arrays(np.bool_, shape[:k]))
    return (shape,), {"mask": mask}


@st.composite
def broadcast_to_shapes(draw):
    """A target shape and a source that stretches to it: fewer axes, some of size 1."""
    target = draw(_shape())
    k = draw(st.integers(0, len(target)))
    source = tuple(1 if draw(st.booleans()) else side for side in target[len(target) - k:])
    return (source,), {"shape": target}


@st.composite
def concatenate_shapes(draw):
    base = list(draw(_shape(min_dims=1)))
    axis = draw(st.integers(-len(base), len(base) - 1))
    count = draw(st.integers(1, 3))
    shapes = []
    for _ in range(count):
        s = list(base)
        s[axis] = draw(st.integers(1, MAX_SIDE))
        shapes.append(tuple(s))
    return tuple(shapes), {"axis": axis}


@st.composite
def stack_shapes(draw):
    shape = draw(_shape())
    axis = draw(st.integers(-len(shape) - 1, len(shape)))
    count = draw(st.integers(1, 3))
    return (shape,) * count, {"axis": axis}


@st.composite
def where_shapes(draw):
    """cond, x and y of mutually broadcastable shapes; cond drawn as a bool array."""
    b = draw(hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=3,
                                               min_side=1, max_side=MAX_SIDE))
    cond_shape, x_shape, y_shape = b.input_shapes
    return (x_shape, y_shape), {"cond": draw(hnp.arrays(np.bool_, cond_shape))}


@st.composite
def window_shapes(draw, adjoint=False, at=-2):
    """(N, C, H, W) or (T, N, C, H, W) with a window that fits; stride 1-2, padding 0-1.

    at=-3 puts the window axes before C (conv2d's batched im2col layout)."""
    lead = draw(st.lists(st.integers(1, 2), min_size=1, max_size=2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride, padding = draw(st.integers(1, 2)), draw(st.integers(0, 1))
    H = draw(st.integers(max(1, kh - 2 * padding), 5))
    W = draw(st.integers(max(1, kw - 2 * padding), 5))
    C = draw(st.integers(1, 2))
    kw_args = {"kh": kh, "kw": kw, "stride": stride, "padding": padding, "at": at}
    if not adjoint:
        return (tuple(lead) + (C, H, W),), kw_args
    oh = (H + 2 * padding - kh) // stride + 1
    ow = (W + 2 * padding - kw) // stride + 1
    cols = (C, kh, kw, oh, ow) if at == -2 else (kh, kw, C, oh, ow)
    return (tuple(lead) + cols,), {"size": (H, W), "stride": stride, "padding": padding,
                                   "at": at}


# ---------------------------------------------------------------------------
# functions of the rows: static arguments arrive as keywords
# ---------------------------------------------------------------------------
def _getitem_int(x, index):
    return x[tuple(backend.asarray(i) for i in index)]


def _getitem_int_repeats(x):
    # the same rows gathered several times: the adjoint must add, not overwrite
    last = x.shape[0] - 1
    return x[backend.asarray([0, last, 0, 0, last])]


def _getitem_int_tensor(x):
    # an integer Tensor as the index, two axes, repeated pairs
    rows = sm.tensor([0, x.shape[0] - 1, 0])
    cols = sm.tensor([x.shape[1] - 1, 0, x.shape[1] - 1])
    return x[rows, cols]


def _getitem_bool(x, mask):
    return x[backend.asarray(mask)]


def _where(x, y, cond):
    return F.where(backend.asarray(cond), x, y)


def _max(x, axis=None, keepdims=False):
    return x.max(axis=axis, keepdims=keepdims)


def _min(x, axis=None, keepdims=False):
    return x.min(axis=axis, keepdims=keepdims)


def _sum(x, axis=None, keepdims=False):
    return x.sum(axis=axis, keepdims=keepdims)


def _mean(x, axis=None, keepdims=False):
    return x.mean(axis=axis, keepdims=keepdims)


def _var(x, axis=None, keepdims=False):
    return x.var(axis=axis, keepdims=keepdims)


def _transpose(x, axes):
    return x.transpose() if axes is None else x.transpose(*axes)


OP_TABLE = [
    # arithmetic, with NumPy broadcasting
    Spec("add", lambda x, y: x + y, broadcast_pair(), example=([(2, 1, 3), (4, 1)], {})),
    Spec("add_scalar", lambda x: 1.5 + x, unary(), example=([(2, 3)], {})),
    Spec("sub", lambda x, y: x - y, broadcast_pair(), example=([(3, 1), (1, 4)], {})),
    Spec("rsub_scalar", lambda x: 2.0 - x, unary(), example=([(3,)], {})),
    Spec("mul", lambda x, y: x * y, broadcast_pair(), example=([(2, 3), (3,)], {})),
    Spec("div", lambda x, y: x / y, broadcast_pair(), domains=("real", "away0"),
         example=([(2, 3), (2, 1)], {})),
    Spec("rdiv_scalar", lambda x: 1.0 / x, unary(), domains="away0", example=([(4,)], {})),
    Spec("neg", lambda x: -x, unary(), example=([(2, 2)], {})),
    Spec("pow_tensor", lambda x, y: x ** y, broadcast_pair(), domains=("positive", "real"),
         example=([(2, 3), (3,)], {})),
    Spec("pow_const_int", lambda x: x ** 3, unary(), example=([(2, 3)], {})),
    Spec("pow_const_frac", lambda x: x ** -1.5, unary(), domains="positive",
         example=([(3,)], {})),
    Spec("rpow_const", lambda x: 2.0 ** x, unary(), example=([(2, 2)], {})),
    Spec("matmul", lambda a, b: a @ b, matmul_shapes(), example=([(2, 1, 2, 3), (3, 3, 2)], {})),
    # reductions
    Spec("sum", _sum, reduction(), example=([(2, 3, 2)], {"axis": (0, 2), "keepdims": False})),
    Spec("mean", _mean, reduction(), example=([(2, 3)], {"axis": -1, "keepdims": True})),
    Spec("var", _var, reduction(), example=([(3, 2)], {"axis": 0, "keepdims": False})),
    Spec("max", _max, reduction(), domains="distinct",
         example=([(2, 3, 2)], {"axis": 1, "keepdims": True})),
    Spec("min", _min, reduction(), domains="distinct",
         example=([(3, 2)], {"axis": None, "keepdims": False})),
    # shape
    Spec("reshape", lambda x, shape: x.reshape(*shape), reshape_shapes(),
         example=([(2, 3)], {"shape": (3, -1)})),
    Spec("transpose", _transpose, transpose_shapes(),
         example=([(2, 3, 2)], {"axes": (1, 2, 0)})),
    Spec("T", lambda x: x.T, unary(min_dims=1), example=([(2, 3)], {})),
    Spec("mT", lambda x: x.mT, unary(min_dims=2), example=([(2, 2, 3)], {})),
    Spec("broadcast_to", lambda x, shape: x.broadcast_to(shape), broadcast_to_shapes(),
         example=([(3, 1)], {"shape": (2, 3, 4)})),
    Spec("getitem_basic", lambda x, index: x[index], basic_index_shapes(),
         example=([(3, 4)], {"index": (slice(None, None, -2), None, 1)})),
    Spec("getitem_int_array", _getitem_int, int_array_index_shapes(),
         example=([(3, 2)], {"index": (np.array([[0, 2], [2, 2]]),)})),
    Spec("getitem_int_repeats", _getitem_int_repeats, unary(min_dims=1),
         example=([(3, 2)], {})),
    Spec("getitem_int_tensor", _getitem_int_tensor, unary(min_dims=2, max_dims=3),
         example=([(3, 2, 2)], {})),
    Spec("getitem_bool", _getitem_bool, bool_index_shapes(),
         example=([(3, 2)], {"mask": np.array([True, False, True])})),
    Spec("concatenate", lambda *xs, axis: F.concatenate(xs, axis=axis), concatenate_shapes(),
         example=([(2, 1), (2, 3)], {"axis": 1})),
    Spec("stack", lambda *xs, axis: F.stack(xs, axis=axis), stack_shapes(),
         example=([(2, 3), (2, 3)], {"axis": -1})),
    Spec("where", _where, where_shapes(),
         example=([(2, 3), (3,)], {"cond": np.array([True, False, True])})),
    # elementwise
    Spec("exp", lambda x: x.exp(), unary(), example=([(2, 3)], {})),
    Spec("log", lambda x: x.log(), unary(), domains="positive", example=([(2, 3)], {})),
    Spec("sqrt", lambda x: x.sqrt(), unary(), domains="positive", example=([(2, 3)], {})),
    Spec("abs", lambda x: x.abs(), unary(), domains="away0", example=([(2, 3)], {})),
    Spec("relu", lambda x: x.relu(), unary(), domains="away0", example=([(2, 3)], {})),
    Spec("tanh", lambda x: x.tanh(), unary(), example=([(2, 3)], {})),
    Spec("sigmoid", lambda x: x.sigmoid(), unary(), example=([(2, 3)], {})),
    Spec("softplus", lambda x: F.softplus(x), unary(), example=([(2, 3)], {})),
    Spec("log1p", lambda x: x.log1p(), unary(), domains="positive", example=([(2, 3)], {})),
    Spec("expm1", lambda x: x.expm1(), unary(), example=([(2, 3)], {})),
    Spec("sin", lambda x: x.sin(), unary(), example=([(2, 3)], {})),
    Spec("cos", lambda x: x.cos(), unary(), example=([(2, 3)], {})),
    # maximum, minimum, clip: the second input scaled into [-0.1, 0.1] and the first at
    # least 0.2 from it (domain away0), so no finite difference straddles a kink
    Spec("maximum", lambda x, y: sm.maximum(x, 0.05 * y), broadcast_pair(),
         domains=("away0", "real"), example=([(2, 3), (3,)], {})),
    Spec("minimum", lambda x, y: sm.minimum(x, 0.05 * y), broadcast_pair(),
         domains=("away0", "real"), example=([(2, 1), (1, 3)], {})),
    Spec("clip", lambda x, lo, hi: sm.clip(x, 0.05 * lo - 1, 0.05 * hi + 1), broadcast_triple(),
         domains=("away1", "real", "real"), example=([(2, 3), (3,), (2, 1)], {})),
    # a cast (float64 -> float64 here; float32 round trips are in test_engine.py,
    # since finite differences cannot resolve float32 rounding)
    Spec("astype", lambda x: x.astype("float64") * 2.0, unary(), example=([(2, 3)], {})),
    # sliding windows (the primitives under conv2d and max_pool2d)
    Spec("unfold", lambda x, **kw: windows.unfold(x, **kw), window_shapes(),
         example=([(1, 2, 4, 4)], {"kh": 3, "kw": 2, "stride": 2, "padding": 1})),
    Spec("fold", lambda c, **kw: windows.fold(c, **kw), window_shapes(adjoint=True),
         example=([(1, 2, 2, 2, 4, 4)], {"size": (3, 3), "stride": 1, "padding": 1})),
    Spec("unfold_at3", lambda x, **kw: windows.unfold(x, **kw), window_shapes(at=-3),
         example=([(1, 2, 4, 4)], {"kh": 3, "kw": 2, "stride": 2, "padding": 1, "at": -3})),
    Spec("fold_at3", lambda c, **kw: windows.fold(c, **kw), window_shapes(adjoint=True, at=-3),
         example=([(1, 2, 2, 2, 4, 4)], {"size": (3, 3), "stride": 1, "padding": 1, "at": -3})),
]

# Third order on a representative subset: products, quotients, matmul,
# transcendental functions, a reduction and the scatter-add adjoint of indexing.
ORDER3 = ["mul", "div", "pow_tensor", "matmul", "max", "getitem_int_array",
          "exp", "log", "tanh", "sigmoid", "sqrt", "softplus", "sin"]

_BY_NAME = {s.name: s for s in OP_TABLE}


def test_table_names_are_unique():
    assert len(_BY_NAME) == len(OP_TABLE)
    assert set(ORDER3) <= set(_BY_NAME)


def _primitives_in_graphs(spec):
    """Names of the primitives in a row's forward graph and its two recorded backward graphs."""
    arrays, kw = spec.sample()
    xs = [sm.tensor(a, requires_grad=True) for a in device(arrays)]
    y = spec.bind(kw)(*xs)
    seen = list(_toposort((y,)))
    # probes that require grad, as in check_grads: VJPs of VJPs then enter the graphs
    v = sm.ones(*y.shape, requires_grad=True)
    gs = [g for g in sm.grad(y, xs, grad_outputs=v, create_graph=True, allow_unused=True)
          if g is not None and g.requires_grad]
    seen += _toposort(gs)
    if gs:
        us = [sm.ones(*g.shape, requires_grad=True) for g in gs]
        hs = sm.grad(gs, xs + [v], grad_outputs=us, create_graph=True, allow_unused=True)
        seen += _toposort([h for h in hs if h is not None and h.requires_grad])
    return {t._op.name for t in seen if t._op is not None}


def test_every_primitive_is_exercised_by_the_tables():
    """A new primitive in ops.py needs a row here (or must appear in some row's graphs,
    forward or backward, as scatter_add does for getitem)."""
    from test_functional import FN_TABLE
    primitives = {v.name for module in (tensor, ops, windows, normalization, activations)
                  for v in vars(module).values() if isinstance(v, Primitive)}
    covered = set()
    for spec in OP_TABLE + FN_TABLE:
        covered |= _primitives_in_graphs(spec)
    assert primitives - covered == set(), "primitives without a row in OP_TABLE/FN_TABLE"


@pytest.mark.parametrize("spec", OP_TABLE, ids=lambda s: s.name)
@settings(max_examples=examples(25))
@given(data=st.data())
def test_op_grads(spec, data):
    arrays, kw = data.draw(spec.inputs(), label="inputs")
    assert sm.check_grads(spec.bind(kw), device(arrays), order=2, name=spec.name)


@pytest.mark.parametrize("spec", [_BY_NAME[n] for n in ORDER3], ids=lambda s: s.name)
@settings(max_examples=examples(8))
@given(data=st.data())
def test_op_grads_order3(spec, data):
    arrays, kw = data.draw(spec.inputs(), label="inputs")
    assert sm.check_grads(spec.bind(kw), device(arrays), order=3, name=spec.name)


@pytest.mark.parametrize("spec", OP_TABLE, ids=lambda s: s.name)
def test_op_example(spec):
    """The fixed example of each row: the value matches NumPy, derivatives to order 2."""
    arrays, kw = spec.sample()
    assert sm.check_grads(spec.bind(kw), device(arrays), order=2, name=spec.name)


# ---------------------------------------------------------------------------
# forward values against NumPy itself (the derivative checks trust the forward)
# ---------------------------------------------------------------------------
def _np_reference(name, arrays, kw):
    x = arrays[0]
    table = {
        "add": lambda: arrays[0] + arrays[1],
        "mul": lambda: arrays[0] * arrays[1],
        "div": lambda: arrays[0] / arrays[1],
        "pow_tensor": lambda: arrays[0] ** arrays[1],
        "matmul": lambda: arrays[0] @ arrays[1],
        "sum": lambda: np.sum(x, **kw),
        "max": lambda: np.max(x, **kw),
        "getitem_int_array": lambda: x[kw["index"]],
        "getitem_bool": lambda: x[kw["mask"]],
        "where": lambda: np.where(kw["cond"], arrays[0], arrays[1]),
        "sigmoid": lambda: 1 / (1 + np.exp(-x)),
        "tanh": lambda: np.tanh(x),
        "softplus": lambda: np.log1p(np.exp(x)),
        "log1p": lambda: np.log1p(x),
        "expm1": lambda: np.expm1(x),
        "sin": lambda: np.sin(x),
        "cos": lambda: np.cos(x),
        "maximum": lambda: np.maximum(x, 0.05 * arrays[1]),
        "minimum": lambda: np.minimum(x, 0.05 * arrays[1]),
        "clip": lambda: np.clip(x, 0.05 * arrays[1] - 1, 0.05 * arrays[2] + 1),
    }
    return table[name]()


@pytest.mark.parametrize("name", ["add", "mul", "div", "pow_tensor", "matmul", "sum", "max",
                                  "getitem_int_array", "getitem_bool", "where", "sigmoid",
                                  "tanh", "softplus", "log1p", "expm1", "sin", "cos", "maximum",
                                  "minimum", "clip"])
def test_forward_matches_numpy(name):
    spec = _BY_NAME[name]
    arrays, kw = spec.sample(seed=3)
    out = spec.bind(kw)(*[sm.tensor(a) for a in device(arrays)])
    np.testing.assert_allclose(out.numpy(), _np_reference(name, arrays, kw), rtol=1e-12)


def test_scatter_add_accumulates_repeated_indices():
    """The adjoint of x[[0, 2, 0, 0, 2]] adds every repeat: row 0 gets 3 g, row 2 gets 2 g."""
    x = sm.tensor(np.arange(6.0).reshape(3, 2), requires_grad=True)
    y = _getitem_int_repeats(x)
    (g,) = sm.grad(y.sum(), x)
    np.testing.assert_array_equal(g.numpy(), [[3, 3], [0, 0], [2, 2]])


def test_sigmoid_is_stable_for_large_inputs():
    x = sm.tensor([-800.0, -30.0, 0.0, 30.0, 800.0], requires_grad=True)
    y = x.sigmoid()
    (g,) = sm.grad(y.sum(), x)
    assert np.all(np.isfinite(y.numpy())) and np.all(np.isfinite(g.numpy()))
    np.testing.assert_allclose(y.numpy()[[0, 2, 4]], [0.0, 0.5, 1.0])


# ---------------------------------------------------------------------------
# x ** n at x = 0: every derivative exact (the zero exponent masked, as PyTorch does)
# ---------------------------------------------------------------------------
def _falling(n, k):
    """n (n - 1) ... (n - k + 1): the k-th derivative of x^n is this times x^(n - k)."""
    out = 1.0
    for i in range(k):
        out *= n - i
    return out


@pytest.mark.filterwarnings("ignore:divide by zero encountered in power:RuntimeWarning")
@pytest.mark.parametrize("fast_on", [False, True])
@pytest.mark.parametrize("n", [1, 2, 3, 2.0, 3.0, 2.5])
def test_derivatives_of_x_to_the_n_at_zero_are_exact(n, fast_on):
    """d^k/dx^k x^n at x = 0 for k = 1 .. floor(n) + 2: n! at k = n (integer n),
    0 elsewhere; before the fix the order n + 1 was 0 * inf = NaN."""
    sm.use_fast_paths(fast_on)
    x = sm.tensor([0.0, 0.5], requires_grad=True)
    y = (x ** n).sum()
    for k in range(1, int(n) + 3):
        (y,) = sm.grad(y, x, create_graph=True)
        at0, at_half = y.numpy()
        expect0 = _falling(n, k) if k == n else 0.0     # x^(n-k) at 0: 1 if k == n, 0 if k < n
        if k > n and n != int(n):                        # a fractional power's k > n: x^(negative) at 0
            assert not np.isfinite(at0)
        else:
            assert at0 == expect0, (n, k, at0)
        np.testing.assert_allclose(at_half, _falling(n, k) * 0.5 ** (n - k), rtol=1e-12)
        y = y.sum()


def test_relu_squared_has_exact_derivatives_where_clipped():
    x = sm.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    (g,) = sm.grad((x.relu() ** 2).sum(), x, create_graph=True)
    (h,) = sm.grad(g.sum(), x, create_graph=True)
    (t,) = sm.grad(h.sum(), x)
    np.testing.assert_array_equal(g.numpy(), [0.0, 0.0, 4.0])
    np.testing.assert_array_equal(h.numpy(), [0.0, 0.0, 2.0])
    np.testing.assert_array_equal(t.numpy(), [0.0, 0.0, 0.0])


# ---------------------------------------------------------------------------
# the new elementwise primitives: methods and functions as PyTorch names them
# ---------------------------------------------------------------------------
def test_new_primitives_have_pytorch_names():
    x = sm.tensor([-30.0, -1.0, 0.0, 0.5, 40.0])
    np.testing.assert_allclose(F.softplus(x).numpy(), np.logaddexp(0, x.numpy()), rtol=1e-15)
    for name in ("sin", "cos", "log1p", "expm1"):
        arg = x.abs() if name == "log1p" else x
        np.testing.assert_allclose(getattr(arg, name)().numpy(), getattr(np, name)(arg.numpy()))
        np.testing.assert_allclose(getattr(sm, name)(arg).numpy(), getattr(np, name)(arg.numpy()))
    np.testing.assert_array_equal(x.clip(-1.0, 1.0).numpy(), np.clip(x.numpy(), -1, 1))
    np.testing.assert_array_equal(x.clip(min=0.0).numpy(), np.maximum(x.numpy(), 0))
    np.testing.assert_array_equal(x.clip(max=0.0).numpy(), np.minimum(x.numpy(), 0))
    np.testing.assert_array_equal(sm.maximum(x, 0.0).numpy(), np.maximum(x.numpy(), 0))
    np.testing.assert_array_equal(sm.minimum(x, 0.0).numpy(), np.minimum(x.numpy(), 0))
    np.testing.assert_array_equal(sm.where(x > 0, x, 0.0).numpy(), np.where(x.numpy() > 0, x.numpy(), 0))


def test_maximum_minimum_and_clip_split_ties_and_include_the_bounds():
    """torch.maximum gives half the gradient to each input on a tie; torch.clamp
    passes the gradient to x at a bound, none to the bound."""
    x = sm.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = sm.tensor([2.0, 2.0, 2.0], requires_grad=True)
    gx, gy = sm.grad(sm.maximum(x, y).sum(), [x, y])
    np.testing.assert_array_equal(gx.numpy(), [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(gy.numpy(), [1.0, 0.5, 0.0])
    gx, gy = sm.grad(sm.minimum(x, y).sum(), [x, y])
    np.testing.assert_array_equal(gx.numpy(), [1.0, 0.5, 0.0])
    lo, hi = sm.tensor(2.0, requires_grad=True), sm.tensor(2.5, requires_grad=True)
    gx, glo, ghi = sm.grad(sm.clip(x, lo, hi).sum(), [x, lo, hi])
    np.testing.assert_array_equal(gx.numpy(), [0.0, 1.0, 0.0])
    assert glo.item() == 1.0 and ghi.item() == 1.0
