import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# The integration tier: real Trainer runs, subprocesses, TensorBoard servers, the browser and the soak. Everything
# else (methods, metrics, render, log format, writing, probe) is the fast tier: `pytest -m "not integration"`.
INTEGRATION_DIRS = frozenset({"callbacks", "dashboard", "examples", "architectures", "faults", "data"})
INTEGRATION_FILES = frozenset(
    {
        "export/test_tensorboard_http.py",
        "export/test_export.py",
        "writing/test_boundary.py",
        "test_dependencies.py",  # fresh interpreters in subprocesses
        "render/test_render_import.py",
    }
)


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        path = os.path.relpath(str(item.path), here)
        parts = path.split(os.sep)
        heavy_model = "resnet18" in item.name  # the torchvision ResNet-18 parity cases: seconds each on 2 cores
        if (
            parts[0] in INTEGRATION_DIRS
            or "/".join(parts) in INTEGRATION_FILES
            or heavy_model
            or item.get_closest_marker("slow")
        ):
            item.add_marker(pytest.mark.integration)
