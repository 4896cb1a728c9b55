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


# ---------------------------------------------------------------------------
# docs that cannot drift: every function and test named in the equation tables exists
# ---------------------------------------------------------------------------
import ast                                                     # noqa: E402
import fnmatch                                                 # noqa: E402
import importlib                                               # noqa: E402
import pkgutil                                                 # noqa: E402

DOC_PAGES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")) + ["README.md"]
NAME = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
ALIASES = {"sm": "scratchmeta", "F": "scratchmeta.functional"}
EXTERNAL = {"torch", "np", "numpy", "xp", "cupy", "jax", "math"}


def _cells(line):
    """The cells of a Markdown table row; `\\|` inside a cell is not a separator."""
    body = line.strip().strip("|")
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", body)]


def _tables(text):
    """(header cells, body rows, line number) for every table in a page."""
    lines = text.split("\n")
    out, i = [], 0
    while i + 1 < len(lines):
        if lines[i].lstrip().startswith("|") and re.fullmatch(r"\s*\|[\s:|-]+\|\s*", lines[i + 1]) \
                and "-" in lines[i + 1]:
            header, rows, j = [c.lower() for c in _cells(lines[i])], [], i + 2
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                rows.append((j + 1, _cells(lines[j])))
                j += 1
            out.append((header, rows, i + 1))
            i = j
        else:
            i += 1
    return out


SEPARATOR = re.compile(r"\s*(?:,|;|\+|->|/|\band\b|\bor\b|\s)*\s*")


def _top_level_spans(cell, with_listed=False):
    """Backticked spans of a cell, each with whether it sits inside parentheses of prose.

    with_listed: also say whether the span is listed (first in the cell, or after
    another span with only separators such as `,` `->` `+` `and` in between)
    rather than named inside a sentence.
    """
    spans, depth, k, last = [], 0, 0, 0
    while k < len(cell):
        c = cell[k]
        if c == "`":
            end = cell.find("`", k + 1)
            if end < 0:
                break
            listed = SEPARATOR.fullmatch(re.sub(r"\([^()]*\)", "", cell[last:k])) is not None
            spans.append((cell[k + 1:end], depth > 0, listed) if with_listed
                         else (cell[k + 1:end], depth > 0))
            k = last = end + 1
            continue
        depth += c == "("
        depth -= c == ")" and depth > 0
        k += 1
    return spans


def _code_names(cell):
    """Dotted names a Code cell promises: `name`, `name(args)`, `path.py: Name.attr`.

    A span that is not a name or a call (`x (T,n,d)`, `read_in.*`, `noise_std=`,
    `{"mse", "nll"}`) is prose, and so is a bare name inside parentheses
    (`concat(x, y)` in "(encoder on `concat(x, y)`)"), and so is a bare name
    inside a sentence ("returns `grad_theta` of ..."); a dotted name inside
    parentheses (`nn.MLP`, `protonet.cosine`) is still checked, and so is
    every name listed in the cell (`distances`, `sq_dist`, `cosine`).
    """
    names = []
    for span, nested, listed in _top_level_spans(cell, with_listed=True):
        span = span.strip()
        m = re.fullmatch(r"(?:(scratchmeta/[\w/]+\.py):\s*)?(" + NAME + r")(\(.*\))?", span)
        if not m:
            continue
        bare = "." not in m.group(2) and not m.group(1) and not m.group(3)
        if (nested and "." not in m.group(2) and not m.group(1)) or (bare and not listed):
            continue
        names.append((m.group(1), m.group(2)))
    return names


def _test_names(cell):
    """Test names a Test cell promises, with {a,b} expanded; `*` is kept as a glob."""
    out = []
    for span, _ in _top_level_spans(cell):
        span = span.strip()
        m = re.fullmatch(r"(?:(tests/\w+\.py)::)?(test_[\w*]*(?:\{[\w,]+\}[\w*]*)*)", span)
        if not m:
            continue
        names = [m.group(2)]
        while any("{" in n for n in names):
            n = next(n for n in names if "{" in n)
            pre, alts, post = re.fullmatch(r"(.*?)\{([\w,]+)\}(.*)", n).groups()
            names.remove(n)
            names += [pre + a + post for a in alts.split(",")]
        out += [(m.group(1), n) for n in names]
    return out


def _module_of(path):
    return path[:-3].replace("/", ".").removesuffix(".__init__")


def _package_modules():
    """Every importable module of the package; ones that need a missing extra are left out."""
    import scratchmeta
    mods = {"scratchmeta": scratchmeta}
    for info in pkgutil.walk_packages(scratchmeta.__path__, "scratchmeta."):
        if info.name.endswith("__main__"):                    # running it runs the CLI
            continue
        try:
            mods[info.name] = importlib.import_module(info.name)
        except ModuleNotFoundError as e:
            if (e.name or "").startswith("scratchmeta"):
                raise
    return mods


def _has(obj, dotted):
    for part in dotted.split(".") if dotted else []:
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def _test_functions():
    """tests/<file>.py -> the names of its test functions (module level and in classes)."""
    found = {}
    for path in (ROOT / "tests").glob("test_*.py"):
        tree = ast.parse(path.read_text())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                names.add(node.name)
        found[f"tests/{path.name}"] = names
    return found


def _page_homes(text):
    """The `scratchmeta/....py` and `tests/....py` files a page names before its first table."""
    head = text.split("\n|", 1)[0]
    code = re.findall(r"`(scratchmeta/[\w/]+\.py)`", head)
    tests = re.findall(r"`(tests/\w+\.py)`", head)
    return [_module_of(p) for p in code], tests


def _missing_in(page, mods, tests_by_file, page_root=ROOT):
    """Every name the page promises that does not exist, one line each (none repeated)."""
    text = (page_root / page).read_text()
    homes, home_tests = _page_homes(text)
    short = {}
    for name in mods:
        short.setdefault(name.rsplit(".", 1)[-1], []).append(name)
    missing = []

    def resolves(path, dotted):
        if path:
            mod = _module_of(path)
            return mod in mods and _has(mods[mod], dotted)
        head, _, rest = dotted.partition(".")
        if head in EXTERNAL:
            return True
        if head in ALIASES:
            return ALIASES[head] in mods and _has(mods[ALIASES[head]], rest)
        if head in short and any(_has(mods[m], rest) for m in short[head]):
            return True
        ordered = [m for m in homes if m in mods] + sorted(mods)
        return any(_has(mods[m], dotted) for m in ordered)

    for header, rows, _ in _tables(text):
        code_cols = [k for k, h in enumerate(header) if h in ("code", "function", "functions")]
        test_cols = [k for k, h in enumerate(header) if h in ("test", "tests")]
        for lineno, cells in rows:
            for k in code_cols:
                for path, dotted in _code_names(cells[k] if k < len(cells) else ""):
                    if not resolves(path, dotted):
                        missing.append(f"{page}:{lineno}: function `{(path + ': ') if path else ''}"
                                       f"{dotted}` does not exist in scratchmeta")
            for k in test_cols:
                for path, name in _test_names(cells[k] if k < len(cells) else ""):
                    files = [path] if path else (home_tests or sorted(tests_by_file))
                    pool = set().union(*(tests_by_file.get(f, set()) for f in files))
                    if not path and not any(fnmatch.fnmatchcase(t, name) for t in pool):
                        pool = set().union(*tests_by_file.values())   # moved to another file
                    if any(fnmatch.fnmatchcase(t, name) for t in pool):
                        continue
                    if path:
                        missing.append(f"{page}:{lineno}: test `{path}::{name}` does not exist")
                    else:
                        missing.append(f"{page}:{lineno}: test `{name}` is not defined in tests/")
    # explicit paths anywhere on the page: tests/x.py::test_y, scratchmeta/....py, tests/....py
    for lineno, line in enumerate(text.split("\n"), 1):
        for path, name in re.findall(r"(tests/\w+\.py)::(test_\w+)", line):
            if name not in tests_by_file.get(path, set()):
                missing.append(f"{page}:{lineno}: test `{path}::{name}` does not exist")
        for path in re.findall(r"`((?:scratchmeta|tests|examples|benchmarks|scripts)/[\w/.-]+\.(?:py|sh))\b",
                               line):
            if not (ROOT / path).exists():
                missing.append(f"{page}:{lineno}: file `{path}` does not exist")
    return list(dict.fromkeys(missing))


@pytest.fixture(scope="module")
def package_and_tests():
    return _package_modules(), _test_functions()


def test_every_function_and_test_named_in_the_docs_tables_exists(package_and_tests):
    mods, tests_by_file = package_and_tests
    missing = [m for page in DOC_PAGES for m in _missing_in(page, mods, tests_by_file)]
    assert not missing, "names in the docs that do not exist:\n" + "\n".join(missing)


def test_the_table_checker_reads_the_formats_the_docs_use():
    """It finds the tables, and catches a missing name of every form (so it cannot pass vacuously)."""
    pages = {p: _tables((ROOT / p).read_text()) for p in DOC_PAGES}
    equation_tables = [(p, h) for p, ts in pages.items() for h, _, _ in ts
                       if "code" in h and "test" in h]
    assert len(equation_tables) >= 8
    assert _code_names("`CNP.represent(..., mask)` (encoder `nn.MLP` on `concat(x, y)`)") == [
        (None, "CNP.represent"), (None, "nn.MLP")]
    assert _code_names("`scratchmeta/tasks/linreg.py: LinearRegressionPrompts.sample`") == [
        ("scratchmeta/tasks/linreg.py", "LinearRegressionPrompts.sample")]
    assert _code_names("`read_in.*`, `noise_std=`, `x (T,n,d)`, `{\"mse\", \"nll\"}`") == []
    assert _code_names("`Learner.step` returns `grad_theta` of it; `a` -> `b`, `c` and `d.e`") == [
        (None, "Learner.step"), (None, "b"), (None, "c"), (None, "d.e")]
    assert _code_names("`a`, `b` -> `c(x=1)` + `d`") == [(None, n) for n in "abcd"]
    assert _test_names("`test_a_{b,c}_d` (k = 1), `test_e_*`, `tests/test_x.py::test_f`") == [
        (None, "test_a_b_d"), (None, "test_a_c_d"), (None, "test_e_*"),
        ("tests/test_x.py", "test_f")]
    assert _cells(r"| a | D = \|\|z\|\|^2 | `f` |") == ["a", "D = ||z||^2", "`f`"]


def test_the_table_checker_reports_every_missing_name(tmp_path, package_and_tests):
    mods, tests_by_file = package_and_tests
    page = tmp_path / "docs" / "fake.md"
    page.parent.mkdir()
    page.write_text(
        "Code: `scratchmeta/algorithms/maml.py`. Tests: `tests/test_maml.py`.\n\n"
        "| Paper | Code | Test |\n|---|---|---|\n"
        "| Eq. 1 | `inner_update(theta, ...)`, `no_such_function` | `test_quadratic_loss_closed_form` |\n"
        "| Eq. 2 | `maml.not_there` (via `sm.nope`) | `test_not_written_{a,b}` |\n"
        "| Eq. 3 | `F.softmax` | `tests/test_maml.py::test_absent` |\n\n"
        "See `scratchmeta/gone.py`.\n")
    missing = _missing_in("docs/fake.md", mods, tests_by_file, page_root=tmp_path)
    text = "\n".join(missing)
    for bad in ["`no_such_function`", "`maml.not_there`", "`sm.nope`", "`test_not_written_a`",
                "`test_not_written_b`", "`tests/test_maml.py::test_absent`", "`scratchmeta/gone.py`"]:
        assert bad in text, (bad, text)
    for good in ["inner_update", "test_quadratic_loss_closed_form", "F.softmax"]:
        assert f"`{good}`" not in text
    assert len(missing) == 7, text
