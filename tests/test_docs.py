"""Every python block of the docs pages that promise runnable checks runs here."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = ["docs/exercises.md", "docs/confusions.md", "README.md"]


def _blocks(page):
    path = ROOT / page
    if not path.exists():
        return []
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


CASES = [(page, i, code) for page in PAGES for i, code in enumerate(_blocks(page))]


def test_the_pages_have_runnable_blocks():
    assert {page for page, _, _ in CASES} == set(PAGES)
    assert len([c for c in CASES if c[0] == "docs/exercises.md"]) == 2


@pytest.mark.parametrize("page, index, code", CASES, ids=[f"{p}[{i}]" for p, i, _ in CASES])
def test_doc_block_runs(page, index, code, capsys):
    exec(compile(code, f"{page}[{index}]", "exec"), {"__name__": "__doc_block__"})
    assert capsys.readouterr().out                         # each block prints its numbers
