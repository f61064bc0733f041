"""``probelens.writing`` is framework-free: importing it pulls in neither Lightning nor matplotlib (it needs
TensorBoard's protobufs, not its writer)."""

import subprocess
import sys


def test_importing_probelens_writing_imports_no_lightning_and_no_matplotlib():
    code = (
        "import sys, probelens.writing\n"
        "bad = [m for m in ('pytorch_lightning', 'lightning', 'lightning_fabric', 'matplotlib',"
        " 'torch.utils.tensorboard',"
        " 'tensorboard.summary.writer') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"probelens.writing imported {out.stdout.strip()}"
