"""Helpers shared by several test files (not tests themselves)."""
import importlib.util
import pathlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_example(filename):
    """Import examples/<filename> as a module, wherever pytest runs from."""
    path = ROOT / "examples" / filename
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_matches(expected, got, rtol=0.0, atol=0.0, same_dtype=False):
    """Two lists of host arrays (or lists of them, or None) agree entry by entry.

    rtol = atol = 0 asks for bitwise equality.
    """
    for e_part, g_part in zip(expected, got):
        e_part = e_part if isinstance(e_part, list) else [e_part]
        g_part = g_part if isinstance(g_part, list) else [g_part]
        assert len(e_part) == len(g_part)
        for e, g in zip(e_part, g_part):
            assert (e is None) == (g is None)
            if e is None:
                continue
            assert type(g) is np.ndarray
            if same_dtype:
                assert g.dtype == e.dtype
            if rtol == 0 and atol == 0:
                np.testing.assert_array_equal(g, e)
            else:
                np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)


def needs(module, extra):
    """Skip mark for a test that needs an optional package; the reason names it and its extra.

    needs("matplotlib", "plot"), needs("PIL", "data"), needs("sklearn", "data"),
    needs("torch", "bench").
    """
    import importlib.util

    import pytest
    return pytest.mark.skipif(importlib.util.find_spec(module) is None,
                              reason=f"needs {module}: pip install -e '.[{extra}]'")


def assert_cli_refuses(main, base, cases, capsys, help_mentions=None):
    """Each (flags, message) of `cases`: main(base + flags) exits with status 2 and
    prints `message` on stderr; with help_mentions, `eval --help` shows that text."""
    import pytest
    for flags, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(base + flags)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    if help_mentions is not None:
        with pytest.raises(SystemExit):
            main(["eval", "--help"])
        assert help_mentions in capsys.readouterr().out
