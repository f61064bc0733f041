"""ConceptMonitor: TCAV over training, and an alert when a concept the user calls spurious drives a class."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args

import torch
from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from probelens.core.base import MonitorCore, base_options
from probelens.core.options import check_choice, check_float, check_int, check_layer_spec
from probelens.core.run import Run
from probelens.core.session import SharedPass
from probelens.logformat import check_tag_segments, tag_segment
from probelens.methods.batching import chunk_ranges
from probelens.methods.engine import OutputTransform, forward_backward
from probelens.methods.layers import LayerSpec, unwrap_compiled
from probelens.methods.tcav import TCAVResult, tcav
from probelens.metrics import ShortcutVerdict, agreeing_group_accuracy, group_accuracies
from probelens.probe import ProbeSet

OnConcept = Literal["warn", "stop", "ignore"]
ON_CONCEPT: tuple[str, ...] = get_args(OnConcept)
MIN_CONCEPT_PICTURES = 4
"""Fewer pictures than this for a concept (or for its negatives) are refused: a run's subsample needs 2 of each."""
RECOMMENDED_CONCEPT_PICTURES = 20
"""Below this many pictures per concept ConceptMonitor warns when training starts. Measured (``docs/concepts.md``):
where a layer does not encode the concept, a CAV of 3-10 pictures is unstable and inflates the gradient cosine the
alert reads (a clean model's 0.19+-0.02 at 40 pictures became 0.28+-0.11 at 3), enough for a false alarm."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

PictureSource = Union[Tensor, str, "os.PathLike[str]"]


def _tag(name: str) -> str:
    return tag_segment(name, "_")


def load_concept_folder(owner: str, concept: str, folder: str | os.PathLike[str], probe: ProbeSet) -> Tensor:
    """The image files in ``folder`` (sorted by name) as a float tensor ``[M, C, H, W]``: converted to the probe's
    channels (RGB or greyscale), resized to the probe's size (bilinear, Pillow) and normalised with the probe's
    ``mean``/``std`` (images in ``[0, 1]`` where the probe has neither)."""
    from PIL import Image

    path = Path(folder)
    if not path.is_dir():
        raise ValueError(
            f"{owner}: concepts[{concept!r}]={str(folder)!r} is not a folder; give a folder of image files "
            f"({', '.join(IMAGE_SUFFIXES)}) or a tensor [M, C, H, W] normalised like the model input"
        )
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    channels = probe.num_channels
    if channels not in (1, 3):
        raise ValueError(
            f"{owner}: concepts[{concept!r}] is a folder, but the probe images have {channels} channels; Pillow "
            "images have 1 (L) or 3 (RGB): give the concept pictures as a tensor [M, C, H, W] instead"
        )
    if probe.mean is None and probe.denormalize is not None:
        raise ValueError(
            f"{owner}: concepts[{concept!r}] is a folder, but the probe has a denormalize callable and no mean/std, "
            "so the pictures cannot be normalised like the model input; give ProbeSet(mean=..., std=...) or the "
            "concept pictures as a normalised tensor [M, C, H, W]"
        )
    h, w = probe.image_size
    pictures = []
    for file in files:
        with Image.open(file) as im:
            bilinear = getattr(Image, "Resampling", Image).BILINEAR  # Pillow < 9.1 has no Resampling
            im = im.convert("RGB" if channels == 3 else "L").resize((w, h), bilinear)
            data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        pictures.append(data.reshape(h, w, channels).permute(2, 0, 1).float() / 255.0)
    if not pictures:
        raise ValueError(
            f"{owner}: concepts[{concept!r}]: the folder {str(folder)!r} holds no image files "
            f"({', '.join(IMAGE_SUFFIXES)}); put at least {RECOMMENDED_CONCEPT_PICTURES} pictures of the concept in it"
        )
    x = torch.stack(pictures)
    if probe.mean is not None and probe.std is not None:
        mean = torch.tensor(list(probe.mean), dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(list(probe.std), dtype=torch.float32).view(1, -1, 1, 1)
        x = (x - mean) / std
    return x


def check_concept_pictures(owner: str, concept: str, pictures: Tensor, probe: ProbeSet | None) -> Tensor:
    """``pictures`` as float ``[M, C, H, W]`` with ``M >= MIN_CONCEPT_PICTURES``, finite, and (with a probe) the
    probe's channels and size; else a ``ValueError`` that names the value and the fix."""
    what = f"{owner}: concepts[{concept!r}]" if concept != "negatives" else f"{owner}: negatives"
    if not isinstance(pictures, Tensor):
        raise TypeError(
            f"{what} is a {type(pictures).__name__}; give a tensor [M, C, H, W] normalised like the model input or "
            "the path of a folder of image files"
        )
    if pictures.dim() != 4:
        raise ValueError(
            f"{what} has shape {tuple(pictures.shape)}; concept pictures must be a batch [M, C, H, W] (one picture: "
            "pictures.unsqueeze(0); but give at least "
            f"{RECOMMENDED_CONCEPT_PICTURES})"
        )
    if not pictures.dtype.is_floating_point:
        raise ValueError(
            f"{what} has dtype {pictures.dtype}; give float pictures normalised like the model input (e.g. "
            "(pictures / 255 - mean) / std), or a folder path, which is normalised with the probe's mean/std"
        )
    if pictures.shape[0] < MIN_CONCEPT_PICTURES:
        raise ValueError(
            f"{what} has {pictures.shape[0]} pictures; TCAV needs at least {MIN_CONCEPT_PICTURES} (each of its runs "
            f"fits on a subsample) and its CAVs are stable from about {RECOMMENDED_CONCEPT_PICTURES}: add pictures"
        )
    if not bool(torch.isfinite(pictures).all()):
        raise ValueError(f"{what} contains NaN or Inf values; give finite pictures")
    if probe is not None:
        expected = (probe.num_channels, *probe.image_size)
        if tuple(pictures.shape[1:]) != expected:
            raise ValueError(
                f"{what} has pictures of shape {tuple(pictures.shape[1:])} but the probe images are {expected} "
                "[C, H, W]; a CAV lives in the layer's activation space, which depends on the input size: resize them "
                f"(torch.nn.functional.interpolate(pictures, size={tuple(probe.image_size)}, mode='bilinear')) and "
                "give them the probe's channels, or pass a folder path (resized and normalised for you)"
            )
    return pictures.detach().float().cpu()


class ConceptCore(MonitorCore):
    """TCAV (Kim et al., 2018) over training: whether a concept the user names drives each class, at every log step.

    For each concept and layer it fits concept activation vectors (CAVs: the normals of L2-regularised logistic
    regressions of the concept pictures' activations against the negatives'; :mod:`probelens.methods.tcav`) and
    reads the gradient of each probe image's *true*-class score at that layer from the shared pass. It logs, per
    concept ``c`` and class ``k`` (with several layers, ``concept/<c>/<k>/<layer>`` and the same suffixes):

    - ``concept/<c>/<k>``: the TCAV score, the share of class ``k``'s probe images whose class score rises along the
      CAV (mean over the runs);
    - ``concept/<c>/<k>/p_value``: the paper's significance test of that score, a two-sided t-test of ``runs``
      concept CAVs (each on a subsample) against ``runs`` CAVs of random splits of the same pictures;
    - ``concept/<c>/<k>/cosine``: the mean cosine between the class-score gradient and the CAV, and
      ``concept/<c>/<k>/cosine_p_value`` its t-test against the random splits;
    - ``concept/<c>/<k>/significant``: 1 where the alert's criterion holds at this step (below), else 0;
    - ``concept/<c>/cav_accuracy``: the CAVs' accuracy on the concept and negative pictures.

    Why the alert uses the cosine and not the sign-count score: at a layer whose class-score gradient is nearly the
    same for every image (the deeper layers of a CNN with global pooling), the sign of the directional derivative is
    the same for all images, so the TCAV score is 0 or 1 for *any* direction, and the random-split test calls a
    clean model's concepts significant too. Measured on the snow/desert generator (``docs/concepts.md``: demo CNN,
    48 px, plain snow and desert backgrounds as the concepts), the significance does not separate the cases either
    (p-values below 1e-5 on clean models too, since subsampled CAVs agree with each other far more than random splits
    do); the size of the cosine does: at the deepest stage, while a p=0.95 model holds the shortcut (conflict accuracy
    below 0.3), the background concept of the class it agrees with reached 0.63-0.71; on clean p=0.5 models no
    (concept, class) went above 0.32 (a clean model can align a little with a background concept whose texture
    resembles the object's: grey rocks in the snow look like solid spots), and on an object model with an informative
    background (p=0.9, conflict accuracy 0.69-1.0) not above 0.46. So a step counts for (concept, class, layer) when
    the mean cosine is at least ``threshold`` (0.55, between 0.46 and 0.63) *and* its t-test against the random splits
    gives ``p < alpha`` (Bonferroni-corrected over the classes and layers).

    The alert (for the concepts in ``spurious`` only): when a (concept, class, layer) counts for ``patience``
    consecutive armed log steps, a
    ``rank_zero_warn``, a TensorBoard text ``concept/alert`` that names the concept, class, layer and step, and with
    ``on_concept="stop"`` ``trainer.should_stop = True``. It clears at the first counting step below the criterion.

    A step is *armed* (``concept/armed``) when the model is better than chance: the probe accuracy is at least
    ``min_accuracy``, or, when the probe has group labels (``ProbeSet(groups=...)``), each class's best group's
    accuracy is (``concept/agreeing_group_accuracy``, the worst class's; as for ``ShortcutMonitor``'s group verdict,
    since on a probe balanced over the groups a model that follows the spurious cue scores chance overall). An
    unarmed step neither counts nor clears; the first one is said once (a warning when it held back a criterion that
    held). Outputs with NaN or Inf (diverged weights) log the step's numbers as NaN, warned once, and neither count
    nor clear.

    Args:
        probe: the probe set (its labels choose the class whose score is differentiated).
        concepts: ``{name: pictures}``, each a float tensor ``[M, C, H, W]`` normalised like the model input (the
            probe's channels and size), or the path of a folder of image files (resized to the probe's size and
            normalised with its ``mean``/``std``). At least 4 per concept, 20 or more recommended.
        layers: the layers: ``"auto"`` (the deepest resolution stage, where shortcut and clean models separate most
            in ``docs/concepts.md``), ``"all"``, a layer name or a list of names.
        negatives: the negative ("random") pictures each CAV is fitted against, like a concept's; by default, for
            each concept the pictures of all other concepts (so give at least two concepts, or negatives).
        spurious: the names of the concepts that must not drive a class: only they raise the alert.
        on_concept: ``"warn"``, ``"stop"`` or ``"ignore"`` (still logs the numbers).
        threshold: the mean cosine at or above which a significant step counts.
        alpha: significance level of the cosine t-test (before the Bonferroni correction).
        patience: consecutive counting log steps before the alert fires.
        runs: CAVs per concept and per random split at each step (the t-test's sample size).
        min_accuracy: the accuracy that arms a step (the probe's, or with group labels each class's best group's,
            worst class; default: halfway between chance and 1).
        seed: seed of the subsamples and random splits (the same at every step, so steps are comparable).
        every_n_epochs: fire at the end of every n-th epoch (every epoch by default).
        every_n_steps, log_at_start, probe_size, probe_seed, probe_input_key, probe_target_key,
            max_image_side, max_bytes_per_firing, output_transform, name: as for :class:`ProbeMonitor`.
    """

    def __init__(
        self,
        probe: ProbeSet | None = None,
        concepts: Mapping[str, PictureSource] | None = None,
        layers: LayerSpec = "auto",
        *,
        negatives: PictureSource | None = None,
        spurious: Sequence[str] = (),
        on_concept: OnConcept = "warn",
        threshold: float = 0.55,
        alpha: float = 0.05,
        patience: int = 2,
        runs: int = 10,
        min_accuracy: float | None = None,
        seed: int = 0,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        log_at_start: bool = False,
        probe_size: int = 16,
        probe_seed: int = 0,
        probe_input_key: str | None = None,
        probe_target_key: str | None = None,
        max_image_side: int | None = 1024,
        max_bytes_per_firing: int | None = None,
        output_transform: OutputTransform | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(probe, **base_options(locals()))
        owner = type(self).__name__
        if not isinstance(concepts, Mapping) or not concepts:
            raise ValueError(
                f"{owner}: concepts={concepts!r:.80} is not allowed; give a non-empty mapping from a concept name to "
                "its pictures, e.g. concepts={'snow': snow_pictures, 'sand': 'path/to/sand_pictures/'}"
            )
        bad_names = [c for c in concepts if not isinstance(c, str) or not c.strip() or "/" in c]
        if bad_names:
            raise ValueError(f"{owner}: concept names must be non-empty strings without '/', got {bad_names!r}")
        try:
            check_tag_segments(list(concepts), "concepts")  # "snow cover" and "snow/cover" would share their tags
        except ValueError as err:
            raise ValueError(f"{owner}: {err}") from None
        if negatives is None and len(concepts) < 2:
            raise ValueError(
                f"{owner}: concepts has one concept ({next(iter(concepts))!r}) and negatives=None, so there is nothing "
                "to fit its CAV against; give a second concept (e.g. the other background) or negatives= (random "
                "pictures from the data domain)"
            )
        if isinstance(spurious, str):
            spurious = (spurious,)
        if not isinstance(spurious, (list, tuple)):
            raise ValueError(f"{owner}: spurious={spurious!r} must be a sequence of concept names, e.g. ('snow',)")
        unknown = [s for s in spurious if s not in concepts]
        if unknown:
            raise ValueError(
                f"{owner}: spurious names {unknown!r}, which are not concepts; the concepts are {sorted(concepts)!r} "
                "(spurious= takes their names)"
            )
        check_layer_spec(owner, "layers", layers)
        check_choice(owner, "on_concept", on_concept, ON_CONCEPT)
        check_float(owner, "threshold", threshold, 0.0, 1.0, low_open=True)
        check_float(owner, "alpha", alpha, 0.0, 1.0, low_open=True)
        check_int(owner, "patience", patience)
        check_int(owner, "runs", runs, minimum=2, fix="the t-test needs at least 2 runs; 10 is the default")
        check_float(owner, "min_accuracy", min_accuracy, 0.0, 1.0, none_ok=True)
        check_int(owner, "seed", seed, minimum=0)
        self._sources: dict[str, PictureSource] = dict(concepts)
        self._negative_source = negatives
        for name, source in [*self._sources.items(), ("negatives", negatives)]:
            if source is None or isinstance(source, Tensor):
                if source is not None:
                    check_concept_pictures(owner, name, source, probe)
            elif isinstance(source, (str, os.PathLike)):
                if not Path(source).is_dir():
                    what = f"concepts[{name!r}]" if name != "negatives" else "negatives"
                    raise ValueError(
                        f"{owner}: {what}={str(source)!r} is not a folder; give a folder of image files or a tensor "
                        "[M, C, H, W] normalised like the model input"
                    )
            else:
                check_concept_pictures(owner, name, source, probe)  # raises the TypeError that names the fix
        self.concept_names = list(concepts)
        self.layer_spec = layers
        self.spurious = tuple(spurious)
        self.on_concept = on_concept
        self.threshold = threshold
        self.alpha = alpha
        self.patience = patience
        self.runs = runs
        self.min_accuracy = min_accuracy
        self.seed = seed
        self.concepts: dict[str, Tensor] = {}
        """The concept pictures as normalised tensors ``[M, C, H, W]`` (loaded when the probe is known)."""
        self.negatives: Tensor | None = None
        self._layers: dict[str, nn.Module] = {}
        self._warned_few = False
        if probe is not None:
            self._load_pictures(probe)
        self.reset_history()

    # ------------------------------------------------------------------ pictures
    def _load_pictures(self, probe: ProbeSet) -> None:
        """Load folders and check every picture set against ``probe``; raise with the fix on a mismatch."""
        owner = type(self).__name__

        def load(name: str, source: PictureSource) -> Tensor:
            if isinstance(source, Tensor):
                return check_concept_pictures(owner, name, source, probe)
            return check_concept_pictures(owner, name, load_concept_folder(owner, name, source, probe), probe)

        self.concepts = {name: load(name, source) for name, source in self._sources.items()}
        neg = self._negative_source
        self.negatives = None if neg is None else load("negatives", neg)

    def _negatives_for(self, concept: str) -> list[str]:
        """The picture sets a concept's CAV is fitted against: ``negatives`` or the other concepts."""
        return ["negatives"] if self.negatives is not None else [c for c in self.concept_names if c != concept]

    def _warn_few(self) -> None:
        if self._warned_few:
            return
        few = {name: x.shape[0] for name, x in self.concepts.items() if x.shape[0] < RECOMMENDED_CONCEPT_PICTURES}
        if self.negatives is not None and self.negatives.shape[0] < RECOMMENDED_CONCEPT_PICTURES:
            few["negatives"] = self.negatives.shape[0]
        if few:
            self._warned_few = True
            rank_zero_warn(
                f"{self.name}: few pictures for {few}: below {RECOMMENDED_CONCEPT_PICTURES} per concept a CAV changes "
                "with the pictures drawn where the layer does not encode the concept, and the cosine the alert reads "
                "is inflated (measured in docs/concepts.md), so a clean model can raise a false alarm; give at least "
                f"{RECOMMENDED_CONCEPT_PICTURES} pictures per concept."
            )

    # ------------------------------------------------------------------ history and state
    @override
    def reset_history(self) -> None:
        self.verdicts: dict[tuple[str, int, str], ShortcutVerdict] = {}
        self.alerts: list[tuple[int, str, str, str]] = []
        """``(step, concept, class name, layer)`` of every alert this run."""
        self.clears: list[tuple[int, str, str, str]] = []
        self.last_results: dict[tuple[str, str], TCAVResult] = {}
        """The last step's :class:`~probelens.methods.tcav.TCAVResult` per (concept, layer)."""
        self._told_unarmed = False
        self._told_nonfinite = False

    def _verdict(self, key: tuple[str, int, str]) -> ShortcutVerdict:
        if key not in self.verdicts:
            # the verdict's score is 1 for a counting step and 0 otherwise, so any threshold in (0, 1] reads it
            self.verdicts[key] = ShortcutVerdict(threshold=1.0, patience=self.patience)
        return self.verdicts[key]

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "verdicts": {"|".join(map(str, k)): v.state_dict() for k, v in self.verdicts.items()},
            "alerts": [list(a) for a in self.alerts],
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for key, state in state_dict.get("verdicts", {}).items():
            concept, k, layer = key.split("|", 2)
            self._verdict((concept, int(k), layer)).load_state_dict(state)
        self.alerts = [(int(a[0]), str(a[1]), str(a[2]), str(a[3])) for a in state_dict.get("alerts", [])]

    # ------------------------------------------------------------------ configure and log
    @override
    def configure(self, pl_module: nn.Module) -> None:
        assert self.probe is not None
        if not self._probe_given or not self.concepts:  # a probe built from this trainer's data: check against it
            self._load_pictures(self.probe)
        layers = self._resolve_layers(pl_module, self.layer_spec)
        if isinstance(self.layer_spec, str) and self.layer_spec == "auto":
            name = list(layers)[-1]  # the deepest stage: where the measured separation is largest
            layers = {name: layers[name]}
        self._layers = layers
        self.layer_tags = {name: _tag(name) for name in layers}
        self._require(layers, gradients=True, input_gradient=False, target_sets={"label"})
        self._warn_few()

    def _chance(self) -> float:
        assert self.probe is not None
        counts = torch.bincount(self.probe.targets).float()
        return float(counts.max() / counts.sum())

    def _activations(self, model: nn.Module, like: Tensor) -> dict[str, dict[str, Tensor]]:
        """Per picture set (concept names and ``"negatives"``), per layer, the activations ``[M, ...]`` on the CPU."""
        sets = dict(self.concepts)
        if self.negatives is not None:
            sets["negatives"] = self.negatives
        batch = torch.cat(list(sets.values()))
        chunk = SharedPass.pass_chunk(model, like, backward=False)
        parts: dict[str, list[Tensor]] = {name: [] for name in self._layers}
        for start, stop in chunk_ranges(batch.shape[0], chunk):
            out = forward_backward(
                model,
                batch[start:stop].to(like),
                None,
                self._layers,
                gradients=False,
                input_gradient=False,
                output_transform=self.output_transform,
            )
            for name in self._layers:
                parts[name].append(out.activations[name].float().cpu())
        acts = {name: torch.cat(chunks) for name, chunks in parts.items()}
        result: dict[str, dict[str, Tensor]] = {}
        offset = 0
        for name, pictures in sets.items():
            result[name] = {layer: a[offset : offset + pictures.shape[0]] for layer, a in acts.items()}
            offset += pictures.shape[0]
        return result

    def _prefix(self, concept: str, k: int, layer: str) -> str:
        assert self.probe is not None
        tag = f"concept/{_tag(concept)}/{_tag(self.probe.class_name(k))}"
        return tag if len(self._layers) == 1 else f"{tag}/{self.layer_tags[layer]}"

    @override
    def explain(self, step: int, pl_module: nn.Module, trainer: Run) -> None:
        assert self.probe is not None
        result = self._pass(pl_module, step)
        finite = bool(torch.isfinite(result.logits).all())
        acts = self._activations(unwrap_compiled(pl_module), result.images) if finite else {}
        labels = self.probe.targets
        classes = sorted(int(k) for k in labels.unique())
        num_classes = int(result.logits.shape[1])
        predictions = result.predictions.cpu()
        accuracy = float((predictions == labels).float().mean()) if finite else math.nan  # argmax of NaN: no class
        gate_tag = self._gate_tag()
        gate = self._gate(predictions, labels, accuracy) if finite else math.nan
        min_accuracy = self.min_accuracy if self.min_accuracy is not None else (1.0 + self._chance()) / 2
        alpha = self.alpha / (len(classes) * len(self._layers))  # Bonferroni over the tests one concept makes
        metrics: dict[str, float] = {}
        counting: list[tuple[str, int, str]] = []
        for concept in self.concept_names:
            for layer in self._layers:
                res = None
                if finite:  # no CAV is fitted to NaN activations: every number of the step is NaN
                    neg = torch.cat([acts[other][layer] for other in self._negatives_for(concept)])
                    grads = result.gradients["label"][layer].float().cpu()
                    res = tcav(acts[concept][layer], neg, grads, labels, num_classes, runs=self.runs, seed=self.seed)
                    self.last_results[(concept, layer)] = res
                suffix = "" if len(self._layers) == 1 else f"/{self.layer_tags[layer]}"
                metrics[f"concept/{_tag(concept)}/cav_accuracy{suffix}"] = res.accuracy if res else math.nan
                for k in classes:
                    prefix = self._prefix(concept, k, layer)
                    cosine, p_cos = (res.cosine(k), res.cosine_p_values[k]) if res else (math.nan, math.nan)
                    metrics[prefix] = res.score(k) if res else math.nan
                    metrics[f"{prefix}/p_value"] = res.p_values[k] if res else math.nan
                    metrics[f"{prefix}/cosine"] = cosine
                    metrics[f"{prefix}/cosine_p_value"] = p_cos
                    # NaN, not 0, where the numbers are not finite (NaN weights): "not significant" would clear a
                    # standing alert on no evidence
                    known = finite and math.isfinite(cosine) and math.isfinite(p_cos)
                    significant = float(cosine >= self.threshold and p_cos < alpha) if known else math.nan
                    metrics[f"{prefix}/significant"] = significant
                    if concept in self.spurious:
                        counting.append((concept, k, layer))
        if not finite:
            self._say_nonfinite(step)
        metrics["concept/probe_accuracy"] = accuracy
        if gate_tag:
            metrics[gate_tag] = gate
        armed = not math.isnan(gate) and gate >= min_accuracy
        metrics["concept/armed"] = float(armed)
        self.writer.scalars(metrics, step)
        held_back: list[str] = []
        for concept, k, layer in counting:
            prefix = self._prefix(concept, k, layer)
            verdict = self._verdict((concept, k, layer))
            verdict.min_accuracy = min_accuracy
            was_active = verdict.active
            if not armed and metrics[f"{prefix}/significant"] == 1.0:
                held_back.append(f"{concept!r} for class {self.probe.class_name(k)!r} at {layer!r}")
            if verdict.update(metrics[f"{prefix}/significant"], gate):
                self._alert(trainer, step, concept, k, layer, metrics, prefix)
            elif was_active and not verdict.active:
                self._cleared(step, concept, k, layer, metrics, prefix)
        if finite and not armed and self.spurious:
            self._say_unarmed(step, gate, gate_tag, min_accuracy, held_back)

    def _gate(self, predictions: Tensor, labels: Tensor, accuracy: float) -> float:
        """The accuracy that arms the alert: with group labels each class's best group (worst class; a model that
        follows a spurious cue scores chance on a probe balanced over the groups, so overall probe accuracy would
        never arm it), else the probe ``accuracy`` (logged as concept/probe_accuracy already)."""
        assert self.probe is not None
        if self.probe.groups is None:
            return accuracy
        return agreeing_group_accuracy(group_accuracies(predictions, labels, self.probe.groups.cpu()))

    def _gate_tag(self) -> str:
        """The tag of the arming accuracy where it is not the probe accuracy (with group labels), else ``""``."""
        assert self.probe is not None
        return "" if self.probe.groups is None else "concept/agreeing_group_accuracy"

    def _say_nonfinite(self, step: int) -> None:
        if self._told_nonfinite:
            return
        self._told_nonfinite = True
        rank_zero_warn(
            f"{self.name}: the model's outputs on the probe hold NaN or Inf at step {step} (diverged weights?); this "
            "step's concept numbers are logged as NaN and neither raise nor clear an alert. Said once."
        )

    def _say_unarmed(self, step: int, gate: float, gate_tag: str, min_accuracy: float, held_back: list[str]) -> None:
        if self._told_unarmed:
            return
        self._told_unarmed = True
        what = "the accuracy of each class's best group (worst class)" if gate_tag else "the probe accuracy"
        text = (
            f"{self.name}: the concept alert is not armed at step {step}: {what} {gate:.2f} < min_accuracy "
            f"{min_accuracy:.2f}, so a model this close to chance neither raises nor clears an alert "
            "(concept/armed logs it per step; pass min_accuracy= to change the gate)."
        )
        if held_back:
            rank_zero_warn(f"{text} Held back at this step: {', '.join(held_back)}. Said once.")
        else:
            rank_zero_info(f"{text} Said once.")

    def _describe(self, concept: str, k: int, layer: str, metrics: dict[str, float], prefix: str) -> str:
        assert self.probe is not None
        return (
            f"concept {concept!r}, class {self.probe.class_name(k)!r}, layer {layer!r}: mean cosine between the "
            f"class-score gradient and the concept's CAV {metrics[f'{prefix}/cosine']:.2f} (threshold "
            f"{self.threshold}, p={metrics[f'{prefix}/cosine_p_value']:.1e} against random splits), TCAV score "
            f"{metrics[prefix]:.2f} (p={metrics[f'{prefix}/p_value']:.1e})"
        )

    def _alert(
        self, trainer: Run, step: int, concept: str, k: int, layer: str, metrics: dict[str, float], prefix: str
    ) -> None:
        assert self.probe is not None
        self.alerts.append((step, concept, self.probe.class_name(k), layer))
        if self.on_concept == "ignore":
            return
        text = (
            f"Spurious concept suspected at step {step} (epoch {trainer.current_epoch}): "
            f"{self._describe(concept, k, layer, metrics, prefix)}, significant for {self.patience} log steps: the "
            f"class's score rises along {concept!r}, which you named spurious."
        )
        self.writer.text("concept/alert", text, step)
        rank_zero_warn(f"{self.name}: {text}")
        if self.on_concept == "stop":
            trainer.should_stop = True

    def _cleared(self, step: int, concept: str, k: int, layer: str, metrics: dict[str, float], prefix: str) -> None:
        assert self.probe is not None
        self.clears.append((step, concept, self.probe.class_name(k), layer))
        if self.on_concept == "ignore":
            return
        text = f"Concept alert cleared at step {step}: {self._describe(concept, k, layer, metrics, prefix)}."
        self.writer.text("concept/alert", text, step)
        rank_zero_info(f"{self.name}: {text}")

    @override
    def after_firing(self, trainer: Run) -> None:
        if self.on_concept == "stop" and trainer.world_size > 1:
            # the verdict is computed on rank 0 only; every rank reaches this hook, so the broadcast is collective
            trainer.should_stop = bool(trainer.strategy.broadcast(trainer.should_stop, src=0))
