"""The package layout tells the truth: Lightning callbacks only where the name says so, cores free of Lightning."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "probelens"
LIGHTNING = ("pytorch_lightning", "lightning")


def _runtime_imports(path: Path) -> set[str]:
    """Top-level packages a module imports when it runs (``if TYPE_CHECKING:`` blocks left out)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_only_the_flavour_modules_import_lightning():
    importers = sorted(
        str(path.relative_to(SRC)) for path in SRC.rglob("*.py") if _runtime_imports(path) & set(LIGHTNING)
    )
    assert importers == ["lightning.py", "pl.py"]


@pytest.mark.parametrize("package", ["probelens", "probelens.core", "probelens.export"])
def test_framework_free_packages_import_no_lightning(package):
    code = f"import sys, {package}\nprint(','.join(m for m in {LIGHTNING!r} if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{package} imported {out.stdout.strip()}"


def test_callbacks_holds_lightning_callbacks_only():
    import pytorch_lightning

    import probelens
    import probelens.callbacks

    assert probelens.callbacks.__all__, "probelens.callbacks exports nothing"
    for name in probelens.callbacks.__all__:
        cls = getattr(probelens.callbacks, name)
        assert issubclass(cls, pytorch_lightning.Callback), name
        assert getattr(probelens, name) is cls


def test_each_core_has_one_class_in_each_flavour():
    lightning = pytest.importorskip("lightning.pytorch")
    import pytorch_lightning

    import probelens.core as core
    import probelens.lightning as flavour_l
    import probelens.pl as flavour_pl

    assert sorted(flavour_pl.__all__) == sorted(flavour_l.__all__)
    for module, base in ((flavour_pl, pytorch_lightning.Callback), (flavour_l, lightning.Callback)):
        cores = {}
        for name in module.__all__:
            cls = getattr(module, name)
            assert cls.__module__ == module.__name__ and cls.__qualname__ == name  # pickles, found by class_path
            assert issubclass(cls, base), name
            (own,) = [c for c in cls.__mro__[1:] if c.__module__.startswith("probelens.core")][:1]
            assert own.__doc__ == cls.__doc__, name
            cores[own.__name__] = name
        assert sorted(cores) == sorted(core.__all__)
        assert all(name.endswith("Monitor") for name in cores.values())


def test_a_subclass_cannot_take_over_the_firing_path():
    from probelens import ProbeMonitor

    with pytest.raises(TypeError, match=r"on_train_batch_end.*configure, explain"):

        class Mine(ProbeMonitor):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                pass


def _probelens_imports(path: Path) -> set[str]:
    """``probelens.<package>`` names a module imports (at any point, lazily too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found.update(".".join(n.split(".")[:2]) for n in names if n.startswith("probelens."))
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("methods", {"probelens.render", "probelens.metrics", "probelens.core", "probelens.callbacks"}),
        ("metrics", {"probelens.render", "probelens.core", "probelens.callbacks"}),
        ("render", {"probelens.methods", "probelens.metrics", "probelens.core", "probelens.callbacks"}),
        ("dashboard", {"probelens.core", "probelens.callbacks", "probelens.pl", "probelens.lightning"}),
    ],
)
def test_dependencies_point_down(package, forbidden):
    offenders = {
        str(path.relative_to(SRC)): sorted(_probelens_imports(path) & forbidden)
        for path in (SRC / package).rglob("*.py")
        if _probelens_imports(path) & forbidden
    }
    assert offenders == {}
