"""The base of every monitor: its options, the Lightning hooks, and the one firing path.

Everything else a monitor needs is a concern of its own module (see :mod:`probelens.core`): when to fire
(:mod:`~probelens.core.schedule`), the probe set from the trainer's data (:mod:`~probelens.core.probe_source`), what
to write and how it is named (:mod:`~probelens.core.writer`, over one sink per logger: :mod:`~probelens.core.sinks`),
the setup checks (:mod:`~probelens.core.checks`), the layer table (:mod:`~probelens.core.architecture`), the
checkpointed counters (:mod:`~probelens.core.state`), the run's once-only state (:mod:`~probelens.core.run`) and
the shared pass of one model (:mod:`~probelens.core.session`).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import time
import weakref
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, final, get_args

from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from probelens.core.architecture import log_architecture
from probelens.core.checks import check_probe_fits, check_spatial, model_trace, probe_example
from probelens.core.options import check_callable, check_choice, check_int, check_key, check_name
from probelens.core.probe_source import probe_from_trainer
from probelens.core.run import Run, SharedRun, shared_run
from probelens.core.schedule import Schedule, log_step, stage_of
from probelens.core.session import PassNeeds, SharedPass
from probelens.core.sharded import sharded_root
from probelens.core.sinks import sink_for_trainer
from probelens.core.state import MonitorState
from probelens.core.writer import MonitorWriter, layer_labels
from probelens.methods.engine import OutputTransform, ProbePass
from probelens.methods.layers import LayerSpec, resolve_layers, unwrap_compiled
from probelens.methods.layout import Layout, ReshapeSpec
from probelens.methods.sharded import failed_ranks, failure_messages, full_weights, is_sharded
from probelens.probe import ProbeSet
from probelens.render import sanitize

TargetMode = Literal["pred", "label", "both"]
"""Which class a map explains: the prediction, the true label, or both (two maps per image)."""
TARGET_MODES: tuple[str, ...] = get_args(TargetMode)


class MonitorCore:
    """Base class of the probelens monitors (framework-free core).

    This class and its subclasses in :mod:`probelens.core` import neither ``pytorch_lightning`` nor ``lightning``;
    the monitors users attach to a Trainer are their subclasses in :mod:`probelens.pl` (``pytorch_lightning``) and
    :mod:`probelens.lightning` (``lightning.pytorch``), which ``probelens.callbacks`` and ``probelens.GradCAMMonitor``
    etc. resolve to. Custom monitors subclass ``probelens.ProbeMonitor``.

    Args:
        probe: the probe set to explain (``None`` for monitors that need no images, such as filters).
        every_n_epochs: fire at the end of every n-th epoch (``None`` to disable).
        every_n_steps: fire every n optimizer steps instead (takes precedence over ``every_n_epochs``).
        probe_size: with ``probe=None``, the monitor builds its probe set when training starts, from the validation
            data (else the training data) with :meth:`ProbeSet.from_dataset`: this many images, class-balanced,
            with the dataset's ``mean``/``std``/``class_names`` attributes when it has them. Monitors with the same
            size and seed share one probe set (and one pass). This is what a LightningCLI config uses.
        probe_seed: the seed of that pick.
        probe_input_key, probe_target_key: with ``probe=None`` and dataset items that are dicts, the keys of the image
            and of the class index (default: what ``ProbeSet.from_dataset`` knows, e.g. ``image``/``label``, Hugging
            Face's ``pixel_values``/``labels``); for a LightningCLI config, where no ``ProbeSet`` can be built.
        log_at_start: also fire once when training starts (step 0), to record the untrained baseline.
        max_image_side: images larger than this (pixels, longer side) are downscaled before they are written, which
            caps the event-file bytes per image; ``None`` writes them at full size.
        max_bytes_per_firing: a budget for the PNG bytes one firing writes (``None``: none). When a firing wrote
            more, the next ones write their pictures smaller (the side halved, down to 1/8, as ``sqrt(budget / bytes)``
            asks), and larger again when there is room; measured on what the sinks wrote (TensorBoard, PNG
            files, W&B, MLflow). ``docs/measure_bytes.py`` gives each monitor's bytes at its defaults.
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

    Extending (public hooks, documented in the README's "Your own monitor"): a subclass implements
    :meth:`configure` (resolve the layers, register what the shared pass must compute; raise on misconfiguration),
    :meth:`explain` (compute one step and hand the pictures, texts and scalars to :attr:`writer` as values) and, where
    it keeps history across firings, :meth:`reset_history`; :meth:`at_train_start` runs when training starts (the data
    loaders attached); :meth:`after_firing` runs on every rank after each
    firing, and :meth:`at_fit_end` on rank 0 when training ends. The firing path (``_fire``, the Lightning hooks that
    call it, ``setup``, ``_ensure_configured``) cannot be overridden, and the hooks' names before 0.3 (``_log``,
    ``_configure``, ...) are refused with their new name: both checked when the subclass is defined.
    """

    _SEALED: ClassVar[tuple[str, ...]] = (
        "_fire",
        "setup",
        "_ensure_configured",
        "on_train_start",
        "on_train_batch_start",
        "on_train_batch_end",
        "on_validation_end",
        "on_test_end",
        "on_train_epoch_end",
        "on_train_end",
        "on_exception",
        "teardown",
    )

    _RENAMED: ClassVar[dict[str, str]] = {
        "_configure": "configure",
        "_log": "explain",
        "_reset_history": "reset_history",
        "_after_fire": "after_firing",
        "_at_fit_end": "at_fit_end",
    }

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        overridden = [name for name in MonitorCore._SEALED if name in cls.__dict__]
        if overridden:
            raise TypeError(
                f"{cls.__qualname__} overrides {overridden}, which belong to the one firing path of every monitor; "
                "extend it through configure, explain, reset_history, at_train_start, after_firing and at_fit_end "
                "instead"
            )
        old = {name: new for name, new in MonitorCore._RENAMED.items() if name in cls.__dict__}
        if old:  # a hook under its old name would never be called: say so where the class is defined
            renames = ", ".join(f"{name} -> {new}" for name, new in old.items())
            raise TypeError(
                f"{cls.__qualname__} defines {sorted(old)}, the extension hooks' names before probelens 0.3, which "
                f"are no longer called; rename them ({renames}), same arguments"
            )

    needs_probe: ClassVar[bool] = True  # FilterMonitor shows weights only

    def __init__(
        self,
        probe: ProbeSet | None = None,
        *,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        probe_size: int = 16,
        probe_seed: int = 0,
        probe_input_key: str | None = None,
        probe_target_key: str | None = None,
        log_at_start: bool = False,
        max_image_side: int | None = 1024,
        max_bytes_per_firing: int | None = None,
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
        self.schedule = Schedule(owner, every_n_epochs, every_n_steps, log_at_start)
        check_int(owner, "probe_size", probe_size)
        check_int(owner, "probe_seed", probe_seed, minimum=0)
        check_int(owner, "max_image_side", max_image_side, minimum=16, none_ok=True, fix="None writes full size")
        check_int(
            owner, "max_bytes_per_firing", max_bytes_per_firing, minimum=1024, none_ok=True, fix="None: no budget"
        )
        check_callable(owner, "output_transform", output_transform, "lambda out: out['scores']")
        self.name = check_name(owner, name) or owner
        self.probe = probe
        self.probe_size = probe_size
        self.probe_seed = probe_seed
        self.probe_input_key = check_key(owner, "probe_input_key", probe_input_key)
        self.probe_target_key = check_key(owner, "probe_target_key", probe_target_key)
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.log_at_start = log_at_start
        self.max_image_side = max_image_side
        self.output_transform = output_transform
        self._probe_given = probe is not None
        self.max_bytes_per_firing = max_bytes_per_firing
        self.writer = MonitorWriter(self.name, name is not None, max_image_side, max_bytes_per_firing)
        """Where :meth:`explain` writes its pictures, text and scalars."""
        self.state = MonitorState()
        self.layer_tags: dict[str, str] = {}
        """The tag segment of each monitored layer (its name, or its depth and name where names do not sort)."""
        self._trainer: weakref.ref[Any] | None = None
        self._run: SharedRun | None = None
        """The run this monitor is attached to, shared with the other monitors of its Trainer (:func:`shared_run`)."""
        self._shared: SharedPass | None = None
        self._needs = PassNeeds()
        self._png_root: str | None = None
        self._reset_run()  # subclasses set up their history in their own __init__ (with reset_history)

    def __getstate__(self) -> dict[str, Any]:
        """What ``pickle``/``copy.deepcopy`` keep: the options, the probe, the checkpointed counters and the history;
        not the run (the trainer, its sink and event file, the shared pass), which the copy gets afresh from the Trainer
        it is attached to."""
        state = self.__dict__.copy()
        state["_trainer"] = None
        state["_run"] = None
        state["_shared"] = None
        state["_configured_for"] = None
        state["writer"] = MonitorWriter(self.name, self.writer.named, self.max_image_side, self.max_bytes_per_firing)
        return state

    # ------------------------------------------------------------------ one run
    def _attach(self, trainer: Run) -> None:
        """Start afresh for ``trainer``: everything that belongs to one run (its sink, step bookkeeping, warn-once
        flags, a probe built from its data, the subclass's history). A checkpoint loaded after this restores the
        checkpointed part."""
        self._trainer = weakref.ref(trainer)
        self._reset_run()
        self.reset_history()

    def _reset_run(self) -> None:
        self._configured_for: int | None = None
        self.state = MonitorState()
        self.schedule.reset()
        self._warned_failure = False
        self._warned_nonfinite = False
        if not self._probe_given and self.needs_probe:
            self.probe = None  # built again from this trainer's data

    @property
    def fire_count(self) -> int:
        """Firings that wrote their pictures in this run."""
        return self.state.fire_count

    @property
    def failure_count(self) -> int:
        """Firings that failed in this run (each skipped; training went on)."""
        return self.state.failure_count

    @property
    def last_logged_step(self) -> int:
        """The last training step this monitor wrote (``-1`` before the first)."""
        return self.state.last_logged_step

    # ------------------------------------------------------------------ identity and checkpoint state
    def _generate_state_key(self, **kwargs: Any) -> str:
        """``ClassName{kwargs}``, as Lightning's ``Callback._generate_state_key`` (identity-only arguments)."""
        return f"{type(self).__qualname__}{kwargs!r}"

    @property
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)

    def state_dict(self) -> dict[str, Any]:
        return self.state.to_dict(self.probe)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.state.load(state_dict)
        self._check_fingerprint()

    def _check_fingerprint(self) -> None:
        saved = self.state.saved_fingerprint
        if self.probe is not None and saved is not None and saved != self.probe.fingerprint():
            rank_zero_warn(
                f"{self.name}: the probe set differs from the one in the checkpoint (fingerprint {saved} vs "
                f"{self.probe.fingerprint()}); maps before and after the resume are not comparable. Rebuild the probe "
                "with the same dataset, num_samples and seed."
            )

    # ------------------------------------------------------------------ the subclass hooks (public)
    def configure(self, pl_module: nn.Module) -> None:
        """Resolve and validate the configuration against the model (``self._map_layers``), register what the
        shared pass must compute (``self._require``); raise on misconfiguration. Called once per model and stage,
        before the first firing."""

    def explain(self, step: int, pl_module: nn.Module, trainer: Run) -> None:
        """Compute one step and hand the results to :attr:`writer` as values: ``writer.picture(Picture(...))`` (or
        ``captioned_grid(...)``), ``writer.text(...)``, ``writer.scalars(...)``. ``self._pass(pl_module, step)`` is
        the shared pass; ``trainer`` is the run (a Trainer, or a :class:`~probelens.loop.LoopRun`). Whatever is
        handed over is written only if this returns without an exception."""
        raise NotImplementedError

    def reset_history(self) -> None:
        """Forget what earlier firings of this run left (filmstrip frames, first maps, verdict): a new run starts."""

    def at_train_start(self, trainer: Run, pl_module: nn.Module) -> None:
        """Runs on every rank when training starts, after :meth:`configure` and before a ``log_at_start`` firing:
        the run's data loaders are attached by then, so this is where a monitor reads more of the trainer's data
        (``StrategyMonitor``'s discovery set) and refuses what it cannot use, before the first training step."""

    def after_firing(self, trainer: Run) -> None:
        """Runs on every rank after each firing (also where rank 0 alone computed), e.g. to broadcast a decision."""

    def at_fit_end(self, trainer: Run) -> None:
        """Runs on rank 0 when training ends, after the last firing: write what sums up the run and was held back
        (the Grad-CAM filmstrip). Writes through :attr:`writer` under the ``fit`` stage; never calls a collective."""

    # ------------------------------------------------------------------ helpers for subclasses
    def _example(self, model: nn.Module) -> Tensor | None:
        """The first probe image ``[1,C,H,W]`` on the model's device, in its dtype (``None`` without a probe)."""
        return None if self.probe is None else probe_example(model, self.probe)

    def _resolve_layers(self, model: nn.Module, layers: LayerSpec) -> dict[str, nn.Module]:
        net = unwrap_compiled(model)
        assert self._shared is not None, "layers are resolved once the monitor is configured"
        traces = self._shared.layer_traces
        records = model_trace(traces, net, self.probe) if self.probe is not None else None  # one trace per model
        return resolve_layers(model, layers, example_input=self._example(net), records=records)

    def _check_spatial(
        self, model: nn.Module, layers: dict[str, nn.Module], needs_grad: bool = False, reshape: ReshapeSpec = None
    ) -> dict[str, tuple[Layout, tuple[int, ...]]]:
        """See :func:`probelens.core.checks.check_spatial` (``{}`` without a probe)."""
        if self.probe is None:
            return {}
        assert self._shared is not None, "layers are checked once the monitor is configured"
        traces = self._shared.layer_traces
        return check_spatial(self.name, model, self.probe, layers, needs_grad, reshape, traces=traces)

    def _map_layers(
        self, model: nn.Module, spec: LayerSpec, *, needs_grad: bool = False, reshape: ReshapeSpec = None
    ) -> tuple[dict[str, nn.Module], dict[str, Layout]]:
        """The layers ``spec`` selects, checked to output maps (:meth:`_check_spatial`), in depth order, with their
        layouts; sets :attr:`layer_tags` (their tag segments, :func:`~probelens.core.writer.layer_labels`)."""
        layers = self._resolve_layers(model, spec)
        spatial = self._check_spatial(model, layers, needs_grad=needs_grad, reshape=reshape)
        ordered = {name: layers[name] for name in spatial} if spatial else layers
        self.layer_tags = layer_labels(list(ordered))
        renamed = [label for name, label in self.layer_tags.items() if label != name]
        if renamed:
            rank_zero_info(
                f"{self.name}: the layer names do not sort by depth, so their tags carry the depth first: "
                f"{', '.join(renamed)}"
            )
        return ordered, {name: layout for name, (layout, _) in spatial.items()}

    def _require(
        self, layers: dict[str, nn.Module], *, gradients: bool, input_gradient: bool, target_sets: set[str]
    ) -> None:
        """Register what the shared pass must compute for this monitor (at configure time)."""
        assert self.probe is not None and self._shared is not None
        transform = self.output_transform
        self._needs = PassNeeds(dict(layers), gradients, input_gradient, set(target_sets), transform)
        self._shared.register(
            self.probe,
            layers,
            gradients=gradients,
            input_gradient=input_gradient,
            target_sets=target_sets,
            output_transform=transform,
        )

    def _pass(self, pl_module: nn.Module, step: int) -> ProbePass:
        """The shared pass at this step (computed by the first monitor that asks, read by the others)."""
        assert self.probe is not None and self._shared is not None
        return self._shared.get(unwrap_compiled(pl_module), self.probe, step, self._needs)

    def _shown(self, limit: int | None) -> Tensor:
        """The probe indices a picture of at most ``limit`` images shows: interleaved by class
        (:meth:`ProbeSet.interleaved`), so every grid shows every class."""
        assert self.probe is not None
        order = self.probe.interleaved()
        return order if limit is None else order[:limit]

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

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: Run, pl_module: nn.Module, stage: str) -> None:
        module = type(trainer).__module__
        if module.split(".")[0] in ("lightning", "pytorch_lightning") and not hasattr(self, "on_sanity_check_start"):
            # a framework-free core on a Lightning Trainer: it lacks the Callback hooks, and Lightning would fail
            # later with a bare AttributeError
            raise TypeError(
                f"{type(self).__name__} is a framework-free monitor core (probelens.core), not a Lightning Callback; "
                "give a Trainer the callback: probelens.ProbeMonitor as the base of your own monitor (probelens.pl."
                "ProbeMonitor for the pytorch_lightning namespace) or a ready one such as probelens.GradCAMMonitor; "
                "the cores are for probelens.loop.Lens"
            )
        if self._trainer is None or self._trainer() is not trainer:
            self._attach(trainer)  # a new run: nothing of the last Trainer's run carries over
        self._runs(trainer)  # the run its sibling monitors hold, or a new one
        self._check_unique_name(trainer)
        # trainer.log_dir broadcasts under DDP: resolve it here, on every rank
        self._png_root = os.path.join(trainer.log_dir or trainer.default_root_dir, "probelens_images")
        self._configured_for = None  # configured again for this stage's module, sink resolved for this trainer

    def _check_unique_name(self, trainer: Run) -> None:
        clash = [
            cb
            for cb in getattr(trainer, "callbacks", [])
            if isinstance(cb, MonitorCore) and cb is not self and cb.name == self.name
        ]
        if clash:
            other = clash[0]
            raise ValueError(
                f"two probelens monitors on this Trainer are named {self.name!r} ({self.state_key} and "
                f"{other.state_key}), so they would write the same tags (probelens/cost_ms/{self.name} and their "
                f"images) and the same checkpoint state; give each its own name=, e.g. "
                f"{type(self).__name__}(..., name='{self.name.lower()}_1') and name='{self.name.lower()}_2'"
            )

    def _ensure_configured(self, trainer: Run, pl_module: nn.Module, required: bool = False) -> bool:
        """Configure once per module and stage; returns False while a probe set cannot be built yet (no data)."""
        pl_module = sharded_root(trainer) or pl_module  # sharded parameters: run through the FSDP root, on all ranks
        if self._configured_for == id(pl_module):
            return True
        if self.probe is None and self.needs_probe:
            self.probe = probe_from_trainer(
                trainer,
                self.probe_size,
                self.probe_seed,
                self.name,
                run=self._runs(trainer),
                input_key=self.probe_input_key,
                target_key=self.probe_target_key,
            )
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
        net = unwrap_compiled(pl_module)
        run = self._runs(trainer)
        self._shared = run.shared_pass(net)
        if self.probe is not None:
            check_probe_fits(self.name, pl_module, self.probe, self.output_transform)
        self.configure(pl_module)
        if self.probe is not None and self.needs_probe and not is_sharded(pl_module):
            self._shared.check_memory(net, self.probe, self.output_transform, probe_example(net, self.probe))
        png_root = self._png_root or os.path.join(trainer.default_root_dir, "probelens_images")
        self.writer.attach(sink_for_trainer(trainer, png_root, run), self.probe, trainer.loggers)
        self._configured_for = id(pl_module)
        if self.probe is not None:
            log_architecture(run, trainer, pl_module, self.probe, self.writer, self._shared.layer_traces)
        return True

    def _runs(self, trainer: Run) -> SharedRun:
        """The run of ``trainer`` (attached at :meth:`setup`; a hook called without it attaches now)."""
        if self._run is None or not self._run.is_for(trainer):
            self._run = shared_run(trainer)
        return self._run

    # ------------------------------------------------------------------ Lightning hooks
    def on_fit_start(self, trainer: Run, pl_module: nn.Module) -> None:
        self._ensure_configured(trainer, pl_module)

    def on_validation_start(self, trainer: Run, pl_module: nn.Module) -> None:
        self._ensure_configured(trainer, pl_module)

    def on_test_start(self, trainer: Run, pl_module: nn.Module) -> None:
        self._ensure_configured(trainer, pl_module)

    def on_train_start(self, trainer: Run, pl_module: nn.Module) -> None:
        self._ensure_configured(trainer, pl_module, required=True)
        self.at_train_start(trainer, pl_module)
        self.schedule.warn_if_never(trainer, self.name)
        if self.log_at_start and trainer.global_step == 0:
            self._fire(trainer, pl_module)

    def on_train_batch_start(self, trainer: Run, pl_module: nn.Module, batch: Any, batch_idx: int) -> None:
        if self._shared is not None:
            self._shared.release()  # the model is about to change: a cached pass could only be stale memory

    def on_train_batch_end(self, trainer: Run, pl_module: nn.Module, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.schedule.after_batch(trainer):
            self._fire(trainer, pl_module)

    def on_validation_end(self, trainer: Run, pl_module: nn.Module) -> None:
        if trainer.sanity_checking:
            return
        stage = stage_of(trainer)
        if stage == "validate" or (stage == "fit" and self.schedule.after_fit_validation(trainer)):
            self._fire(trainer, pl_module)

    def on_test_end(self, trainer: Run, pl_module: nn.Module) -> None:
        self._fire(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Run, pl_module: nn.Module) -> None:
        # validation at epoch end runs before this hook: fire here only if it did not this epoch
        if self.schedule.after_train_epoch(trainer):
            self._fire(trainer, pl_module, epoch_end=True)

    def on_train_end(self, trainer: Run, pl_module: nn.Module) -> None:
        if not trainer.is_global_zero or self._configured_for is None or self.writer.sink is None:
            return
        self.writer.begin("fit")
        self.writer.open()
        try:
            self.at_fit_end(trainer)
            self.writer.commit()
        except Exception as err:  # like a failed firing: warn once, count, let the run end normally
            self.writer.discard()
            self._record_failure(
                trainer, self.last_logged_step, f"at the end of training ({type(err).__name__}: {err})"
            )
        self._runs(trainer).flush()  # every picture of the run on disk when fit returns

    def on_exception(self, trainer: Run, pl_module: nn.Module, exception: BaseException) -> None:
        self.writer.discard()  # a firing the exception interrupted writes nothing
        try:  # Lightning does not call teardown after an exception: what was written reaches the disk, files close
            self._runs(trainer).close()
        except Exception as err:  # never mask the run's own exception
            rank_zero_warn(f"probelens: could not close its event files ({type(err).__name__}: {err})")

    def teardown(self, trainer: Run, pl_module: nn.Module, stage: str) -> None:
        if self._shared is not None:
            self._shared.release()  # no pass tensor outlives the run
        self._runs(trainer).close()  # the event files close (a later stage opens them again)

    # ------------------------------------------------------------------ the firing path
    @final
    def _fire(self, trainer: Run, pl_module: nn.Module, epoch_end: bool = False) -> None:
        """The one firing path: every hook that fires calls this, on every rank, and then :meth:`after_firing`."""
        stage, step = stage_of(trainer), log_step(trainer, epoch_end=epoch_end)
        if self.state.claim(stage, step):
            self.writer.begin(stage, step)
            sharded = sharded_root(trainer)
            if sharded is not None:  # FSDP: every rank computes together, rank 0 writes
                self._fire_sharded(trainer, sharded, step)
            elif trainer.is_global_zero:
                self._fire_rank_zero(trainer, pl_module, step)
        elif stage != "fit" and trainer.is_global_zero:
            # trainer.validate/test at a step already written: e.g. a second ckpt_path, whose weights Lightning
            # loads without restoring the step counter. Say so rather than skip in silence.
            rank_zero_warn(
                f"{self.name}: {stage} pictures for step {step} were already written in this run; this {stage} writes "
                "none (never two images at one tag and step). To keep both, give this call its own logger (e.g. "
                "TensorBoardLogger(..., version='ckpt-b')) on a new Trainer."
            )
        self.after_firing(trainer)

    def _fire_rank_zero(self, trainer: Run, pl_module: nn.Module, step: int) -> None:
        self._ensure_configured(trainer, pl_module, required=True)
        start = time.perf_counter()
        self.writer.open()
        try:
            self.explain(step, pl_module, trainer)
            self.writer.commit()
        except Exception as err:  # an explanation must never take the training run down
            self.writer.discard()
            self._record_failure(trainer, step, f"and was skipped ({type(err).__name__}: {err})")
        else:
            self._record_success(trainer, step, start)

    def _fire_sharded(self, trainer: Run, model: nn.Module, step: int) -> None:
        """One firing on the sharded ``model`` (see :mod:`probelens.core.sharded`): collective, entered by every
        rank at the same hook. Writes are held until the ranks agree that every one of them succeeded."""
        self._ensure_configured(trainer, model, required=True)
        rank_zero = bool(trainer.is_global_zero)
        weights_only = not self.needs_probe  # FilterMonitor: weights are read, no forward pass
        start = time.perf_counter()
        error: Exception | None = None
        self.writer.open()  # held until every rank agrees that the firing succeeded
        try:
            with full_weights(model, rank0_only=True) if weights_only else contextlib.nullcontext():
                if rank_zero or not weights_only:  # with rank0_only, ranks != 0 hold shards: nothing to draw
                    self.explain(step, model, trainer)
        except Exception as err:  # reported below, once the ranks agree
            error = err
        failed = failed_ranks(error is None)
        if failed or not rank_zero:
            self.writer.discard()
        if failed:  # every rank sees the same list, so this gather is entered by all of them
            messages = failure_messages(None if error is None else f"{type(error).__name__}: {error}")
            self._record_failure(trainer, step, f"on rank(s) {failed} and was skipped on every rank ({messages[0]})")
            return
        if rank_zero:
            try:
                self.writer.commit()
            except Exception as err:  # rank 0 only, after the last collective: safe to fail alone
                self._record_failure(trainer, step, f"while writing its images ({type(err).__name__}: {err})")
                return
        self._record_success(trainer, step, start)

    def _record_failure(self, trainer: Run, step: int, what: str) -> None:
        """Count a failed firing, warn about the first one, and log the count as ``probelens/failures/<name>``."""
        self.state.failure_count += 1
        tag = f"probelens/failures/{self.name}"
        if not self._warned_failure:
            self._warned_failure = True
            rank_zero_warn(
                f"{self.name} failed at step {step} {what}. Training goes on; further failures are counted silently "
                f"in the scalar {self.writer.tag(tag, named=False)}."
            )
        self.writer.scalars({tag: float(self.state.failure_count)}, step, named=False)

    def _record_success(self, trainer: Run, step: int, start: float) -> None:
        """Count a firing begun at ``time.perf_counter()`` ``start``; log its cost as ``probelens/cost_ms/<name>``."""
        self.state.fire_count += 1
        cost_ms = (time.perf_counter() - start) * 1000.0
        self.writer.scalars({f"probelens/cost_ms/{self.name}": cost_ms}, step, named=False)


_BASE_OPTIONS: tuple[str, ...] = tuple(inspect.signature(MonitorCore.__init__).parameters)[2:]  # after self, probe


def base_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """The options :class:`MonitorCore` takes (schedule, probe building, writing, ``output_transform``, ``name``)
    among ``values``: a monitor's constructor lists them in its own signature, with its defaults, and hands them on
    with ``super().__init__(probe, **base_options(locals()))``."""
    return {name: values[name] for name in _BASE_OPTIONS if name in values}


def target_sets_for(target: str, owner: str = "probelens") -> list[str]:
    """``"pred"`` -> ``["pred"]``, ``"label"`` -> ``["label"]``, ``"both"`` -> ``["pred", "label"]``."""
    check_choice(owner, "target", target, TARGET_MODES)
    return ["pred", "label"] if target == "both" else [target]
