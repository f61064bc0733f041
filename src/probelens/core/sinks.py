"""Where pictures go: one small adapter (an :class:`ImageSink`) per attached logger that takes images.

Built in: TensorBoard (:class:`TensorBoardSink`), Weights & Biases (:class:`WandbSink`) and MLflow
(:class:`MLflowSink`), recognised by class name and module, so that Lightning's loggers from both namespaces work and
neither namespace is imported here. Several supported loggers each get every picture (:class:`FanOutSink`); when none
is attached, PNG files under the log dir (:class:`PngSink`). :func:`register_sink` teaches the monitors another logger.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor

from probelens.core.run import Run, SharedRun
from probelens.logformat import NO_FACTS, GridFacts
from probelens.render import encode_png, save_png
from probelens.writing.event_file import EventFileWriter


class ImageSink(Protocol):
    """Receives rendered ``uint8 [3,H,W]`` (or ``[1,H,W]``) images and text on the loss curves' step axis.

    ``facts`` (:class:`probelens.logformat.GridFacts`) is what a grid of probe images records about itself: which
    probe image each cell shows, what its captions say, its map boxes and colour scale (empty for other pictures).
    The built-in sinks that write PNG files keep it as PNG text chunks (``facts.text()``); a sink may ignore it.
    """

    def add_image(self, tag: str, image: Tensor, step: int, facts: GridFacts = NO_FACTS) -> object:
        """Write ``image``; may return the bytes written (an ``int``), which ``max_bytes_per_firing`` counts."""

    def add_text(self, tag: str, text: str, step: int) -> None: ...


def check_sink(sink: object, made_by: object) -> None:
    """Refuse (at setup, naming the fix) a sink whose ``add_image`` cannot take ``(tag, image, step, facts)`` or that
    has no ``add_text``."""
    add_image, add_text = getattr(sink, "add_image", None), getattr(sink, "add_text", None)
    problem = None
    if not callable(add_image) or not callable(add_text):
        problem = "it has no add_image or no add_text method"
    else:
        try:
            inspect.signature(add_image).bind("tag", None, 0, NO_FACTS)
        except TypeError:
            problem = "its add_image does not take a fourth argument, facts (the grid's probe-image layout)"
        except ValueError:  # a builtin without a signature: trust it
            pass
    if problem:
        raise TypeError(
            f"the sink {type(sink).__name__} made by {made_by!r} cannot be written to: {problem}; define "
            "add_image(self, tag, image, step, facts=probelens.logformat.NO_FACTS) (facts may be ignored) and "
            "add_text(self, tag, text, step)"
        )


class TensorBoardSink:
    """Writes into a ``TensorBoardLogger``'s run directory (``logger.log_dir``), through an event file of probelens'
    own beside the logger's (:class:`probelens.writing.event_file.EventFileWriter`): TensorBoard reads every event
    file of a directory as one run, so the pictures sit next to the loss curves on the same step axis, and the
    logger's ``SummaryWriter`` is neither patched nor reached into.

    Images are PNG-encoded once, by :func:`probelens.render.encode_png` (with the probe-image layout as a text chunk);
    text is laid out as ``SummaryWriter.add_text`` does, under ``<tag>/text_summary`` as TensorBoard lists it. The
    monitors of one run share one file (:meth:`probelens.core.run.SharedRun.event_file`). A ``SummaryWriter``
    subclass that overrides ``add_image`` is given every picture through it instead.
    """

    def __init__(self, logger: Any, events: EventFileWriter | None = None) -> None:
        self.logger = logger
        self._events = events
        self._custom: tuple[Callable[..., Any] | None] | None = None  # (the override or None), once looked up

    @property
    def events(self) -> EventFileWriter:
        if self._events is None:
            self._events = EventFileWriter(self.logger.log_dir)
        return self._events

    def share(self, events: Callable[[str], EventFileWriter]) -> None:
        """Write through ``events(log_dir)`` (the run's shared writer) instead of a file of this sink's own."""
        self.logger.experiment  # noqa: B018 (the logger's file first: ours, made later, sorts after it)
        self._events = events(self.logger.log_dir)

    def _custom_add_image(self) -> Callable[..., Any] | None:
        """The logger's writer's ``add_image`` where a ``SummaryWriter`` subclass overrides it (then it gets every
        picture, as the user asked for), else ``None``; looked up at the first picture (the writer is the logger's
        for the whole run)."""
        if self._custom is None:
            self._custom = (self._find_custom_add_image(),)
        return self._custom[0]

    def _find_custom_add_image(self) -> Callable[..., Any] | None:
        experiment = self.logger.experiment
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # the logger runs on tensorboardX: nothing of ours to honour
            return None
        own = getattr(type(experiment), "add_image", None)
        if isinstance(experiment, SummaryWriter) and own is not SummaryWriter.add_image:
            return experiment.add_image
        return None

    def add_image(self, tag: str, image: Tensor, step: int, facts: GridFacts = NO_FACTS) -> int | None:
        custom = self._custom_add_image()
        if custom is not None:
            custom(tag, image.numpy(), global_step=step, dataformats="CHW")
            return None
        rgb = image.expand(3, -1, -1) if image.shape[0] == 1 else image  # add_image stores gray as RGB too
        png = encode_png(rgb, text=facts.text())
        self.events.add_image(tag, png, int(rgb.shape[1]), int(rgb.shape[2]), step)
        return len(png)

    def add_text(self, tag: str, text: str, step: int) -> None:
        self.events.add_text(f"{tag}/text_summary", text, step)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _tag_parts(tag: str) -> list[str]:
    """``"probelens/gradcam/model.4"`` -> ``["probelens", "gradcam", "model.4"]``, each part file-name safe.

    A part that would climb or stay (``..``, ``.``) or start a hidden name becomes ``_``-led, and backslashes split
    nothing: every path built from a tag (and so from a monitor's ``name=``) stays under the sink's root.

    Example:
        >>> _tag_parts("probelens/../../x/./.hidden/gradcam")
        ['probelens', '_', '_', 'x', '_', '_hidden', 'gradcam']
    """
    parts = []
    for part in tag.split("/"):
        if not part:
            continue
        safe = _UNSAFE.sub("_", part)
        if safe.startswith("."):
            safe = "_" + safe.lstrip(".")
        parts.append(safe)
    return parts


def _step_name(step: int, ext: str) -> str:
    return f"step_{step:08d}.{ext}"


@contextlib.contextmanager
def _temporary_png(image: Tensor, step: int, facts: GridFacts = NO_FACTS) -> Iterator[str]:
    """``image`` encoded once into a temporary ``step_<step>.png``, for loggers that copy a file in (W&B, MLflow)."""
    with tempfile.TemporaryDirectory(prefix="probelens-") as tmp:
        path = os.path.join(tmp, _step_name(step, "png"))
        with open(path, "wb") as fh:
            fh.write(encode_png(image, text=facts.text()))
        yield path


class PngSink:
    """Writes ``<root>/<tag path>/step_<step>.png`` (and ``.txt`` for text)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def _path(self, tag: str, step: int, ext: str) -> str:
        path = os.path.join(self.root, *_tag_parts(tag), _step_name(step, ext))
        # defence in depth: whatever the tag, nothing is written outside the root
        root = os.path.realpath(self.root)
        if os.path.commonpath([root, os.path.realpath(path)]) != root:
            raise ValueError(f"refusing to write {path!r}: it is outside the picture folder {self.root!r}")
        return path

    def add_image(self, tag: str, image: Tensor, step: int, facts: GridFacts = NO_FACTS) -> int:
        path = self._path(tag, step, "png")
        save_png(image, path, text=facts.text())
        return os.path.getsize(path)

    def add_text(self, tag: str, text: str, step: int) -> None:
        path = self._path(tag, step, "txt")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)


class WandbSink:
    """Writes through a Lightning ``WandbLogger``: ``log_image(key=tag, ...)`` and, for text, a one-cell table.

    The step: W&B keeps one step counter per run and drops a row logged with an explicit ``step`` below it. The
    ``WandbLogger`` never passes a step to ``wandb.log``; it adds ``trainer/global_step`` to every row (and makes it
    the x-axis of every metric), so W&B's own ``_step`` only counts rows and runs ahead of the global step. Images go
    through the same ``log_image(key, images, step=step)``, so they carry the loss curves' ``trainer/global_step`` and
    are never dropped, even when logged for an earlier step than the last row (the architecture table at step 0).
    The ``_step`` in the media file names (``media/images/<tag>_<_step>_<hash>.png``) is W&B's row count, not the
    global step.

    The image is PNG-encoded once, by :func:`probelens.render.encode_png`, into a temporary file that W&B copies
    into the run during the call; W&B's own encoding of an array goes through PIL and cost 2-6x more on large grids.
    A run that links media files instead of copying them (``allow_media_symlink``) gets the array.
    """

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self._links_media: bool | None = None

    def _run_links_media(self) -> bool:
        if self._links_media is None:
            settings = getattr(self.logger.experiment, "settings", None)
            self._links_media = bool(getattr(settings, "allow_media_symlink", False))
        return self._links_media

    def add_image(self, tag: str, image: Tensor, step: int, facts: GridFacts = NO_FACTS) -> int | None:
        if self._run_links_media():
            pixels = image.expand(3, -1, -1) if image.shape[0] == 1 else image
            self.logger.log_image(key=tag, images=[pixels.permute(1, 2, 0).cpu().numpy()], step=step)
            return None
        with _temporary_png(image, step, facts) as path:
            self.logger.log_image(key=tag, images=[path], step=step)
            return os.path.getsize(path)

    def add_text(self, tag: str, text: str, step: int) -> None:
        self.logger.log_text(key=tag, columns=["text"], data=[[text]], step=step)


class MLflowSink:
    """Writes run artifacts through a Lightning ``MLFlowLogger``'s client (``logger.experiment``).

    Images become ``<tag>/step_<step>.png`` (encoded by :func:`probelens.render.encode_png`, then ``log_artifact``),
    text ``<tag>/step_<step>.txt`` (``log_text``), under the run's artifact root; the step is the trainer's global
    step, the one MLflow's metric history shows for the loss.
    """

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def add_image(self, tag: str, image: Tensor, step: int, facts: GridFacts = NO_FACTS) -> int:
        with _temporary_png(image, step, facts) as path:
            self.logger.experiment.log_artifact(self.logger.run_id, path, "/".join(_tag_parts(tag)))
            return os.path.getsize(path)

    def add_text(self, tag: str, text: str, step: int) -> None:
        artifact_file = "/".join([*_tag_parts(tag), _step_name(step, "txt")])
        self.logger.experiment.log_text(self.logger.run_id, text, artifact_file)


def _logger_name(sink: Any) -> str:
    return type(getattr(sink, "logger", sink)).__name__


def _report_once(sink: Any, err: Exception, reported: set[int]) -> None:
    logger = getattr(sink, "logger", sink)
    if id(logger) in reported:
        return
    reported.add(id(logger))
    rank_zero_warn(
        f"probelens: writing to {type(logger).__name__} failed ({type(err).__name__}: {err}); the other loggers still "
        "get every image. Further failures of this logger are not reported."
    )


class FanOutSink:
    """Hands every image and text to each of several sinks, in order.

    A sink that raises is reported once per logger, with its exception, and skipped for that call, so that a broken
    logger does not cost the others their pictures; only when every sink raised does the call fail, with an
    ``OSError`` that names each logger and its own exception (the monitor then counts the firing as failed, as for a
    single sink).
    """

    def __init__(self, sinks: Sequence[ImageSink], reported: set[int] | None = None) -> None:
        if not sinks:
            raise ValueError("FanOutSink needs at least one sink, got none")
        self.sinks = list(sinks)
        self._reported = set() if reported is None else reported  # ids of loggers whose failure was reported

    def _each(self, write: Callable[[ImageSink], None]) -> None:
        errors: list[tuple[ImageSink, Exception]] = []
        for sink in self.sinks:
            try:
                write(sink)
            except Exception as err:
                errors.append((sink, err))
        if len(errors) < len(self.sinks):  # the others got it: each failing logger is named once, with its error
            for failed, error in errors:
                _report_once(failed, error, self._reported)
            return
        # every logger failed: the firing fails, naming each logger's own exception (none hidden behind the first)
        detail = "; ".join(f"{_logger_name(failed)}: {type(error).__name__}: {error}" for failed, error in errors)
        raise OSError(f"every image logger failed to write ({detail})") from errors[0][1]

    def add_image(self, tag: str, image: Tensor, step: int, facts: GridFacts = NO_FACTS) -> int | None:
        sizes: list[object] = []
        self._each(lambda sink: sizes.append(sink.add_image(tag, image, step, facts)))
        counted = [n for n in sizes if isinstance(n, int) and not isinstance(n, bool)]
        return max(counted, default=None)  # the same picture, once per logger  # the same picture, once per logger

    def add_text(self, tag: str, text: str, step: int) -> None:
        self._each(lambda sink: sink.add_text(tag, text, step))


SinkFactory = Callable[[Any], "ImageSink | None"]
"""Takes a logger; returns the :class:`ImageSink` that writes to it, or ``None`` for a logger it does not handle."""


def _derives_from(logger: Any, class_name: str, lightning_only: bool = True) -> bool:
    """Whether ``logger``'s class is, or derives from, Lightning's logger class ``class_name`` (either namespace)."""
    for cls in type(logger).__mro__:
        if cls.__name__ == class_name:
            root = cls.__module__.partition(".")[0]
            if not lightning_only or root in ("pytorch_lightning", "lightning"):
                return True
    return False


def is_tensorboard_logger(logger: Any) -> bool:
    """True for Lightning's ``TensorBoardLogger`` from either namespace (``pytorch_lightning`` or
    ``lightning.pytorch``), and subclasses (by class name only: any of them writes through a ``SummaryWriter``)."""
    return _derives_from(logger, "TensorBoardLogger", lightning_only=False)


def _tensorboard(logger: Any) -> ImageSink | None:
    return TensorBoardSink(logger) if is_tensorboard_logger(logger) else None


def _wandb(logger: Any) -> ImageSink | None:
    return WandbSink(logger) if _derives_from(logger, "WandbLogger") else None


def _mlflow(logger: Any) -> ImageSink | None:
    return MLflowSink(logger) if _derives_from(logger, "MLFlowLogger") else None


_BUILT_IN: tuple[SinkFactory, ...] = (_tensorboard, _wandb, _mlflow)
_REGISTERED: list[SinkFactory] = []


def register_sink(factory: SinkFactory) -> SinkFactory:
    """Teaches the monitors to write images to another kind of logger, or differently to a supported one.

    ``factory(logger)`` is called for each of the trainer's loggers when a monitor is set up; it returns an object
    with ``add_image(tag, image, step, facts)`` (``image``: uint8 ``[3,H,W]`` or ``[1,H,W]``; ``facts``: a
    :class:`probelens.logformat.GridFacts`, which it may ignore; a sink without it is refused at setup) and
    ``add_text(tag, text, step)`` for loggers it handles, ``None`` for the others. Registered factories are asked
    before the built-in ones, the latest first. Returns ``factory``, so it also works as a decorator.

    Public as ``probelens.register_sink``; :func:`unregister_sink` undoes it.

    Example:
        >>> import probelens
        >>> from probelens.core.sinks import PngSink, sinks_for
        >>> class ArchiveLogger:  # a logger of yours
        ...     root = "archive"
        >>> @probelens.register_sink
        ... def archive_pngs(logger):
        ...     return PngSink(logger.root) if isinstance(logger, ArchiveLogger) else None
        >>> [type(sink).__name__ for sink in sinks_for([ArchiveLogger()])]
        ['PngSink']
        >>> probelens.unregister_sink(archive_pngs)
        >>> sinks_for([ArchiveLogger()])
        []
    """
    if not callable(factory):
        raise TypeError(f"register_sink expects a callable logger -> sink or None, got {factory!r}")
    _REGISTERED.append(factory)
    return factory


def unregister_sink(factory: SinkFactory) -> None:
    """Forget a factory given to :func:`register_sink` (a ``ValueError`` if it was not registered)."""
    try:
        _REGISTERED.remove(factory)
    except ValueError:
        raise ValueError(f"{factory!r} is not a registered sink factory; register_sink(factory) adds one") from None


def sinks_for(loggers: Iterable[Any]) -> list[ImageSink]:
    """One sink per logger that takes images, in the loggers' order (loggers no factory handles are left out)."""
    sinks = []
    for logger in loggers:
        for factory in (*reversed(_REGISTERED), *_BUILT_IN):
            sink = factory(logger)
            if sink is not None:
                check_sink(sink, factory)
                sinks.append(sink)
                break
    return sinks


def sink_for_trainer(trainer: Run, png_root: str, run: SharedRun) -> ImageSink:
    """The sink of a monitor on ``trainer``: each attached logger that takes images gets them (TensorBoard, W&B,
    MLflow, registered ones); loggers that take only scalars, such as ``CSVLogger``, are skipped; with none left,
    PNG files under ``png_root``, and one warning per run. Notices are given once per ``run``."""
    sinks = sinks_for(trainer.loggers)
    for sink in sinks:
        if isinstance(sink, TensorBoardSink):
            sink.share(run.event_file)
    if any(isinstance(sink, TensorBoardSink) for sink in sinks) and run.first_time("tensorboard-sampling"):
        rank_zero_info(
            "probelens: TensorBoard shows only 10 sampled steps per image tag by default; start it with "
            "`tensorboard --logdir <dir> --samples_per_plugin images=1000` to see every logged step."
        )
    if sinks:
        return sinks[0] if len(sinks) == 1 else FanOutSink(sinks, run.failed_loggers)
    if run.first_time("png-fallback"):
        rank_zero_warn(
            "probelens: no TensorBoardLogger (nor a WandbLogger or MLflowLogger) is attached, so images are "
            f"written as PNG files under {png_root}. Pass logger=TensorBoardLogger(...) to the Trainer to see them "
            "next to the loss curves."
        )
    return PngSink(png_root)
