"""Dependencies flow one way: methods, metrics and render never import Lightning, TensorBoard or pyplot."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "package", ["probelens.methods", "probelens.metrics", "probelens.render", "probelens.data", "probelens.logs"]
)
def test_torch_only_packages(package):
    code = (
        f"import sys, {package}\n"
        "bad = [m for m in ('pytorch_lightning', 'lightning', 'tensorboard', 'matplotlib', 'matplotlib.pyplot') "
        "if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{package} imported {out.stdout.strip()}"


def _declared() -> tuple[set[str], set[str]]:
    import re
    from pathlib import Path

    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]

    def names(requirements):
        return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}

    optional = set().union(*(names(v) for v in project["optional-dependencies"].values()))
    return names(project["dependencies"]), optional


def test_every_import_of_the_package_is_declared():
    """Each third-party module src/ imports belongs to a declared distribution: module-level imports to a runtime
    dependency (the two flavour modules excepted: each exists for users who have its Lightning extra), imports inside
    functions or try blocks (optional speed-ups, other loggers) to a runtime or optional one."""
    import ast
    import importlib.metadata
    from pathlib import Path

    runtime, optional = _declared()
    distributions = importlib.metadata.packages_distributions()
    problems = []
    for path in sorted((Path(__file__).parents[1] / "src" / "probelens").rglob("*.py")):
        tree = ast.parse(path.read_text())
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                root = module.split(".")[0]
                if root in sys.stdlib_module_names or root in ("probelens", "__future__"):
                    continue
                dists = {d.lower().replace("_", "-") for d in distributions.get(root, [root])}
                allowed = (
                    runtime
                    if id(node) in top_level and path.name not in ("lightning.py", "pl.py")
                    else runtime | optional
                )
                if not dists & allowed:
                    problems.append(f"{path.name}: {module} ({', '.join(sorted(dists))})")
    assert not problems, problems
