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
from typing import TYPE_CHECKING, Any

import torch
from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from probelens.callbacks._distributed import fire_sharded, sharded_layer_summary, sharded_root
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
from probelens.methods.engine import OutputTransform, ProbePass, default_output_transform
from probelens.methods.layers import LayerSpec, resolve_layers, unwrap_compiled
from probelens.probe import ProbeSet
from probelens.render import Cell, sanitize

TARGET_MODES = ("pred", "label", "both")
_TB_SAMPLING_NOTICE_SHOWN = False
_PNG_FALLBACK_WARNED: weakref.WeakSet[pl.Trainer] = weakref.WeakSet()  # one warning per trainer, not per monitor
_ARCHITECTURE_LOGGED: weakref.WeakSet[pl.Trainer] = weakref.WeakSet()

if TYPE_CHECKING:  # Lightning is only needed for annotations: the core works with either namespace
    import pytorch_lightning as pl


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


class ProbeMonitor:
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
        name: a label for tags, warnings and the checkpoint state key (defaults to the class name).

    When it fires: by default at the end of validation (sanity check skipped); without a validation loop, at the end
    of the training epoch. Under ``trainer.validate``/``trainer.test`` it fires once at the end. Each firing runs on
    global rank 0 only, on the unwrapped module (with sharded parameters, FSDP: on every rank through the sharded
    model, rank 0 writing; see ``docs/distributed.md``), and logs the monitor's own cost as
    ``probelens/cost_ms/<name>``.
    """

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
        name: str | None = None,
    ) -> None:
        super().__init__()
        if probe is not None and not isinstance(probe, ProbeSet):
            raise TypeError(
                f"probe must be a probelens.ProbeSet, got {type(probe).__name__}; build one with "
                "ProbeSet(images, targets) or ProbeSet.from_dataset(val_dataset, num_samples=16)"
            )
        for arg, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{arg} must be a positive integer or None, got {value!r}")
        if every_n_epochs is None and every_n_steps is None and not log_at_start:
            raise ValueError("every_n_epochs and every_n_steps are both None, so the monitor would never fire")
        if probe_size < 1:
            raise ValueError(f"probe_size must be >= 1, got {probe_size}")
        self.probe = probe
        self.probe_size = probe_size
        self.probe_seed = probe_seed
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        if max_image_side is not None and max_image_side < 16:
            raise ValueError(f"max_image_side must be >= 16 pixels or None, got {max_image_side}")
        self.log_at_start = log_at_start
        self.max_image_side = max_image_side
        self.name = name or type(self).__name__
        # checkpointed state
        self.fire_count = 0
        self.failure_count = 0
        self.last_logged_step = -1
        self._batch_fired_global_step = -1
        # runtime state
        self._configured_for: int | None = None
        self._session: ProbeSession | None = None
        self._needs = _Needs()
        self._sink: ImageSink | None = None
        self._png_root: str | None = None
        self._warned_failure = False
        self._warned_nonfinite = False
        self._val_fired_epoch = -1
        self._saved_fingerprint: str | None = None

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

    # ------------------------------------------------------------------ helpers for subclasses
    def _resolve_layers(self, model: nn.Module, layers: LayerSpec) -> dict[str, nn.Module]:
        example = None
        if self.probe is not None:
            param = next(iter(model.parameters()), None)
            example = self.probe.images[:1]
            if param is not None:
                example = example.to(device=param.device, dtype=param.dtype)
        return resolve_layers(model, layers, example_input=example)

    def _require(
        self,
        layers: dict[str, nn.Module],
        *,
        gradients: bool,
        input_gradient: bool,
        target_sets: set[str],
        output_transform: OutputTransform | None = None,
    ) -> None:
        assert self.probe is not None and self._session is not None
        self._needs = _Needs(dict(layers), gradients, input_gradient, set(target_sets), output_transform)
        self._session.register(
            self.probe,
            layers,
            gradients=gradients,
            input_gradient=input_gradient,
            target_sets=target_sets,
            output_transform=output_transform,
        )

    def _pass(self, pl_module: nn.Module, step: int) -> ProbePass:
        assert self.probe is not None and self._session is not None
        return self._session.get(unwrap_compiled(pl_module), self.probe, step, self._needs)

    def _check_probe_fits(self, model: nn.Module) -> None:
        """One forward of one probe image, so a probe that does not fit the model fails before training starts."""
        if self.probe is None:
            return
        from probelens.methods._hooks import probe_context

        net = unwrap_compiled(model)
        param = next(iter(net.parameters()), None)
        x = self.probe.images[:1]
        if param is not None:
            x = x.to(device=param.device, dtype=param.dtype)
        try:
            with probe_context(net), torch.no_grad():
                output = net(x)
        except Exception as err:
            raise ValueError(
                f"{self.name}: the model cannot run on the probe images (shape {tuple(self.probe.images.shape)}): "
                f"{err}. Build the probe from the same dataset and transforms the model trains on."
            ) from err
        try:
            scores = default_output_transform(output)
        except TypeError:
            return  # a custom output: the monitor's output_transform handles it
        top = int(self.probe.targets.max())
        if scores.dim() == 2 and top >= scores.shape[1]:
            raise ValueError(
                f"{self.name}: probe target {top} is out of range: the model outputs {scores.shape[1]} classes. "
                "Check the probe labels (and class_names) against the model's head."
            )

    def _check_spatial(self, model: nn.Module, layers: dict[str, nn.Module], needs_grad: bool = False) -> None:
        """Raise at setup if a selected layer does not output a feature map ``[N,C,H,W]`` (or, with ``needs_grad``,
        if no gradient can reach it)."""
        from probelens.methods._hooks import ActivationCapture, probe_context
        from probelens.methods.layers import conv_layers

        if self.probe is None:
            return
        net = unwrap_compiled(model)
        param = next(iter(net.parameters()), None)
        x = self.probe.images[:1]
        if param is not None:
            x = x.to(device=param.device, dtype=param.dtype)
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
        bad = {name: tuple(out.shape) for name, out in capture.outputs.items() if out.dim() != 4}
        missing = [name for name in layers if name not in capture.outputs]
        if bad or missing:
            convs = ", ".join(list(conv_layers(net))[:12])
            problem = f"layers {bad} do not output a spatial feature map [N,C,H,W]" if bad else ""
            if missing:
                problem += ("; " if problem else "") + f"layers {missing} never run in the forward pass"
            raise ValueError(f"{self.name}: {problem}; pick convolutional layers (e.g. {convs}) or layers='auto'")

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

    def _image(
        self, tag: str, image: Tensor, step: int, boxes: Sequence[tuple[int, int, int, int]] = (), per_probe: int = 1
    ) -> None:
        """Writes ``image``; ``boxes`` (from a grid's ``cell_boxes``, ``per_probe`` consecutive boxes per probe image)
        become the PNG's probe-image layout (:data:`probelens.render.CELLS_KEY`) that ``probelens export`` reads."""
        assert self._sink is not None
        cells = [(j // per_probe, *box) for j, box in enumerate(boxes)]
        side = max(image.shape[-2:])
        if self.max_image_side is not None and side > self.max_image_side:
            height, width = image.shape[-2:]
            scale = self.max_image_side / side
            size = (max(1, int(height * scale)), max(1, int(width * scale)))
            small = torch.nn.functional.interpolate(image[None].float(), size=size, mode="area")[0]
            image = small.round().clamp(0, 255).to(torch.uint8)
            cells = [_scale_cell(cell, size[0] / height, size[1] / width, size) for cell in cells]
        write_image(self._sink, tag, image, step, cells)

    # ------------------------------------------------------------------ Lightning hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # trainer.log_dir broadcasts under DDP: resolve it here, on every rank
        self._png_root = os.path.join(trainer.log_dir or trainer.default_root_dir, "probelens_images")

    needs_probe = True  # FilterMonitor shows weights only

    def _ensure_configured(self, trainer: pl.Trainer, pl_module: pl.LightningModule, required: bool = False) -> bool:
        """Configure once per module; returns False while a probe set cannot be built yet (no data loaded)."""
        pl_module = sharded_root(trainer) or pl_module  # sharded parameters: run through the FSDP root, on all ranks
        if self._configured_for == id(pl_module):
            return True
        if self.probe is None and self.needs_probe:
            self.probe = _probe_from_trainer(trainer, self.probe_size, self.probe_seed)
            if self.probe is None:
                if required:
                    raise ValueError(
                        f"{self.name}: no probe set was given and the trainer has no validation or training data to "
                        "build one from; pass probe=ProbeSet.from_dataset(val_dataset, num_samples=16)"
                    )
                return False
            self._check_fingerprint()
        self._session = session_for(unwrap_compiled(pl_module))
        self._check_probe_fits(pl_module)
        self._configure(pl_module)
        self._sink = self._make_sink(trainer)
        self._configured_for = id(pl_module)
        self._log_architecture(trainer, pl_module)
        return True

    def _log_architecture(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Once per trainer: a text table of the layers monitors can target (name, type, shape, params, RF)."""
        sharded = is_sharded(pl_module)  # then the summary's forward pass is collective: every rank runs it
        if self.probe is None or trainer in _ARCHITECTURE_LOGGED or not (trainer.is_global_zero or sharded):
            return
        _ARCHITECTURE_LOGGED.add(trainer)
        from probelens.methods.summary import layer_summary, summary_markdown

        try:
            net = unwrap_compiled(pl_module)
            param = next(iter(net.parameters()), None)
            example = self.probe.images[:1]
            if param is not None:
                example = example.to(device=param.device, dtype=param.dtype)
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
                "probelens: no TensorBoardLogger (nor a WandbLogger or MLFlowLogger) is attached, so images are "
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
        if self.log_at_start and trainer.global_step == 0:
            self._fire(trainer, pl_module)

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
            if self._epoch_due(trainer):
                self._val_fired_epoch = trainer.current_epoch
                self._fire(trainer, pl_module)
        elif trainer.state.fn == "validate":
            self._fire(trainer, pl_module, allow_repeat=True)

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fire(trainer, pl_module, allow_repeat=True)

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
                f"in the scalar probelens/failures/{self.name}."
            )
        self._log_scalars(trainer, {f"probelens/failures/{self.name}": float(self.failure_count)}, step)

    def _record_success(self, trainer: pl.Trainer, step: int, start: float) -> None:
        """Count a firing begun at ``time.perf_counter()`` ``start``; log its cost as ``probelens/cost_ms/<name>``."""
        self.fire_count += 1
        cost_ms = (time.perf_counter() - start) * 1000.0
        self._log_scalars(trainer, {f"probelens/cost_ms/{self.name}": cost_ms}, step)

    def _fire(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, allow_repeat: bool = False, epoch_end: bool = False
    ) -> None:
        step = log_step(trainer, epoch_end=epoch_end)
        if not allow_repeat and step == self.last_logged_step:
            return
        sharded = sharded_root(trainer)
        if sharded is not None:  # FSDP: every rank computes together, rank 0 writes (see callbacks/_distributed.py)
            fire_sharded(self, trainer, sharded, step)
            self.last_logged_step = step
            return
        if not trainer.is_global_zero:
            self.last_logged_step = step
            return
        self._ensure_configured(trainer, pl_module, required=True)
        start = time.perf_counter()
        try:
            self._log(step, pl_module, trainer)
        except Exception as err:  # an explanation must never take the training run down
            self._record_failure(trainer, step, f"and was skipped ({type(err).__name__}: {err})")
        else:
            self._record_success(trainer, step, start)
        self.last_logged_step = step

    @staticmethod
    def _log_scalars(trainer: pl.Trainer, metrics: dict[str, float], step: int) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    # ------------------------------------------------------------------ captions
    def _captions(self, result: ProbePass, target_set: str | None = None) -> list[str]:
        assert self.probe is not None
        probs = result.probabilities
        preds = result.predictions
        captions = []
        for i in range(len(self.probe)):
            true = self.probe.class_name(int(self.probe.targets[i]))
            pred = int(preds[i])
            line = f"true: {true}\npred: {self.probe.class_name(pred)} {float(probs[i, pred]):.2f}"
            if target_set == "label":
                t = int(result.targets["label"][i])
                line += f"\nmap for: {self.probe.class_name(t)}"
            captions.append(line)
        return captions


_LAZY_PROBES: weakref.WeakKeyDictionary[Any, dict[tuple[int, int, int], ProbeSet]] = weakref.WeakKeyDictionary()


def _probe_from_trainer(trainer: Any, size: int, seed: int) -> ProbeSet | None:
    """A probe set picked from the trainer's validation (else test, else training) dataset, shared per trainer."""
    dataset = None
    for attr in ("val_dataloaders", "test_dataloaders", "train_dataloader"):
        loaders = getattr(trainer, attr, None)
        if loaders is None:
            continue
        loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
        dataset = getattr(loader, "dataset", None)
        if dataset is not None and hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
            break
        dataset = None
    if dataset is None:
        return None
    cache = _LAZY_PROBES.setdefault(trainer, {})
    key = (id(dataset), size, seed)
    if key not in cache:
        mean, std = getattr(dataset, "mean", None), getattr(dataset, "std", None)
        if not (isinstance(mean, (tuple, list)) and isinstance(std, (tuple, list))):
            mean = std = None
        cache[key] = ProbeSet.from_dataset(dataset, num_samples=size, seed=seed, mean=mean, std=std)
    return cache[key]


def target_sets_for(target: str) -> list[str]:
    """``"pred"`` -> ``["pred"]``, ``"label"`` -> ``["label"]``, ``"both"`` -> ``["pred", "label"]``."""
    if target not in TARGET_MODES:
        raise ValueError(f"target must be one of {TARGET_MODES}, got {target!r}")
    return ["pred", "label"] if target == "both" else [target]
