"""`probelens.render` must stay light: importing it must not import matplotlib (colormaps import it lazily).

The subprocess registers a bare ``probelens`` package (without running ``probelens/__init__.py``) so that the check
covers exactly the render subpackage: the top-level package pulls in Lightning, which may import matplotlib itself.
"""

from __future__ import annotations

import subprocess
import sys

BARE_PARENT = (
    "import importlib.util, sys, types\n"
    "spec = importlib.util.find_spec('probelens')\n"
    "pkg = types.ModuleType('probelens')\n"
    "pkg.__path__ = list(spec.submodule_search_locations)\n"
    "sys.modules['probelens'] = pkg\n"
)


def run_isolated(code: str) -> str:
    """Runs ``code`` in a fresh interpreter with a bare ``probelens`` parent package; returns its stdout."""
    result = subprocess.run([sys.executable, "-c", BARE_PARENT + code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_import_does_not_import_matplotlib() -> None:
    out = run_isolated("import probelens.render\nprint('matplotlib' in sys.modules)")
    assert out == "False"


def test_matplotlib_is_loaded_lazily_on_first_lut() -> None:
    # Sanity check that the probe above can detect matplotlib: building a LUT imports it.
    out = run_isolated("import probelens.render as r\nr.colormap_lut('jet')\nprint('matplotlib' in sys.modules)")
    assert out == "True"
