"""The notebooks in examples/notebooks run top to bottom (each asserts its own numbers).

Executed with nbclient in a fresh kernel whose working directory is the repository
root, with the repository first on PYTHONPATH, so a notebook imports this checkout's
scratchmeta. The committed notebooks carry no outputs.
"""
import json
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "examples" / "notebooks").glob("*.ipynb"))
TIMEOUT_S = 120            # per cell; each notebook takes well under 30 s on a free CPU


def test_there_are_four_notebooks_with_clean_outputs():
    assert [p.name for p in NOTEBOOKS] == ["01_double_backward.ipynb", "02_maml_hessian_term.ipynb",
                                           "03_protonet_hand_gradient.ipynb",
                                           "04_in_context_learning.ipynb"]
    for path in NOTEBOOKS:
        book = json.loads(path.read_text())
        code = [c for c in book["cells"] if c["cell_type"] == "code"]
        assert code, path.name
        assert all(c["outputs"] == [] and c["execution_count"] is None for c in code), \
            f"{path.name} has stored outputs: clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="needs nbformat: pip install -e '.[dev]'")
    nbclient = pytest.importorskip("nbclient", reason="needs nbclient: pip install -e '.[dev]'")
    pytest.importorskip("ipykernel", reason="needs ipykernel: pip install -e '.[dev]'")
    book = nbformat.read(path, as_version=4)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    client = nbclient.NotebookClient(book, timeout=TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    printed = [o for c in book.cells if c.cell_type == "code" for o in c.outputs
               if o.get("output_type") == "stream"]
    assert printed, f"{path.name} printed nothing"
