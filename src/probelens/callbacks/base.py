"""The shared base of every monitor: scheduling, grad mode, rank zero, safety, logger lookup and checkpoint state.

Subclasses implement :meth:`ProbeMonitor._configure` (resolve layers, register needs; raises on misconfiguration)
and :meth:`ProbeMonitor._log` (compute and render for one step).
"""

from __future__ import annotations

import math
import os
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, final

import torch
from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from probelens.callbacks._distributed import fire_sharded, sharded_layer_summary, sharded_root
from probelens.callbacks._options import check_bool, check_callable, check_choice, check_int, check_name
from probelens.callbacks._session import ProbeSession, _Needs, session_for
from probelens.callbacks._sinks import (
    FanOutSink,
    ImageSink,
    PngSink,
    TensorBoardSink,
    sinks_for,
    write_image,
)
from probelens.methods._sharded import is_sharded
from probelens.methods.engine import OutputTransform, ProbePass, class_scores
from probelens.methods.layers import LayerSpec, resolve_layers, unwrap_compiled
from probelens.methods.layout import Layout, ReshapeSpec, layouts_for, trace_layers
from probelens.probe import ProbeSet
from probelens.render import Cell, ProbeCells, sanitize

TARGET_MODES = ("pred", "label", "both")
_TB_SAMPLING_NOTICE_SHOWN = False
_PNG_FALLBACK_WARNED: weakref.WeakSet[pl.Trainer] = weakref.WeakSet()  # one warning per trainer, not per monitor
_ARCHITECTURE_LOGGED: weakref.WeakSet[pl.Trainer] = weakref.WeakSet()

if TYPE_CHECKING:  # Lightning is only needed for annotations: the core works with either namespace
    import pytorch_lightning as pl
    from pytorch_lightning import Callback as _CallbackBase  # what the flavours mix in (probelens.pl, .lightning)
else:
    _CallbackBase = object


def log_step(trainer: pl.Trainer, epoch_end: bool = False) -> int:
    """The step Lightning's own loggers write at this moment, so images land on the loss curves' step axis.

    Lightning logs with ``fit_loop.epoch_loop._batches_that_stepped``, which runs one behind ``trainer.global_step``
    while a batch ends and while validation runs (the optimizer has stepped, the counter not yet), and logs epoch-end
    training metrics at that counter minus one (``on_train_epoch_end`` sees it already advanced). A training step
    logged at step ``s`` by ``self.log`` and an explanation fired after the same batch therefore share ``s``;
    ``every_n_steps=100`` writes at 99, 199, ... exactly like ``log_every_n_steps=100``. Falls back to
    ``trainer.global_step`` where the counter is missing.
    """
    counter = getattr(getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None), "_batches_that_stepped", None)
    if not isinstance(counter, int):
        return int(trainer.global_step)
    return max(0, counter - 1) if epoch_end else counter


def _scale_cell(cell: Cell, sy: float, sx: float, size: tuple[int, int]) -> Cell:
    """``cell``'s box on an image resized by ``(sy, sx)`` to ``size``: the covering pixel box, at least 1 px."""
    k, x0, y0, x1, y1 = cell
    left, top = min(int(x0 * sx), size[1] - 1), min(int(y0 * sy), size[0] - 1)
    right = max(left + 1, min(size[1], math.ceil(x1 * sx)))
    bottom = max(top + 1, min(size[0], math.ceil(y1 * sy)))
    return (k, left, top, right, bottom)


class ProbeMonitor(_CallbackBase):
    """Base class of the probelens monitors (framework-free core).

    The classes in ``probelens.callbacks`` import neither ``pytorch_lightning`` nor ``lightning``; the monitors users
    attach to a Trainer are their thin subclasses in :mod:`probelens.pl` (``pytorch_lightning.Callback``) and
    :mod:`probelens.lightning` (``lightning.pytorch.Callback``), which ``probelens.GradCAMMonitor`` etc. resolve to.

    Args:
        probe: the probe set to explain (``None`` for monitors that need no images, such as filters).
        every_n_epochs: fire at the end of every n-th epoch (``None`` to disable).
        every_n_steps: fire every n optimizer steps instead (takes precedence over ``every_n_epochs``).
        probe_size: with ``probe=None``, the monitor builds its probe set when training starts, from the validation
            data (else the training data) with :meth:`ProbeSet.from_dataset`: this many images, class-balanced,
            with the dataset's ``mean``/``std``/``class_names`` attributes when it has them. Monitors with the same
            size and seed share one probe set (and one pass). This is what a LightningCLI config uses.
        probe_seed: the seed of that pick.
        log_at_start: also fire once when training starts (step 0), to record the untrained baseline.
        max_image_side: images larger than this (pixels, longer side) are downscaled before they are written, which
            caps the event-file bytes per image; ``None`` writes them at full size.
        output_transform: maps the model's output to class scores ``[N, K]`` (e.g. ``lambda out: out["scores"]``);
            by default a tensor is taken as is, a mapping's ``"logits"`` entry, an object's ``.logits`` attribute or
            a tuple's first element. A single logit per image (``[N]`` or ``[N, 1]``, a binary head) is read as the
            two class scores ``(-z/2, z/2)``, whose softmax is ``(1 - sigmoid(z), sigmoid(z))``. Anything else is
            refused when training starts.
        name: a label for warnings, the checkpoint state key and the cost/failure scalars (defaults to the class
            name). When given, it also enters every tag after its first segment (``probelens/<name>/gradcam/...``,
            ``shortcut/<name>/score``), so two monitors of one class can run side by side. Monitors on one Trainer
            must have distinct names (checked at setup).

    When it fires: by default at the end of validation (sanity check skipped); without a validation loop, at the end
    of the training epoch. Each firing runs on global rank 0 only, on the unwrapped module (with sharded parameters,
    FSDP: on every rank through the sharded model, rank 0 writing; see ``docs/distributed.md``), and logs the
    monitor's own cost as ``probelens/cost_ms/<name>``.

    After ``fit``: ``trainer.validate`` and ``trainer.test`` fire once at their end and write under a stage prefix
    (``validate/probelens/gradcam/...``, ``test/shortcut/score``), so they never write a second image at a
    (tag, step) that training already wrote; a second ``validate`` at the same step is skipped. ``predict`` never
    fires. A monitor passed to another Trainer attaches to it: its sink, log dir, probe built from the trainer's data,
    step bookkeeping and history (filmstrip, drift, verdict) start afresh for that run.

    Subclasses implement :meth:`_configure` (resolve the layers, register what the shared pass must compute; raise on
    misconfiguration), :meth:`_log` (compute and write one step) and, where they keep history across firings,
    :meth:`_reset_history`; :meth:`_after_fire` runs on every rank after each firing. The firing path itself
    (``_fire``, ``setup``, ``_ensure_configured``, ``_image``, ``_text``, ``_log_scalars``) cannot be overridden.
    """

    _SEALED: ClassVar[tuple[str, ...]] = (
        "_fire",
        "setup",
        "_ensure_configured",
        "_image",
        "_text",
        "_log_scalars",
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        overridden = [name for name in ProbeMonitor._SEALED if name in cls.__dict__]
        if overridden:
            raise TypeError(
                f"{cls.__qualname__} overrides {overridden}, which belong to the one firing path of every monitor; "
                "extend it through _configure, _log, _reset_history and _after_fire instead"
            )

    def __init__(
        self,
        probe: ProbeSet | None = None,
        *,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        probe_size: int = 16,
        probe_seed: int = 0,
        log_at_start: bool = False,
        max_image_side: int | None = 1024,
        output_transform: OutputTransform | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        if probe is not None and not isinstance(probe, ProbeSet):
            raise TypeError(
                f"{owner}: probe must be a probelens.ProbeSet, got {type(probe).__name__}; build one with "
                "ProbeSet(images, targets) or ProbeSet.from_dataset(val_dataset, num_samples=16)"
            )
        fix = "every_n_epochs=None fires on every_n_steps only"
        check_int(owner, "every_n_epochs", every_n_epochs, none_ok=True, fix=fix)
        check_int(owner, "every_n_steps", every_n_steps, none_ok=True)
        check_bool(owner, "log_at_start", log_at_start)
        if every_n_epochs is None and every_n_steps is None and not log_at_start:
            raise ValueError(
                f"{owner}: every_n_epochs and every_n_steps are both None, so the monitor would never fire; set one "
                "of them (or log_at_start=True for a single picture of the untrained model)"
            )
        check_int(owner, "probe_size", probe_size)
        check_int(owner, "probe_seed", probe_seed, minimum=0)
        check_int(owner, "max_image_side", max_image_side, minimum=16, none_ok=True, fix="None writes full size")
        check_callable(owner, "output_transform", output_transform, "lambda out: out['scores']")
        self.name = check_name(owner, name) or owner
        self._custom_name = name is not None
        self.probe = probe
        self.probe_size = probe_size
        self.probe_seed = probe_seed
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.log_at_start = log_at_start
        self.max_image_side = max_image_side
        self.output_transform = output_transform
        self._probe_given = probe is not None
        # checkpointed state
        self.fire_count = 0
        self.failure_count = 0
        self.last_logged_step = -1
        # runtime state (per Trainer: see _attach)
        self._trainer: weakref.ref[Any] | None = None
        self._session: ProbeSession | None = None
        self._needs = _Needs()
        self._png_root: str | None = None
        self._stage = "fit"
        self._saved_fingerprint: str | None = None
        self._reset_run()  # subclasses set up their history in their own __init__ (with _reset_history)

    def _attach(self, trainer: Any) -> None:
        """Start afresh for ``trainer``: everything that belongs to one run (its sink, step bookkeeping, warn-once
        flags, a probe built from its data, the subclass's history). A checkpoint loaded after this restores the
        checkpointed part."""
        self._trainer = weakref.ref(trainer)
        self._reset_run()
        self._reset_history()

    def _reset_run(self) -> None:
        self._configured_for: int | None = None
        self._sink: ImageSink | None = None
        self.fire_count = 0
        self.failure_count = 0
        self.last_logged_step = -1
        self._stage_steps: dict[str, int] = {}
        self._batch_fired_global_step = -1
        self._val_fired_epoch = -1
        self._warned_failure = False
        self._warned_nonfinite = False
        self._caption_facts: dict[int, tuple[str, str, float]] = {}  # probe index -> (true, predicted, probability)
        if not self._probe_given and self.needs_probe:
            self.probe = None  # built again from this trainer's data

    # ------------------------------------------------------------------ identity and state
    def _generate_state_key(self, **kwargs: Any) -> str:
        """``ClassName{kwargs}``, as Lightning's ``Callback._generate_state_key`` (identity-only arguments)."""
        return f"{type(self).__qualname__}{kwargs!r}"

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "fire_count": self.fire_count,
            "failure_count": self.failure_count,
            "last_logged_step": self.last_logged_step,
            "probe_fingerprint": self.probe.fingerprint() if self.probe is not None else None,
            "probe_indices": None if self.probe is None or self.probe.indices is None else self.probe.indices.tolist(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.fire_count = int(state_dict.get("fire_count", 0))
        self.failure_count = int(state_dict.get("failure_count", 0))
        self.last_logged_step = int(state_dict.get("last_logged_step", -1))
        self._saved_fingerprint = state_dict.get("probe_fingerprint")
        self._check_fingerprint()

    def _check_fingerprint(self) -> None:
        saved = self._saved_fingerprint
        if self.probe is not None and saved is not None and saved != self.probe.fingerprint():
            rank_zero_warn(
                f"{self.name}: the probe set differs from the one in the checkpoint (fingerprint {saved} vs "
                f"{self.probe.fingerprint()}); maps before and after the resume are not comparable. Rebuild the probe "
                "with the same dataset, num_samples and seed."
            )

    # ------------------------------------------------------------------ subclass API
    def _configure(self, pl_module: nn.Module) -> None:
        """Resolve and validate the configuration against the model; register needs. Raise on misconfiguration."""

    def _log(self, step: int, pl_module: nn.Module, trainer: pl.Trainer) -> None:
        """Compute and log everything for one step."""
        raise NotImplementedError

    def _reset_history(self) -> None:
        """Forget what earlier firings of this run left (filmstrip frames, first maps, verdict): a new run starts."""

    def _after_fire(self, trainer: pl.Trainer) -> None:
        """Runs on every rank after each firing (also where rank 0 alone computed), e.g. to broadcast a decision."""

    # ------------------------------------------------------------------ helpers for subclasses
    def _example(self, model: nn.Module) -> Tensor | None:
        """The first probe image ``[1,C,H,W]`` on the model's device, in its dtype (``None`` without a probe)."""
        if self.probe is None:
            return None
        x = self.probe.images[:1]
        param = next(iter(model.parameters()), None)
        if param is not None and param.dtype.is_floating_point:
            x = x.to(device=param.device, dtype=param.dtype)
        elif param is not None:
            x = x.to(device=param.device)
        return x

    def _resolve_layers(self, model: nn.Module, layers: LayerSpec) -> dict[str, nn.Module]:
        return resolve_layers(model, layers, example_input=self._example(unwrap_compiled(model)))

    def _require(
        self,
        layers: dict[str, nn.Module],
        *,
        gradients: bool,
        input_gradient: bool,
        target_sets: set[str],
    ) -> None:
        assert self.probe is not None and self._session is not None
        transform = self.output_transform
        self._needs = _Needs(dict(layers), gradients, input_gradient, set(target_sets), transform)
        self._session.register(
            self.probe,
            layers,
            gradients=gradients,
            input_gradient=input_gradient,
            target_sets=target_sets,
            output_transform=transform,
        )

    def _pass(self, pl_module: nn.Module, step: int) -> ProbePass:
        assert self.probe is not None and self._session is not None
        return self._session.get(unwrap_compiled(pl_module), self.probe, step, self._needs)

    def _scores(self, output: Any) -> Tensor:
        """The class scores ``[N, K]`` in a model output, or a ``ValueError`` that shows ``output_transform=``."""
        try:
            return class_scores(output, self.output_transform)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{self.name}: {err}") from err
        except Exception as err:  # the user's transform itself failed
            raise ValueError(
                f"{self.name}: output_transform raised {type(err).__name__}: {err} on the model's output of type "
                f"{type(output).__name__}; it must map that output to class scores [N, num_classes]"
            ) from err

    def _check_probe_fits(self, model: nn.Module) -> None:
        """One forward of one probe image, so a probe that does not fit the model, or an output that is not class
        scores, fails before training starts."""
        if self.probe is None:
            return
        from probelens.methods._hooks import probe_context

        net = unwrap_compiled(model)
        x = self._example(net)
        try:
            with probe_context(net), torch.no_grad():
                output = net(x)
        except Exception as err:
            raise ValueError(
                f"{self.name}: the model cannot run on the probe images (shape {tuple(self.probe.images.shape)}): "
                f"{err}. Build the probe from the same dataset and transforms the model trains on."
            ) from err
        scores = self._scores(output)
        top = int(self.probe.targets.max())
        if top >= scores.shape[1]:
            raise ValueError(
                f"{self.name}: probe target {top} is out of range: the model outputs {scores.shape[1]} classes. "
                "Check the probe labels (and class_names) against the model's head."
            )

    def _check_spatial(
        self,
        model: nn.Module,
        layers: dict[str, nn.Module],
        needs_grad: bool = False,
        reshape: ReshapeSpec = None,
    ) -> dict[str, tuple[Layout, tuple[int, ...]]]:
        """Raise at setup if a selected layer's output is not a map (NCHW, channels-last or tokens on a grid, or
        what ``reshape`` makes of it), is ambiguous, never runs or, with ``needs_grad``, gets no gradient; returns
        each layer's layout and the ``(C, h, w)`` of its map for one image."""
        from probelens.methods._hooks import ActivationCapture, probe_context
        from probelens.methods.layers import conv_layers

        if self.probe is None:
            return {}
        net = unwrap_compiled(model)
        x = self._example(net)
        assert x is not None
        capture = ActivationCapture(layers)
        try:
            with probe_context(net), torch.set_grad_enabled(needs_grad), capture:
                net(x.detach().clone().requires_grad_(needs_grad))
        except TypeError as err:
            raise ValueError(f"{self.name}: {err}") from err
        if needs_grad:
            detached = [name for name, out in capture.outputs.items() if not out.requires_grad]
            if detached:
                raise ValueError(
                    f"{self.name}: no gradient reaches layers {detached} (gradient checkpointing with "
                    "use_reentrant=True around them, or no_grad/detach in the forward); use "
                    "checkpoint(..., use_reentrant=False) or pick layers outside the checkpointed block"
                )
        missing = [name for name in layers if name not in capture.outputs]
        if missing:
            raise ValueError(
                f"{self.name}: layers {missing} never run in the forward pass; pick layers on the path "
                "from input to output (layer_summary(model, x) lists them)"
            )
        try:
            layouts = layouts_for(net, x, layers, reshape, outputs=capture.outputs)
        except ValueError as err:
            records = trace_layers(net, x)
            if not conv_layers(net) and not any(r.spatial for r in records.values()):
                raise ValueError(
                    f"{self.name}: {type(net).__name__} has no 2-D convolution, so no layer outputs a spatial "
                    "feature map; SaliencyMonitor and OcclusionMonitor explain any image model from its input"
                ) from err
            raise ValueError(f"{self.name}: {err}") from err
        read = [f"{name} as {layout.describe()}" for name, layout in layouts.items() if layout.kind != "nchw"]
        if read:  # say how a layer that is not an NCHW map is read (prefix tokens dropped, a user reshape)
            rank_zero_info(f"{self.name}: reading {'; '.join(read)}")
        return {name: (layouts[name], tuple(layouts[name].to_nchw(capture.outputs[name]).shape[1:])) for name in layers}

    def _finite(self, values: Tensor, what: str, step: int) -> Tensor:
        """``values`` with NaN/Inf replaced by 0; the first time it happens, a warning says where."""
        clean, replaced = sanitize(values)
        if replaced and not self._warned_nonfinite:
            self._warned_nonfinite = True
            rank_zero_warn(
                f"{self.name}: non-finite values (NaN/Inf) in the {what} at step {step} were replaced by 0 for "
                "display; the model's outputs or weights are probably diverging (check the loss and the learning rate)."
            )
        return clean

    def _tag(self, tag: str, named: bool = True) -> str:
        """``tag`` as written: the monitor's ``name`` after the first segment when one was given (``named``), and the
        stage first under ``validate``/``test`` (see the class docstring)."""
        if named and self._custom_name:
            head, _, rest = tag.partition("/")
            tag = f"{head}/{self.name}/{rest}" if rest else f"{head}/{self.name}"
        return tag if self._stage == "fit" else f"{self._stage}/{tag}"

    def _shown(self, limit: int | None) -> Tensor:
        """The probe indices a picture of at most ``limit`` images shows: interleaved by class
        (:meth:`ProbeSet.interleaved`), so every grid shows every class."""
        assert self.probe is not None
        order = self.probe.interleaved()
        return order if limit is None else order[:limit]

    def _image(
        self,
        tag: str,
        image: Tensor,
        step: int,
        boxes: Sequence[tuple[int, int, int, int]] = (),
        per_probe: int = 1,
        shown: Tensor | None = None,
    ) -> None:
        """Writes ``image``; ``boxes`` (from a grid's ``cell_boxes``, ``per_probe`` consecutive boxes per probe image,
        the images ``shown``, by default probe images 0, 1, ...) become the PNG's probe-image layout
        (:data:`probelens.render.CELLS_KEY`) that ``probelens export`` reads, keyed by probe index."""
        assert self._sink is not None
        index = list(range(len(boxes))) if shown is None else [int(i) for i in shown]
        cells = [(index[j // per_probe], *box) for j, box in enumerate(boxes)]
        side = max(image.shape[-2:])
        if self.max_image_side is not None and side > self.max_image_side:
            height, width = image.shape[-2:]
            scale = self.max_image_side / side
            size = (max(1, int(height * scale)), max(1, int(width * scale)))
            small = torch.nn.functional.interpolate(image[None].float(), size=size, mode="area")[0]
            image = small.round().clamp(0, 255).to(torch.uint8)
            cells = [_scale_cell(cell, size[0] / height, size[1] / width, size) for cell in cells]
        probe = self.probe.fingerprint() if self.probe is not None and cells else None
        facts = self._caption_facts
        predictions = [(k, *facts[k]) for k in dict.fromkeys(c[0] for c in cells) if k in facts]
        write_image(self._sink, self._tag(tag), image, step, ProbeCells(cells, probe, predictions))

    def _text(self, tag: str, text: str, step: int) -> None:
        assert self._sink is not None
        self._sink.add_text(self._tag(tag), text, step)

    def _log_scalars(self, trainer: pl.Trainer, metrics: dict[str, float], step: int, named: bool = True) -> None:
        tagged = {self._tag(key, named): value for key, value in metrics.items()}
        for logger in trainer.loggers:
            logger.log_metrics(tagged, step=step)

    # ------------------------------------------------------------------ Lightning hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._trainer is None or self._trainer() is not trainer:
            self._attach(trainer)  # a new run: nothing of the last Trainer's run carries over
        self._check_unique_name(trainer)
        # trainer.log_dir broadcasts under DDP: resolve it here, on every rank
        self._png_root = os.path.join(trainer.log_dir or trainer.default_root_dir, "probelens_images")
        self._configured_for = None  # configured again for this stage's module, sink resolved for this trainer
        self._sink = None

    def _check_unique_name(self, trainer: pl.Trainer) -> None:
        clash = [
            cb
            for cb in getattr(trainer, "callbacks", [])
            if isinstance(cb, ProbeMonitor) and cb is not self and cb.name == self.name
        ]
        if clash:
            other = clash[0]
            raise ValueError(
                f"two probelens monitors on this Trainer are named {self.name!r} ({self.state_key} and "
                f"{other.state_key}), so they would write the same tags (probelens/cost_ms/{self.name} and their "
                f"images) and the same checkpoint state; give each its own name=, e.g. "
                f"{type(self).__name__}(..., name='{self.name.lower()}_1') and name='{self.name.lower()}_2'"
            )

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._session is not None:
            self._session.release()  # no pass tensor outlives the run

    needs_probe = True  # FilterMonitor shows weights only

    def _ensure_configured(self, trainer: pl.Trainer, pl_module: nn.Module, required: bool = False) -> bool:
        """Configure once per module and stage; returns False while a probe set cannot be built yet (no data)."""
        pl_module = sharded_root(trainer) or pl_module  # sharded parameters: run through the FSDP root, on all ranks
        if self._configured_for == id(pl_module):
            return True
        if self.probe is None and self.needs_probe:
            self.probe = _probe_from_trainer(trainer, self.probe_size, self.probe_seed, self.name)
            if self.probe is None:
                if required:
                    raise ValueError(
                        f"{self.name}: no probe set was given and the trainer has no map-style validation or training "
                        "dataset (one with __len__ and __getitem__; an IterableDataset cannot be sampled) to build one "
                        "from; pass probe=ProbeSet.from_dataset(val_dataset, num_samples=16) or "
                        "ProbeSet(images, targets)"
                    )
                return False
            self._check_fingerprint()
        self._session = session_for(unwrap_compiled(pl_module))
        self._check_probe_fits(pl_module)
        self._configure(pl_module)
        if self.probe is not None and self.needs_probe and not is_sharded(pl_module):
            net = unwrap_compiled(pl_module)
            example = self._example(net)
            assert example is not None
            self._session.check_memory(net, self.probe, self.output_transform, example)
        self._sink = self._make_sink(trainer)
        self._configured_for = id(pl_module)
        self._log_architecture(trainer, pl_module)
        return True

    def _log_architecture(self, trainer: pl.Trainer, pl_module: nn.Module) -> None:
        """Once per trainer: a text table of the layers monitors can target (name, type, shape, params, RF)."""
        sharded = is_sharded(pl_module)  # then the summary's forward pass is collective: every rank runs it
        if self.probe is None or trainer in _ARCHITECTURE_LOGGED or not (trainer.is_global_zero or sharded):
            return
        if getattr(trainer, "ckpt_path", None):  # a resumed run: the table is in the log dir already
            _ARCHITECTURE_LOGGED.add(trainer)
            return
        _ARCHITECTURE_LOGGED.add(trainer)
        from probelens.methods.summary import layer_summary, summary_markdown

        try:
            net = unwrap_compiled(pl_module)
            example = self._example(net)
            assert example is not None
            rows = sharded_layer_summary(net, example) if sharded else layer_summary(net, example)
            table = summary_markdown(rows, self.probe.image_size)
            assert self._sink is not None
            if trainer.is_global_zero:
                self._sink.add_text("probelens/architecture", table, log_step(trainer))
        except Exception as err:  # a summary is a convenience: never let it stop training
            rank_zero_warn(f"probelens: could not log the architecture table ({type(err).__name__}: {err})")

    def _make_sink(self, trainer: pl.Trainer) -> ImageSink:
        """Each attached logger that takes images gets them (TensorBoard, W&B, MLflow, registered ones: see
        ``callbacks/_sinks.py``); loggers that take only scalars, such as ``CSVLogger``, are skipped; with none left,
        PNG files under the log dir and one warning per trainer."""
        global _TB_SAMPLING_NOTICE_SHOWN
        sinks = sinks_for(trainer.loggers)
        if any(isinstance(sink, TensorBoardSink) for sink in sinks) and not _TB_SAMPLING_NOTICE_SHOWN:
            _TB_SAMPLING_NOTICE_SHOWN = True
            rank_zero_info(
                "probelens: TensorBoard shows only 10 sampled steps per image tag by default; start it with "
                "`tensorboard --logdir <dir> --samples_per_plugin images=1000` to see every logged step."
            )
        if sinks:
            return sinks[0] if len(sinks) == 1 else FanOutSink(sinks)
        root = self._png_root or os.path.join(trainer.default_root_dir, "probelens_images")
        if trainer not in _PNG_FALLBACK_WARNED:
            _PNG_FALLBACK_WARNED.add(trainer)
            rank_zero_warn(
                "probelens: no TensorBoardLogger (nor a WandbLogger or MLflowLogger) is attached, so images are "
                f"written as PNG files under {root}. Pass logger=TensorBoardLogger(...) to the Trainer to see them "
                "next to the loss curves."
            )
        return PngSink(root)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._ensure_configured(trainer, pl_module)

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._ensure_configured(trainer, pl_module)

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._ensure_configured(trainer, pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._ensure_configured(trainer, pl_module, required=True)
        self._check_schedule(trainer)
        if self.log_at_start and trainer.global_step == 0:
            self._fire(trainer, pl_module)

    def _check_schedule(self, trainer: pl.Trainer) -> None:
        """Warn when the schedule cannot fire within the run (``every_n_steps`` beyond its optimizer steps,
        ``every_n_epochs`` beyond ``max_epochs``): otherwise the user learns it from an empty dashboard."""
        every: int | None
        runs: float | None
        if self.every_n_steps is not None:
            try:
                total = float(trainer.estimated_stepping_batches)
            except Exception:  # an unsized loader: nothing to compare with
                total = math.inf
            beyond = math.isfinite(total) and self.every_n_steps > total
            option, every, runs, unit = "every_n_steps", self.every_n_steps, total, "optimizer steps"
        else:
            max_epochs = trainer.max_epochs
            every = self.every_n_epochs
            beyond = every is not None and max_epochs is not None and 0 <= max_epochs < every
            option, runs, unit = "every_n_epochs", max_epochs, "epochs"
        if beyond:
            rank_zero_warn(
                f"{self.name}: {option}={every} but this run has only {int(runs or 0)} {unit}, so the monitor never "
                f"fires{' after the start' if self.log_at_start else ''}; use a smaller {option}."
            )

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._session is not None:
            self._session.release()  # the model is about to change: a cached pass could only be stale memory

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        n = self.every_n_steps
        step = trainer.global_step
        # with accumulate_grad_batches > 1 the batches after an optimizer step see the same global_step: fire once
        if n is not None and step > 0 and step % n == 0 and step != self._batch_fired_global_step:
            self._batch_fired_global_step = step
            self._fire(trainer, pl_module)

    def _epoch_due(self, trainer: pl.Trainer) -> bool:
        n = self.every_n_epochs
        return self.every_n_steps is None and n is not None and (trainer.current_epoch + 1) % n == 0

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == "fit":  # TrainerFn is a str enum in both Lightning namespaces
            # a validation inside the epoch (val_check_interval < 1) is not the epoch's end: an epoch schedule waits
            # for the validation after the last batch, or for on_train_epoch_end when there is none
            progress = getattr(getattr(trainer.fit_loop, "epoch_loop", None), "batch_progress", None)
            at_epoch_end = bool(getattr(progress, "is_last_batch", True))
            if self._epoch_due(trainer) and at_epoch_end:
                self._val_fired_epoch = trainer.current_epoch
                self._fire(trainer, pl_module)
        elif trainer.state.fn == "validate":
            self._fire(trainer, pl_module)

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fire(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # validation at epoch end runs before this hook: fire here only if it did not this epoch
        if self._epoch_due(trainer) and self._val_fired_epoch != trainer.current_epoch:
            self._fire(trainer, pl_module, epoch_end=True)

    # ------------------------------------------------------------------ firing
    def _record_failure(self, trainer: pl.Trainer, step: int, what: str) -> None:
        """Count a failed firing, warn about the first one, and log the count as ``probelens/failures/<name>``."""
        self.failure_count += 1
        if not self._warned_failure:
            self._warned_failure = True
            rank_zero_warn(
                f"{self.name} failed at step {step} {what}. Training goes on; further failures are counted silently "
                f"in the scalar {self._tag(f'probelens/failures/{self.name}', named=False)}."
            )
        self._log_scalars(trainer, {f"probelens/failures/{self.name}": float(self.failure_count)}, step, named=False)

    def _record_success(self, trainer: pl.Trainer, step: int, start: float) -> None:
        """Count a firing begun at ``time.perf_counter()`` ``start``; log its cost as ``probelens/cost_ms/<name>``."""
        self.fire_count += 1
        cost_ms = (time.perf_counter() - start) * 1000.0
        self._log_scalars(trainer, {f"probelens/cost_ms/{self.name}": cost_ms}, step, named=False)

    @final
    def _fire(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch_end: bool = False) -> None:
        """The one firing path: every hook that fires calls this, on every rank, and then :meth:`_after_fire`."""
        self._fire_step(trainer, pl_module, epoch_end)
        self._after_fire(trainer)

    def _fire_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch_end: bool) -> None:
        fn = str(getattr(trainer.state.fn, "value", trainer.state.fn))
        self._stage = fn if fn in ("validate", "test") else "fit"
        step = log_step(trainer, epoch_end=epoch_end)
        last = self.last_logged_step if self._stage == "fit" else self._stage_steps.get(self._stage, -1)
        if step == last:  # never two pictures at one (tag, step)
            if self._stage != "fit" and trainer.is_global_zero:
                # trainer.validate/test at a step already written: e.g. a second ckpt_path, whose weights Lightning
                # loads without restoring the step counter. Say so rather than skip in silence.
                rank_zero_warn(
                    f"{self.name}: {self._stage} pictures for step {step} were already written in this run; this "
                    f"{self._stage} writes none (never two images at one tag and step). To keep both, give this call "
                    "its own logger (e.g. TensorBoardLogger(..., version='ckpt-b')) on a new Trainer."
                )
            return
        if self._stage == "fit":
            self.last_logged_step = step
        else:
            self._stage_steps[self._stage] = step
        sharded = sharded_root(trainer)
        if sharded is not None:  # FSDP: every rank computes together, rank 0 writes (see callbacks/_distributed.py)
            fire_sharded(self, trainer, sharded, step)
            return
        if not trainer.is_global_zero:
            return
        self._ensure_configured(trainer, pl_module, required=True)
        start = time.perf_counter()
        self._caption_facts = {}  # this firing's captions only: never a prediction of an earlier step
        try:
            self._log(step, pl_module, trainer)
        except Exception as err:  # an explanation must never take the training run down
            self._record_failure(trainer, step, f"and was skipped ({type(err).__name__}: {err})")
        else:
            self._record_success(trainer, step, start)

    # ------------------------------------------------------------------ captions
    def _captions(self, result: ProbePass, shown: Tensor, target_set: str | None = None) -> list[str]:
        """Per shown probe image: its index, true label, prediction and probability."""
        assert self.probe is not None
        probs = result.probabilities
        preds = result.predictions
        captions = []
        for i in (int(j) for j in shown):
            true = self.probe.class_name(int(self.probe.targets[i]))
            pred = int(preds[i])
            # what the caption says, also recorded in the grid's PNG for viewers (see _image)
            self._caption_facts[i] = (true, self.probe.class_name(pred), float(probs[i, pred]))
            line = f"#{i} true: {true}\npred: {self.probe.class_name(pred)} {float(probs[i, pred]):.2f}"
            if target_set == "label":
                t = int(result.targets["label"][i])
                line += f"\nmap for: {self.probe.class_name(t)}"
            captions.append(line)
        return captions


_LAZY_PROBES: weakref.WeakKeyDictionary[Any, dict[tuple[int, int, int], ProbeSet]] = weakref.WeakKeyDictionary()


def _probe_from_trainer(trainer: Any, size: int, seed: int, owner: str = "probelens") -> ProbeSet | None:
    """A probe set picked from the trainer's validation (else test, else training) dataset, shared per trainer."""
    dataset, source = None, ""
    for attr in ("val_dataloaders", "test_dataloaders", "train_dataloader"):
        loaders = getattr(trainer, attr, None)
        if loaders is None:
            continue
        loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
        dataset = getattr(loader, "dataset", None)
        if dataset is not None and hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
            source = attr.split("_")[0]
            break
        dataset = None
    if dataset is None:
        return None
    available = len(dataset)
    if available < size:
        rank_zero_warn(
            f"{owner}: probe_size={size} but the {source} dataset has only {available} images, so the probe set "
            f"holds all {available}; pass probe_size<={available} to silence this."
        )
        size = available
    cache = _LAZY_PROBES.setdefault(trainer, {})
    key = (id(dataset), size, seed)
    if key not in cache:
        mean, std = getattr(dataset, "mean", None), getattr(dataset, "std", None)
        if not (isinstance(mean, (tuple, list)) and isinstance(std, (tuple, list))):
            mean = std = None
        cache[key] = ProbeSet.from_dataset(dataset, num_samples=size, seed=seed, mean=mean, std=std)
    return cache[key]


def target_sets_for(target: str, owner: str = "probelens") -> list[str]:
    """``"pred"`` -> ``["pred"]``, ``"label"`` -> ``["label"]``, ``"both"`` -> ``["pred", "label"]``."""
    check_choice(owner, "target", target, TARGET_MODES)
    return ["pred", "label"] if target == "both" else [target]
