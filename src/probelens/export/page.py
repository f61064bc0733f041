"""The export's ``index.html``: fragments of a template shipped with the package (``page.html``, ``style.css``)
filled with :class:`string.Template`; relative links only, no scripts, no external assets."""

from __future__ import annotations

import functools
import html
import os
import re
import urllib.parse
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from probelens.export.results import ProbeImageExport, RunExport

__all__ = ["render_index"]

_FRAGMENT = re.compile(r"^<!-- fragment (\w+) -->\n", re.MULTILINE)


@functools.cache
def _fragments() -> dict[str, Template]:
    text = resources.files("probelens.export").joinpath("page.html").read_text(encoding="utf-8")
    parts = _FRAGMENT.split(text)[1:]  # [name, body, name, body, ...]; the leading comment dropped
    return {name: Template(body.rstrip("\n")) for name, body in zip(parts[::2], parts[1::2])}


def _fill(fragment: str, **values: Any) -> str:
    """The fragment with its placeholders filled: ``*_html`` values as given, every other value as escaped text."""
    return _fragments()[fragment].substitute(
        {k: v if k.endswith("_html") else html.escape(str(v)) for k, v in values.items()}
    )


def _join(fragments: Iterable[str]) -> str:
    return "\n".join(fragments)


def _href(path: Path, base: Path) -> str:
    return urllib.parse.quote(Path(os.path.relpath(path, base)).as_posix())


def _group(tag: str) -> str:
    return tag.rsplit("/", 1)[0] if "/" in tag else "(top level)"


def _grouped(items: Sequence[Any]) -> list[tuple[str, list[Any]]]:
    groups: dict[str, list[Any]] = {}
    for item in items:
        groups.setdefault(_group(item.tag), []).append(item)
    return sorted(groups.items())


def _steps_text(steps: Sequence[int]) -> str:
    return f"1 step ({steps[0]})" if len(steps) == 1 else f"{len(steps)} steps ({steps[0]} to {steps[-1]})"


def _codes(texts: Iterable[str]) -> str:
    return ", ".join(_fill("code", text=t) for t in texts)


def render_index(runs: Sequence[RunExport], out: Path, logdir: Path, max_frames: int, fps: float) -> str:
    """The static ``index.html`` for ``runs`` (relative links into ``out``, no scripts, no external assets).

    Args:
        runs: The exported runs.
        out: The folder ``index.html`` goes into.
        logdir: The log directory (shown in the header).
        max_frames: The filmstrip limit used (shown in the header).
        fps: The GIF speed used (shown in the header).

    Returns:
        The HTML document.
    """
    css = resources.files("probelens.export").joinpath("style.css").read_text(encoding="utf-8")
    nav = [
        _fill("nav_item", k=k, name=run.name, images=len(run.images), scalars=len(run.scalars))
        for k, run in enumerate(runs)
    ]
    return (
        _fill(
            "document",
            logdir=logdir,
            runs=f"{len(runs)} run{'s' if len(runs) != 1 else ''}",
            fps=f"{fps:g}",
            max_frames=max_frames,
            css_html=css,
            nav_html=_join(nav),
            runs_html=_join(_run_section(k, run, out) for k, run in enumerate(runs)),
        )
        + "\n"
    )


def _run_section(k: int, run: RunExport, out: Path) -> str:
    scalars = ""
    if run.scalars:
        groups = [
            _fill(
                "scalar_group",
                group=group,
                plots_html=_join(_fill("scalar_plot", src=_href(s.plot, out), tag=s.tag) for s in items),
            )
            for group, items in _grouped(run.scalars)
        ]
        scalars = _fill("scalars", groups_html=_join(groups))
    other = _fill("other_scalars", tags_html=_codes(run.other_scalars)) if run.other_scalars else ""
    if run.images:
        groups = [
            _fill("image_group", group=group, tags_html=_join(_image_tag(t, out) for t in items))
            for group, items in _grouped(run.images)
        ]
        images = _fill("images", groups_html=_join(groups))
    else:
        images = _fill("no_images")
    return _fill(
        "run",
        k=k,
        name=run.name,
        scalars_html=scalars,
        other_scalars_html=other,
        probe_images_html=_probe_images(run, out),
        images_html=images,
    )


def _image_tag(t: Any, out: Path) -> str:
    return _fill(
        "image_tag",
        tag=t.tag,
        steps=_steps_text(t.steps),
        gif=_href(t.gif, out),
        strip=_href(t.filmstrip, out),
        strip_steps=", ".join(map(str, t.filmstrip_steps)),
    )


def _probe_images(run: RunExport, out: Path) -> str:
    """The "Per probe image" part of a run: each probe image's methods side by side, one GIF each.

    Rows are keyed by probe set and index: grids drawn from different probe sets (monitors given different probes)
    never share a row, and the page lists which probe set each tag used."""
    by_image: dict[tuple[str, int], list[tuple[str, ProbeImageExport]]] = {}
    probe_of: dict[str, str] = {}
    for t in run.images:
        for p in t.probe_images:
            key = p.probe or "unrecorded"
            by_image.setdefault((key, p.index), []).append((t.tag, p))
            probe_of[t.tag] = key
    if not by_image:
        return ""
    probes = sorted(set(probe_of.values()))
    names = {
        probe: f"probe set {chr(ord('A') + i)}" if i < 26 else f"probe set {probe}" for i, probe in enumerate(probes)
    }
    sets = ""
    if len(probes) > 1:
        listed = [
            _fill(
                "probe_set",
                name=names[probe],
                fingerprint=probe,
                tags_html=_codes(tag for tag, p in sorted(probe_of.items()) if p == probe),
            )
            for probe in probes
        ]
        sets = _fill("probe_sets", sets_html=_join(listed))
    rows = []
    for probe, index in sorted(by_image):
        label = f"probe image #{index}" + (f" of {names[probe]}" if len(probes) > 1 else "")
        cells = [
            _fill("probe_cell", strip=_href(p.filmstrip, out), gif=_href(p.gif, out), tag=tag, label=label)
            for tag, p in by_image[(probe, index)]
        ]
        rows.append(_fill("probe_row", label=label, cells_html=_join(cells)))
    return _fill("probe_images", probe_sets_html=sets, rows_html=_join(rows))
