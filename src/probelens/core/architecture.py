"""The layer table (``probelens/architecture``): once per run, the layers a monitor can target, with their type,
layout, map shape, parameter count and receptive field (:func:`probelens.methods.summary.layer_summary`).

Its cost is bounded: it reads the model's shared trace (:func:`probelens.core.checks.model_trace`, made once for all
monitors) and measures receptive fields for at most as many layers as the probe has images (one forward and backward
pass of a probe-sized batch)."""

from __future__ import annotations

from lightning_utilities.core.rank_zero import rank_zero_warn
from torch import nn

from probelens.core.checks import model_trace, probe_example
from probelens.core.run import Run, SharedRun
from probelens.core.schedule import log_step
from probelens.core.sharded import sharded_layer_summary
from probelens.core.writer import MonitorWriter
from probelens.methods.layers import unwrap_compiled
from probelens.methods.layout import LayerTraces
from probelens.methods.sharded import is_sharded
from probelens.probe import ProbeSet

TAG = "probelens/architecture"


def log_architecture(
    run: SharedRun, trainer: Run, model: nn.Module, probe: ProbeSet, writer: MonitorWriter, traces: LayerTraces
) -> None:
    """Writes the table once per run, on rank 0 (under sharded parameters every rank runs the summary's forward
    pass, which is collective). A resumed run (``ckpt_path``) has it already. Never raises: a failure warns.
    ``traces``: the run's traces of ``model``."""
    sharded = is_sharded(model)
    if run.architecture_logged or not (trainer.is_global_zero or sharded):
        return
    run.architecture_logged = True
    if getattr(trainer, "ckpt_path", None):  # a resumed run: the table is in the log dir already
        return
    from probelens.methods.summary import layer_summary, summary_markdown

    try:
        net = unwrap_compiled(model)
        example = probe_example(net, probe)
        if sharded:
            rows = sharded_layer_summary(net, example)
        else:
            # receptive fields of at most as many layers as the probe has images: one forward and backward pass of a
            # probe-sized batch, whatever the depth of the model
            measured = max(2, min(len(probe.images), 32))
            rows = layer_summary(net, example, max_receptive_fields=measured, records=model_trace(traces, net, probe))
        if trainer.is_global_zero:
            writer.text(TAG, summary_markdown(rows, probe.image_size), log_step(trainer), exact=True)
    except Exception as err:  # a summary is a convenience: never let it stop training
        rank_zero_warn(f"probelens: could not log the architecture table ({type(err).__name__}: {err})")
