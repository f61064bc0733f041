"""``probelens export`` on hostile logs (``hostile_logs.py``): an oversized PNG is skipped with a warning that names
it and the export carries on; tags that look like paths or HTML write nothing outside the output folder and nothing
unescaped into the page; runs behind symbolic links are exported, a link loop ends."""

from __future__ import annotations

import os
from html.parser import HTMLParser

import pytest
from hostile_logs import BOMB, GOOD, HOSTILE_TAGS, write_hostile_logs
from PIL import Image, ImageSequence

from probelens.export import export, main
from probelens.logs import find_runs


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return write_hostile_logs(tmp_path_factory.mktemp("hostile"))


def test_find_runs_follows_links_and_ends_on_a_loop(hostile):
    runs = [p.relative_to(hostile.logdir).as_posix() for p in find_runs(hostile.logdir)]
    assert runs == [hostile.linked, "real/version_0"]  # the loop back to logs/ is not walked again


def test_oversized_pictures_are_skipped_with_a_warning_and_the_export_goes_on(hostile, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(hostile.logdir), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "DecompressionBombError" not in err and "Traceback" not in err
    for run in ("real/version_0", hostile.linked):
        for step, size in hostile.skipped.items():
            line = f"warning: run {run!r}, tag {BOMB!r}, step {step}: skipped, {size} pixels"
            assert line in err, err
    # the tag's other steps are there, one frame each
    gifs = list(out.rglob("probelens__saliency__vanilla.gif"))
    assert len(gifs) == 2  # both runs
    with Image.open(gifs[0]) as gif:
        assert sum(1 for _ in ImageSequence.Iterator(gif)) == 2
    assert len(list(out.rglob("probelens__gradcam__net.0.gif"))) == 2


def test_the_api_warns_and_records_what_it_skipped(hostile, tmp_path):
    with pytest.warns(UserWarning, match="step 1: skipped, 100000x100000 pixels"):
        result = export(hostile.logdir, out=tmp_path / "out")
    (real,) = [r for r in result.runs if r.name == "real/version_0"]
    assert [line.split("step ")[1].split(":")[0] for line in real.skipped] == ["1", "3"]
    assert {t.tag for t in real.images} == {GOOD, BOMB, *HOSTILE_TAGS}


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.texts: list[str] = []
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]
        assert not any(k.startswith("on") for k, _ in attrs), (tag, attrs)

    def handle_data(self, data):
        self.texts.append(data)


def test_hostile_tags_stay_inside_the_output_folder_and_are_escaped(hostile, tmp_path):
    out = tmp_path / "out"
    export(hostile.logdir, out=out)
    assert not (tmp_path / "outside").exists() and not (hostile.logdir.parent / "outside").exists()
    for path in out.rglob("*"):
        assert out.resolve() in path.resolve().parents, path
        assert ".." not in path.relative_to(out).parts
    page = _Page()
    page.feed((out / "index.html").read_text(encoding="utf-8"))
    assert "script" not in page.tags  # the tag named <script> is text, not an element
    assert all(not ref.startswith(("/", "..")) and ".." not in ref.split("/") for ref in page.refs), page.refs
    text = "".join(page.texts)
    for tag in HOSTILE_TAGS:
        assert tag in text  # shown as written
    assert os.listdir(out)  # something was exported


def test_dashboard_index_lists_the_hostile_logs(hostile):
    """The dashboard's reader on the same folder (its HTTP side: ``tests/dashboard/test_hostile_logs.py``)."""
    from probelens.dashboard.index import LogIndex

    index = LogIndex(hostile.logdir, rescan_s=0.0)
    index.refresh()
    listing = index.listing()
    assert [r["run"] for r in listing["runs"]] == [hostile.linked, "real/version_0"]
    summary = index.run("real/version_0").summary()
    bomb = next(p for p in summary["grids"] + summary["pictures"] if p["tag"] == BOMB)
    assert [(e["step"], e["w"], e["h"]) for e in bomb["entries"]][1::2] == [(1, 100000, 100000), (3, 20000, 20000)]
    assert dict(map(tuple, summary["scalars"]["shortcut/score"]))[2] is None
    assert {g["tag"] for g in summary["grids"]} >= set(HOSTILE_TAGS)
