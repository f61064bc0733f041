"""Dependencies flow one way: methods, metrics and render never import Lightning, TensorBoard or pyplot."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("package", ["probelens.methods", "probelens.render", "probelens.data"])
def test_torch_only_packages(package):
    code = (
        f"import sys, {package}\n"
        "bad = [m for m in ('pytorch_lightning', 'lightning', 'tensorboard', 'matplotlib', 'matplotlib.pyplot') "
        "if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{package} imported {out.stdout.strip()}"
