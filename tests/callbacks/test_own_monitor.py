"""The README's "Your own monitor", run as written: a subclass of ``ProbeMonitor`` through the two public hooks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from lit import LitClassifier, loaders, probe_cells, read_events, trainer
from probelens import ProbeMonitor, ProbeSet

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_monitor() -> type:
    """The class defined in the README's code block under "Your own monitor"."""
    section = README.read_text().split("## Your own monitor", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, "the README's 'Your own monitor' has no python block"
    namespace: dict = {}
    exec(compile(code.group(1), "README.md", "exec"), namespace)
    return namespace["InputGradientMonitor"]


def test_the_readme_monitor_writes_its_grid_and_scalar_and_equals_the_gradient(tmp_path):
    monitor_class = readme_monitor()
    probe = ProbeSet(torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1] * 3))
    monitor = monitor_class(probe, every_n_steps=2, name="inputs")
    train, val = loaders(n=32, batch_size=16)
    module = LitClassifier()
    tr = trainer(tmp_path, [monitor], max_epochs=2)
    tr.fit(module, train, val)
    assert (monitor.fire_count, monitor.failure_count) == (2, 0)
    acc = read_events(tr.logger.log_dir)
    events = acc.Images("probelens/inputs/input_gradient")  # name= enters the tag, as for the built-in monitors
    assert [e.step for e in events] == [1, 3]
    assert sorted(probe_cells(events[-1])) == list(range(6))  # every shown probe image keyed by its index
    # the logged mean is the input gradient of the predicted class's score, computed here by hand
    module.eval()
    x = probe.images.clone().requires_grad_(True)
    logits = module(x)
    (grad,) = torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), x)
    logged = acc.Scalars("probelens/inputs/input_gradient/mean")[-1].value
    assert logged == pytest.approx(float(grad.abs().mean()), rel=1e-4)


def test_a_hook_under_its_name_before_0_3_is_refused_where_the_class_is_defined():
    with pytest.raises(TypeError, match=r"defines \['_log'\].* rename them \(_log -> explain\)"):

        class Old(ProbeMonitor):
            def _log(self, step, pl_module, trainer):
                pass

    with pytest.raises(TypeError, match=r"overrides \['on_train_batch_end'\], which belong to the one firing path"):

        class Sealed(ProbeMonitor):
            def on_train_batch_end(self, *args):
                pass


def test_a_framework_free_core_on_a_trainer_is_refused_with_the_callback_to_use(tmp_path):
    """A MonitorCore subclass (probelens.core) lacks the Callback hooks: refused when the fit sets it up, naming
    ProbeMonitor, not a bare AttributeError from inside Lightning later."""
    from probelens.core import MonitorCore

    class Mine(MonitorCore):
        def configure(self, pl_module):
            self._require({}, gradients=False, input_gradient=False, target_sets={"pred"})

        def explain(self, step, pl_module, trainer):
            self.writer.scalars({"mine/x": 1.0}, step)

    probe = ProbeSet(torch.randn(4, 3, 16, 16), torch.tensor([0, 1] * 2))
    train, val = loaders(n=16, batch_size=8)
    with pytest.raises(TypeError, match=r"Mine is a framework-free monitor core .*probelens.ProbeMonitor"):
        trainer(tmp_path, [Mine(probe)], max_epochs=1).fit(LitClassifier(), train, val)
