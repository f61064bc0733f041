"""`probelens export`: GIFs, filmstrips, scalar plots and index.html from a real training run's event files."""

from __future__ import annotations

import io
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from lit import LitClassifier, decode, loaders, random_data, read_events, trainer
from probelens import GradCAMMonitor, ProbeSet, SaliencyMonitor
from probelens.__main__ import main as cli_main
from probelens.export import main

RUN = "tb__version_0"  # the run folder inside the export for the run "tb/version_0"
GAP = 4  # pixels between filmstrip frames


@dataclass
class LoggedRun:
    logdir: Path
    run_dir: Path
    images: dict[str, list[int]]  # image tag -> logged steps
    heights: dict[str, int]  # image tag -> tallest logged picture (the GIF frames add the step band below)
    scalars: list[str]


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory) -> LoggedRun:
    torch.manual_seed(0)
    logdir = tmp_path_factory.mktemp("logs")
    probe = ProbeSet.from_dataset(random_data(32, seed=2), num_samples=6, seed=0, class_names=["cat", "dog"])
    monitors = [
        GradCAMMonitor(probe, layers="all"),  # end of each validation: the val_loss steps 3, 7, 11
        SaliencyMonitor(
            probe, methods=("vanilla", "gradient_x_input"), every_n_steps=2
        ),  # train_loss steps 1, 3, .. 11
    ]
    train, val = loaders(n=64, batch_size=16)
    tr = trainer(logdir, monitors, max_epochs=3)
    tr.fit(LitClassifier(), train, val)
    acc = read_events(tr.logger.log_dir)
    images = {tag: [e.step for e in acc.Images(tag)] for tag in acc.Tags()["images"]}
    assert images["probelens/gradcam/model.8"] == [3, 7, 11]
    assert images["probelens/saliency/vanilla"] == [1, 3, 5, 7, 9, 11]
    heights = {tag: max(e.height for e in acc.Images(tag)) for tag in images}
    return LoggedRun(
        logdir=logdir, run_dir=Path(tr.logger.log_dir), images=images, heights=heights, scalars=acc.Tags()["scalars"]
    )


@pytest.fixture(scope="module")
def exported(logged_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export")
    assert main([str(logged_run.logdir), "--out", str(out), "--fps", "4"]) == 0
    return out


def slug(tag: str) -> str:
    return tag.replace("/", "__")


def gif_frames(path: Path) -> list[np.ndarray]:
    with Image.open(path) as im:
        return [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(im)]


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.scripts += tag == "script"
        for key in ("src", "href"):
            if attrs.get(key) and not attrs[key].startswith("#"):
                self.refs.append(urllib.parse.unquote(attrs[key]))


def test_one_gif_per_image_tag_with_one_non_blank_frame_per_logged_step(logged_run, exported):
    assert len(logged_run.images) == 6  # 3 Grad-CAM layers + the Grad-CAM filmstrip + 2 saliency methods
    for tag, steps in logged_run.images.items():
        gif = exported / RUN / "images" / f"{slug(tag)}.gif"
        with Image.open(gif) as im:
            assert im.n_frames == len(steps), tag
            assert im.info["duration"] == 250  # --fps 4
            assert im.info["loop"] == 0
        frames = gif_frames(gif)
        assert len({f.shape for f in frames}) == 1
        height = logged_run.heights[tag]
        for k, frame in enumerate(frames):
            picture, band = frame[:height], frame[height:]
            assert picture.std() > 5, f"{tag}: frame {k} is blank"
            assert 10 <= band.shape[0] <= 24 and band.mean() < 100, f"{tag}: frame {k} has no step band"
        # the model trains between the steps: the first and last pictures differ
        assert np.abs(frames[0][:height].astype(int) - frames[-1][:height].astype(int)).mean() > 1, tag


def test_grad_cam_grid_keeps_its_size_and_the_growing_filmstrip_tag_is_padded_not_squeezed(logged_run, exported):
    acc = read_events(logged_run.run_dir)
    first = acc.Images("probelens/gradcam/model.4")[0]
    with Image.open(exported / RUN / "images" / "probelens__gradcam__model.4.gif") as im:
        assert im.width == first.width and im.height > first.height  # + the step band
    growing = acc.Images("probelens/gradcam_filmstrip/model.8")
    assert growing[0].width < growing[-1].width  # the tag's own picture grows by one column per step
    with Image.open(exported / RUN / "images" / "probelens__gradcam_filmstrip__model.8.gif") as im:
        assert im.width == max(e.width for e in growing)
        assert im.height > max(e.height for e in growing)


def test_filmstrip_has_at_most_max_frames_and_grows_with_them(logged_run, exported, tmp_path):
    widths = {}
    for max_frames in (2, 4):
        out = tmp_path / str(max_frames)
        assert main([str(logged_run.logdir), "--out", str(out), "--max-frames", str(max_frames)]) == 0
        widths[max_frames] = out
    widths[16] = exported  # the default
    for tag, steps in logged_run.images.items():
        with Image.open(exported / RUN / "images" / f"{slug(tag)}.gif") as im:
            frame_width, frame_height = im.size
        got = []
        for max_frames, out in sorted(widths.items()):
            with Image.open(out / RUN / "images" / f"{slug(tag)}.filmstrip.png") as strip:
                k = min(max_frames, len(steps))
                assert strip.size == (k * frame_width + (k - 1) * GAP, frame_height), (tag, max_frames)
                got.append(strip.width)
        assert got == sorted(got), tag
        if len(steps) > 4:
            assert got[0] < got[1] < got[2], tag
    # the frames shown are evenly spaced, first and last included: steps 2, 6, 8, 12 of 2, 4, ..., 12
    with Image.open(widths[4] / RUN / "images" / "probelens__saliency__vanilla.filmstrip.png") as im:
        strip = np.asarray(im.convert("RGB"))
    events = read_events(logged_run.run_dir).Images("probelens/saliency/vanilla")
    for slot, step_index in enumerate((0, 2, 3, 5)):
        logged = decode(events[step_index])
        x = slot * (logged.shape[1] + GAP)
        assert np.array_equal(strip[: logged.shape[0], x : x + logged.shape[1]], logged), f"slot {slot}"


def test_index_html_links_every_gif_filmstrip_and_plot_and_nothing_missing(logged_run, exported):
    index = exported / "index.html"
    text = index.read_text(encoding="utf-8")
    links = Links()
    links.feed(text)
    assert links.scripts == 0
    assert links.refs and all(not r.startswith(("http:", "https:", "//", "/")) for r in links.refs)
    for ref in links.refs:
        assert (exported / ref).is_file(), f"index.html links a missing file: {ref}"
    referenced = {(exported / r).resolve() for r in links.refs}
    written = {p.resolve() for p in exported.rglob("*") if p.suffix in (".gif", ".png")}
    assert written == referenced
    for tag in logged_run.images:
        assert f"{RUN}/images/{slug(tag)}.gif" in links.refs, tag
        assert f"{RUN}/images/{slug(tag)}.filmstrip.png" in links.refs, tag
        assert tag in text
    assert "tb/version_0" in text
    # grouped by tag prefix
    for group in ("probelens/gradcam", "probelens/gradcam_filmstrip", "probelens/saliency", "probelens/cost_ms"):
        assert f"<h4>{group}</h4>" in text, group


def test_scalar_curves_are_drawn(logged_run, exported):
    plotted = {"probelens/cost_ms/GradCAMMonitor", "probelens/cost_ms/SaliencyMonitor", "train_loss", "val_loss"}
    assert plotted <= set(logged_run.scalars)
    for tag in plotted:
        with Image.open(exported / RUN / "scalars" / f"{slug(tag)}.png") as im:
            assert im.format == "PNG"
            pixels = np.asarray(im.convert("RGB"))
        assert pixels.std() > 5, tag
        assert (np.abs(pixels.astype(int) - (210, 85, 45)).sum(axis=-1) < 60).sum() > 50, f"{tag}: no curve drawn"
    assert not (exported / RUN / "scalars" / "epoch.png").exists()  # listed as "not drawn" instead
    assert "<code>epoch</code>" in (exported / "index.html").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "tag", ["probelens/saliency/vanilla", "probelens/gradcam/model.8", "probelens/gradcam/model.0"]
)
def test_each_probe_image_gets_its_own_cell_over_training(logged_run, exported, tag):
    steps = logged_run.images[tag]
    first = read_events(logged_run.run_dir).Images(tag)[0]
    grid = np.asarray(Image.open(io.BytesIO(first.encoded_image_string)).convert("RGB"))
    # where labelled_grid puts 6 tiles (its documented layout: ncol = ceil(sqrt(6)) = 3, 2 rows, pad 2, no title)
    pad, ncol, nrow = 2, 3, 2
    cell_w, rem_w = divmod(grid.shape[1] - (ncol + 1) * pad, ncol)
    cell_h, rem_h = divmod(grid.shape[0] - (nrow + 1) * pad, nrow)
    assert rem_w == rem_h == 0
    folder = exported / RUN / "probe_images" / slug(tag)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        name for k in range(6) for name in (f"probe_{k:03d}.gif", f"probe_{k:03d}.filmstrip.png")
    )
    # grid position j shows probe image order[j] (interleaved by class, from the probe's targets alone)
    order = ProbeSet.from_dataset(random_data(32, seed=2), num_samples=6, seed=0).interleaved().tolist()
    crops = [None] * 6
    for j, k in enumerate(order):
        row, col = divmod(j, ncol)
        x0, y0 = pad + col * (cell_w + pad), pad + row * (cell_h + pad)
        crops[k] = grid[y0 : y0 + cell_h, x0 : x0 + cell_w]
    for k in range(6):
        strip = np.asarray(Image.open(folder / f"probe_{k:03d}.filmstrip.png").convert("RGB"))
        assert np.array_equal(strip[:cell_h, :cell_w], crops[k]), f"probe image {k}: not its cell at step {steps[0]}"
        with Image.open(folder / f"probe_{k:03d}.gif") as im:
            assert im.n_frames == len(steps)
            assert im.width >= cell_w and im.height > cell_h  # + the step band
        frame = gif_frames(folder / f"probe_{k:03d}.gif")[0][:cell_h, :cell_w].astype(int)
        errors = [np.abs(frame - crop.astype(int)).mean() for crop in crops]  # GIF frames are palette-quantised
        assert int(np.argmin(errors)) == k and errors[k] < 6, errors
    text = (exported / "index.html").read_text(encoding="utf-8")
    assert "<h3>Per probe image</h3>" in text
    for k in range(6):
        assert f"<h4>probe image #{k}</h4>" in text
        assert f"{RUN}/probe_images/{slug(tag)}/probe_{k:03d}.gif" in text


def test_pictures_that_are_not_per_probe_image_get_no_probe_cells(exported):
    assert not (exported / RUN / "probe_images" / slug("probelens/gradcam_filmstrip/model.8")).exists()


def test_python_dash_m_probelens_export_writes_to_the_default_folder(logged_run, exported):
    proc = subprocess.run(
        [sys.executable, "-m", "probelens", "export", str(logged_run.logdir), "--fps", "4"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = logged_run.logdir / "probelens_export"
    assert str(out / "index.html") in proc.stdout
    assert "6 image tag(s)" in proc.stdout
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file())
    for tag, steps in logged_run.images.items():
        with Image.open(out / RUN / "images" / f"{slug(tag)}.gif") as im:
            assert im.n_frames == len(steps)
    # a second export over the same log directory does not pick up its own output as a run
    assert main([str(logged_run.logdir), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["index.html", RUN]


def test_console_script_is_installed_and_exports(logged_run, tmp_path):
    """The ``probelens`` entry point from ``[project.scripts]``, as a user types it after ``pip install``."""
    script = Path(sys.executable).with_name("probelens")
    if not script.exists():
        pytest.skip("the probelens console script is not installed (package not pip-installed)")
    out = tmp_path / "export"
    proc = subprocess.run(
        [str(script), "export", str(logged_run.logdir), "--out", str(out), "--max-frames", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    tag = slug("probelens/saliency/vanilla")  # logged at 6 steps
    with Image.open(out / RUN / "images" / f"{tag}.gif") as im:
        assert im.n_frames == 6
        frame_width = im.width
    with Image.open(out / RUN / "images" / f"{tag}.filmstrip.png") as strip:
        assert strip.width == 2 * frame_width + GAP  # --max-frames 2 reached the exporter through the script
    assert (out / "index.html").is_file()


def test_missing_log_directory_exits_2(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "nope" in err
    assert cli_main(["export", str(tmp_path / "nope")]) == 2


def test_no_event_files_says_what_was_found(tmp_path, capsys):
    (tmp_path / "hparams.yaml").write_text("lr: 0.1\n")
    assert main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no TensorBoard event files" in err and "hparams.yaml" in err
    assert not (tmp_path / "probelens_export").exists()


def test_run_without_images_says_what_was_found(tmp_path, capsys):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "scalars_only")) as writer:
        for step in range(3):
            writer.add_scalar("train_loss", 1.0 / (step + 1), step)
    assert main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no image tags" in err and "'scalars_only' has scalars (1)" in err and "TensorBoardLogger" in err


def test_bad_arguments(tmp_path, capsys):
    for argv in (["--fps", "0"], ["--max-frames", "0"], []):
        with pytest.raises(SystemExit) as exc:
            main([str(tmp_path), *argv] if argv else argv)
        assert exc.value.code == 2
    assert cli_main([]) == 2
    assert cli_main(["exprot", str(tmp_path)]) == 2
    assert "unknown command 'exprot'" in capsys.readouterr().err


def test_rows_are_keyed_by_probe_set_and_index(tmp_path):
    """Two monitors on different probe sets: their cells #0 show different images, so they never share a row, and
    the page names the probe set of each tag (its fingerprint, which every grid records beside its cells)."""
    from probelens.render import probe_from_text

    small = ProbeSet.from_dataset(random_data(32, seed=2), num_samples=4, seed=0)
    other = ProbeSet.from_dataset(random_data(32, seed=5), num_samples=4, seed=1)
    monitors = [
        GradCAMMonitor(small, layers="last", filmstrip=False),
        SaliencyMonitor(other, methods="vanilla", name="other"),
    ]
    train, val = loaders(n=32, batch_size=16)
    tr = trainer(tmp_path / "logs", monitors, max_epochs=1)
    tr.fit(LitClassifier(), train, val)
    acc = read_events(tr.logger.log_dir)
    for tag, probe in (("probelens/gradcam/model.8", small), ("probelens/other/saliency/vanilla", other)):
        with Image.open(io.BytesIO(acc.Images(tag)[-1].encoded_image_string)) as im:
            assert probe_from_text(im.info) == probe.fingerprint(), tag
    out = tmp_path / "export"
    assert main([str(tmp_path / "logs"), "--out", str(out)]) == 0
    text = (out / "index.html").read_text(encoding="utf-8")
    assert "The monitors used different probe sets" in text
    assert small.fingerprint() in text and other.fingerprint() in text
    sets = sorted([small.fingerprint(), other.fingerprint()])
    label = {sets[0]: "A", sets[1]: "B"}
    for k in range(4):
        for probe in (small, other):
            assert f"<h4>probe image #{k} of probe set {label[probe.fingerprint()]}</h4>" in text
    assert "<h4>probe image #0</h4>" not in text  # no row mixing the two sets
