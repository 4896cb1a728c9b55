"""A picture of the graph that reverse mode walks (micrograd's draw_dot, for Tensors).

    x = sm.tensor([1.0, 2.0], requires_grad=True)
    y = (x.tanh() * x).sum()
    print(sm.to_dot(y, names={"x": x, "y": y}))      # DOT source, needs nothing
    sm.draw_graph(y, "graph.png", names={"x": x})    # a PNG

Two kinds of node: a box for each tensor (its name if given, shape, dtype,
and whether it is a leaf that requires grad) and an ellipse for each
primitive that made a tensor (its name: mul, tanh, sum, ...). Edges run from
each input tensor to the primitive, and from the primitive to its output:
the forward direction; backward walks them the other way.

`draw_graph` renders with Graphviz's `dot` when that program is on the PATH,
and otherwise with matplotlib (the `plot` extra): nodes in columns by depth
from the leaves. The file is written atomically (a temporary file, then a
rename), so a crash never leaves half a PNG.
"""
import io
import os
import shutil
import subprocess

from .runs import atomic_write_bytes
from .tensor import Tensor


def _walk(outputs):
    """Tensors reachable from outputs through the recorded parents, inputs first.

    Returns (tensors, ops): tensors in an order where every input precedes the
    tensor made from it; ops as (output tensor, primitive name, input tensors).
    Iterative, so a chain of any length is fine.
    """
    order, seen, ops = [], set(), []
    stack = [(t, False) for t in reversed(outputs)]
    while stack:
        t, expanded = stack.pop()
        if expanded:
            order.append(t)
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        stack.append((t, True))
        parents = getattr(t, "_parents", ())
        op = getattr(t, "_op", None)
        if op is not None and parents:
            ops.append((t, getattr(op, "name", type(op).__name__), tuple(parents)))
            for p in reversed(parents):
                if id(p) not in seen:
                    stack.append((p, False))
    return order, ops


def _outputs(y):
    ys = tuple(y) if isinstance(y, (tuple, list)) else (y,)
    if not ys:
        raise ValueError("to_dot: no tensor to draw")
    for k, t in enumerate(ys):
        if not isinstance(t, Tensor):
            raise TypeError(f"to_dot: output {k} is {type(t).__name__}, not a Tensor")
    return ys


def _label(t, names):
    name = names.get(id(t))
    parts = ([name] if name else []) + [f"shape {tuple(t.shape)} {t.dtype}"]
    if t._op is None:
        parts.append("leaf, requires grad" if t.requires_grad else "constant")
    if t.data.size == 1:
        parts.append(f"value {float(t.data.reshape(-1)[0]):.4g}")
    return parts


def graph(y, names=None):
    """The graph of y as plain data: (nodes, edges).

    nodes: a list of dicts {"id", "kind" ("tensor" | "op"), "label" (list of
    lines)}; edges: (from id, to id) pairs in the forward direction.
    `names` maps a label to a Tensor ({"x": x}), shown on that tensor's node.
    """
    ys = _outputs(y)
    named = {}
    for label, t in (names or {}).items():
        if not isinstance(t, Tensor):
            raise TypeError(f"to_dot: names[{label!r}] is {type(t).__name__}, not a Tensor")
        named[id(t)] = str(label)
    tensors, ops = _walk(ys)
    ids = {id(t): f"t{k}" for k, t in enumerate(tensors)}
    nodes = [{"id": ids[id(t)], "kind": "tensor", "label": _label(t, named)} for t in tensors]
    edges = []
    for k, (out, op_name, parents) in enumerate(ops):
        op_id = f"op{k}"
        nodes.append({"id": op_id, "kind": "op", "label": [op_name]})
        for p in parents:
            edges.append((ids[id(p)], op_id))
        edges.append((op_id, ids[id(out)]))
    return nodes, edges


def _quote(text):
    """A DOT string literal; line breaks become DOT's \\n escape."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n") + '"'


def to_dot(y, names=None):
    """DOT source (Graphviz's language) for the graph of y (a Tensor or a tuple of them)."""
    nodes, edges = graph(y, names)
    lines = ["digraph scratchmeta {", "  rankdir=LR;"]
    for n in nodes:
        shape = "box" if n["kind"] == "tensor" else "ellipse"
        lines.append(f"  {n['id']} [shape={shape}, label={_quote(chr(10).join(n['label']))}];")
    for a, b in edges:
        lines.append(f"  {a} -> {b};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _render_dot(source):
    done = subprocess.run(["dot", "-Tpng"], input=source.encode(), capture_output=True,
                          timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"draw_graph: dot failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def _render_matplotlib(nodes, edges):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("draw_graph: needs Graphviz's `dot` on the PATH or matplotlib "
                           "(pip install 'scratchmeta[plot]')") from e
    # column = longest path from a leaf; rows in order of appearance
    incoming = {}
    for a, b in edges:
        incoming.setdefault(b, []).append(a)
    depth = {}
    for n in nodes:                      # tensors come inputs first, ops after their tensors
        depth.setdefault(n["id"], 0)
    changed = True
    while changed:                       # at most (longest path) sweeps
        changed = False
        for b, srcs in incoming.items():
            d = max(depth[a] for a in srcs) + 1
            if d > depth[b]:
                depth[b], changed = d, True
    columns = {}
    for n in nodes:
        columns.setdefault(depth[n["id"]], []).append(n)
    width = max(columns) + 1
    height = max(len(c) for c in columns.values())
    pos = {}
    for d, col in columns.items():
        for r, n in enumerate(col):
            pos[n["id"]] = (d * 2.2, -(r - (len(col) - 1) / 2) * 1.2)
    fig, ax = plt.subplots(figsize=(max(4.0, 2.0 * width), max(2.5, 1.0 * height + 1)))
    for a, b in edges:
        rad = 0.3 if depth[b] - depth[a] > 1 else 0.0    # bend edges that skip a column
        ax.annotate("", xy=pos[b], xytext=pos[a],
                    arrowprops=dict(arrowstyle="->", color="0.4", shrinkA=28, shrinkB=28,
                                    connectionstyle=f"arc3,rad={rad}"))
    for n in nodes:
        x, yy = pos[n["id"]]
        style = ("round,pad=0.3", "#dbe9f6") if n["kind"] == "op" else ("square,pad=0.3", "white")
        ax.text(x, yy, "\n".join(n["label"]), ha="center", va="center", fontsize=7,
                bbox=dict(boxstyle=style[0], facecolor=style[1], edgecolor="0.3"))
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    ax.set_xlim(min(xs) - 1.2, max(xs) + 1.2)
    ax.set_ylim(min(ys) - 0.9, max(ys) + 0.9)
    ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def draw_graph(y, path, names=None, renderer="auto"):
    """Write a PNG of the graph of y to `path` (atomically) and return the path.

    renderer: "dot" (Graphviz's program), "matplotlib", or "auto" (dot when
    it is on the PATH, matplotlib otherwise).
    """
    if renderer not in ("auto", "dot", "matplotlib"):
        raise ValueError(f"draw_graph: renderer must be 'auto', 'dot' or 'matplotlib', "
                         f"got {renderer!r}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"draw_graph: folder {folder} does not exist")
    use_dot = renderer == "dot" or (renderer == "auto" and shutil.which("dot"))
    if use_dot:
        if not shutil.which("dot"):
            raise RuntimeError("draw_graph: renderer='dot' but Graphviz's `dot` is not on the PATH")
        data = _render_dot(to_dot(y, names))
    else:
        data = _render_matplotlib(*graph(y, names))
    atomic_write_bytes(path, data)
    return path
