"""sm.to_dot and sm.draw_graph: the nodes, names and edges of a graph, and a PNG that decodes."""
import re
import shutil

import numpy as np
import pytest

import scratchmeta as sm
from scratchmeta import graph


def _example():
    x = sm.tensor(np.array([1.0, 2.0]), requires_grad=True)
    w = sm.tensor(np.array([0.5, -1.0]))                 # a constant
    y = (x.tanh() * w).sum()
    return x, w, y


def test_graph_has_one_node_per_tensor_and_per_primitive():
    x, w, y = _example()
    nodes, edges = graph.graph(y, names={"x": x, "y": y})
    tensors = [n for n in nodes if n["kind"] == "tensor"]
    ops = [n for n in nodes if n["kind"] == "op"]
    # x, w, tanh(x), tanh(x) * w, y
    assert len(tensors) == 5
    assert sorted(n["label"][0] for n in ops) == ["mul", "sum", "tanh"]
    # each op: an edge from each input, one to its output
    assert len(edges) == (1 + 1) + (2 + 1) + (1 + 1)
    by_id = {n["id"]: n for n in nodes}
    x_node = next(n for n in tensors if n["label"][0] == "x")
    assert "shape (2,) float64" in x_node["label"] and "leaf, requires grad" in x_node["label"]
    assert any("constant" in n["label"] for n in tensors)          # w
    y_node = next(n for n in tensors if n["label"][0] == "y")
    assert y_node["label"][-1] == f"value {y.item():.4g}"
    # y is made by sum, sum by the mul's output
    (src,) = [a for a, b in edges if b == y_node["id"]]
    assert by_id[src]["label"] == ["sum"]


def test_to_dot_is_dot_source_with_every_node_and_edge():
    x, w, y = _example()
    src = sm.to_dot(y, names={"x": x})
    assert src.startswith("digraph scratchmeta {") and src.rstrip().endswith("}")
    assert len(re.findall(r"^\s+t\d+ \[shape=box", src, flags=re.M)) == 5
    assert len(re.findall(r"^\s+op\d+ \[shape=ellipse", src, flags=re.M)) == 3
    assert len(re.findall(r"->", src)) == 7
    assert 'label="x\\nshape (2,) float64\\nleaf, requires grad"' in src


def test_a_shared_input_is_one_node_with_two_edges():
    x = sm.tensor(np.array([1.0, 2.0]), requires_grad=True)
    nodes, edges = graph.graph(x * x)
    assert len([n for n in nodes if n["kind"] == "tensor"]) == 2
    assert len(edges) == 3


def test_a_tuple_of_outputs_and_a_long_chain():
    x = sm.tensor(np.array([0.1]), requires_grad=True)
    y = x
    for _ in range(3000):                      # no recursion limit
        y = y * 1.0
    nodes, _ = graph.graph((y, x.exp()))
    assert len([n for n in nodes if n["kind"] == "op"]) == 3001


def test_bad_input_is_refused():
    with pytest.raises(TypeError, match="not a Tensor"):
        sm.to_dot(np.ones(2))
    x, _, y = _example()
    with pytest.raises(TypeError, match=r"names\['z'\] is int"):
        sm.to_dot(y, names={"z": 3})
    with pytest.raises(ValueError, match="renderer must be"):
        sm.draw_graph(y, "g.png", renderer="svg")


def _check_png(path):
    PIL = pytest.importorskip("PIL.Image", reason="Pillow (the data extra) decodes the PNG")
    with PIL.open(path) as img:
        img.load()
        assert img.size[0] > 50 and img.size[1] > 20


def test_draw_graph_with_matplotlib_writes_a_png_atomically(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib (the plot extra) renders without dot")
    x, _, y = _example()
    path = tmp_path / "graph.png"
    assert sm.draw_graph(y, path, names={"x": x}, renderer="matplotlib") == str(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph.png"]     # no temp file left
    _check_png(path)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not on the PATH")
def test_draw_graph_with_dot_writes_a_png(tmp_path):
    x, _, y = _example()
    path = tmp_path / "graph.png"
    sm.draw_graph(y, path, names={"x": x}, renderer="dot")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _check_png(path)


def test_draw_graph_into_a_missing_folder_names_it(tmp_path):
    _, _, y = _example()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sm.draw_graph(y, tmp_path / "nope" / "g.png")
