"""The probelens plugin inside a real ``tensorboard`` server (loaded through the ``tensorboard_plugins`` entry point),
on the event files of real Lightning runs: its routes, every logged step, two runs, an empty logdir, a logdir without
probelens data, logs without the cell layout (earlier probelens versions), and listings read again as files grow."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tb_client import STEPS, get, get_json, wait_indexed

from lit import read_events
from probelens.dashboard.index import LogIndex
from probelens.render.image import cells_from_text, probe_from_text

P = "/data/plugin/probelens"
GRIDS = {"probelens/gradcam/model.8", "probelens/saliency/vanilla"}


def _boxes(png: bytes) -> dict[str, list[int]]:
    """Probe index -> the box around its cells, straight from the PNG's text chunk (independent of the plugin)."""
    with Image.open(io.BytesIO(png)) as image:
        cells = cells_from_text(image.text)
    boxes: dict[str, list[int]] = {}
    for k, *box in cells:
        old = boxes.get(str(k), box)
        boxes[str(k)] = [min(old[0], box[0]), min(old[1], box[1]), max(old[2], box[2]), max(old[3], box[3])]
    return boxes


def test_routes_list_every_logged_step_of_two_runs_and_serve_the_stored_pictures(two_runs, serve):
    runs = {f"{name}/version_0": read_events(two_runs / name / "version_0") for name in ("a", "b")}
    with serve(two_runs) as port:
        listing = get_json(port, "/data/plugins_listing")["probelens"]
        assert listing["enabled"] is True and listing["tab_name"] == "probelens"
        assert listing["loading_mechanism"] == {"type": "IFRAME", "module_path": f"{P}/index.js"}

        served = wait_indexed(port)
        assert served["message"] is None
        assert [r["run"] for r in served["runs"]] == sorted(runs)
        assert all(r["probelens"] and r["shortcut"] and r["steps"] == STEPS for r in served["runs"])

        alerted = 0
        for name, acc in runs.items():
            summary = get_json(port, f"{P}/run", run=name)
            assert summary["run"] == name and summary["steps"] == list(range(STEPS))
            assert {g["tag"] for g in summary["grids"]} == GRIDS
            assert [p["tag"] for p in summary["panels"]] == ["shortcut/counterfactuals"]
            assert "probelens/gradcam_filmstrip/model.8" in {p["tag"] for p in summary["pictures"]}
            truths: dict[str, str] = {}
            for item in summary["grids"] + summary["panels"]:
                logged = acc.Images(item["tag"])
                # every logged step, not TensorBoard's sample of 10
                assert [e["step"] for e in item["entries"]] == [e.step for e in logged] == list(range(STEPS))
                for entry, event in zip(item["entries"], logged):
                    png = event.encoded_image_string
                    with Image.open(io.BytesIO(png)) as image:
                        assert (entry["w"], entry["h"]) == image.size
                        assert entry["probe"] == probe_from_text(image.text)
                    assert entry["boxes"] == _boxes(png)
                    if item in summary["grids"]:
                        assert set(entry["predictions"]) == set(entry["boxes"])
                        for k, (truth, pred, prob) in entry["predictions"].items():
                            assert truths.setdefault(k, truth) == truth  # a probe image's label never changes
                            assert pred in ("snow", "arabian") and 0.5 <= prob <= 1.0
            # one model at one step: both methods caption the same predictions
            by_tag = {g["tag"]: g["entries"] for g in summary["grids"]}
            a, b = sorted(GRIDS)
            assert [e["predictions"] for e in by_tag[a]] == [e["predictions"] for e in by_tag[b]]
            # rows in the order the grids show the probe images (interleaved by class), so the first screen holds
            # every class
            shown_order = [int(k) for k in _boxes(acc.Images(a)[0].encoded_image_string)]
            assert summary["probes"] == {by_tag[a][0]["probe"]: shown_order}
            assert len({truths[str(k)] for k in shown_order[:2]}) == 2
            score = [[e.step, e.value] for e in acc.Scalars("shortcut/score")]
            assert summary["scalars"]["shortcut/score"] == [[s, float(np.float32(v))] for s, v in score]
            assert set(summary["scalars"]) == {t for t in acc.Tags()["scalars"] if t.startswith("shortcut/")}
            alerts = [e.step for e in acc.Tensors("shortcut/alert/text_summary")]
            assert [a["step"] for a in summary["alerts"]] == alerts
            alerted += len(alerts)
            assert all(
                a["text"].startswith(("Shortcut suspected", "Shortcut alert cleared")) for a in summary["alerts"]
            )

            for step in (0, 5, STEPS - 1):
                status, body, headers = get(port, f"{P}/image", run=name, tag="probelens/gradcam/model.8", step=step)
                assert status == 200 and headers["Content-Type"].startswith("image/png")
                assert body == acc.Images("probelens/gradcam/model.8")[step].encoded_image_string  # as stored

        assert alerted > 0  # these tiny runs lean on the background: the alert texts are there to be listed
        status, body, _ = get(port, f"{P}/run", run="c/version_0")
        assert status == 404 and "no run 'c/version_0'" in json.loads(body)["error"]
        assert "a/version_0, b/version_0" in json.loads(body)["error"]
        status, body, _ = get(port, f"{P}/image", run="a/version_0", tag="probelens/gradcam/model.8", step=STEPS)
        assert status == 404 and f"at step {STEPS}" in json.loads(body)["error"]
        status, body, _ = get(port, f"{P}/image", run="a/version_0", tag="probelens/gradcam/model.8", step="x")
        assert status == 400 and "step must be an integer" in json.loads(body)["error"]
        status, body, _ = get(port, f"{P}/run")
        assert status == 400 and "run= parameter is missing" in json.loads(body)["error"]

        status, body, headers = get(port, f"{P}/index.js")
        assert status == 200 and headers["Content-Type"].startswith("text/javascript")
        assert b"export async function render()" in body
        for name in ("dashboard.js", "charts.js", "style.css"):
            assert get(port, f"{P}/static/{name}")[0] == 200
        status, body, _ = get(port, f"{P}/static/secret.py")
        assert status == 404 and "no static file 'secret.py'" in json.loads(body)["error"]


def _write_scalars(writer, steps: range) -> None:
    for step in steps:
        writer.add_scalar("train_loss", 1.0 / (step + 1), step)
    writer.flush()


def test_empty_logdir_and_logdir_without_probelens_say_so_and_listings_follow_growing_files(tmp_path, serve):
    from torch.utils.tensorboard import SummaryWriter

    empty = tmp_path / "empty"
    empty.mkdir()
    with serve(empty) as port:
        assert get_json(port, "/data/plugins_listing")["probelens"]["enabled"] is False
        served = wait_indexed(port)
        assert served["runs"] == [] and "No TensorBoard event files (events.out.tfevents.*)" in served["message"]

    logdir = tmp_path / "plain"
    writer = SummaryWriter(str(logdir / "run1"))
    try:
        _write_scalars(writer, range(3))
        with serve(logdir) as port:
            served = wait_indexed(port)
            assert [r["probelens"] for r in served["runs"]] == [False]
            assert "None of the 1 run(s)" in served["message"] and "(run1)" in served["message"]
            assert "GradCAMMonitor" in served["message"]
            assert get_json(port, "/data/plugins_listing")["probelens"]["enabled"] is False

            # a picture written the way TensorBoard writes any image: no probelens cell layout (as in logs of
            # probelens before 0.2): listed as a whole picture, never cut into cells
            picture = np.zeros((3, 8, 12), dtype=np.uint8)
            for step in range(4):
                writer.add_image("probelens/gradcam/layer4", picture + step, step)
            writer.flush()
            deadline = time.monotonic() + 10
            while not get_json(port, f"{P}/runs")["runs"][0]["probelens"] and time.monotonic() < deadline:
                time.sleep(0.2)
            summary = get_json(port, f"{P}/run", run="run1")
            assert summary["grids"] == [] and summary["steps"] == [0, 1, 2, 3]
            (item,) = summary["pictures"]
            assert item["tag"] == "probelens/gradcam/layer4" and all("boxes" not in e for e in item["entries"])
            assert get_json(port, f"{P}/runs")["message"] is None
            assert get_json(port, "/data/plugins_listing")["probelens"]["enabled"] is True

            # a new run appears at the next scan of the directory tree (at most 2 s later)
            second = SummaryWriter(str(logdir / "run2"))
            _write_scalars(second, range(2))
            second.close()
            deadline = time.monotonic() + 10
            while len(get_json(port, f"{P}/runs")["runs"]) < 2 and time.monotonic() < deadline:
                time.sleep(0.3)
            assert [r["run"] for r in get_json(port, f"{P}/runs")["runs"]] == ["run1", "run2"]
    finally:
        writer.close()


def test_missing_logdir_names_the_folder_and_the_fix(tmp_path):
    listing = LogIndex(tmp_path / "nowhere").listing()
    assert listing["runs"] == [] and "does not exist" in listing["message"]
    assert "tensorboard --logdir" in listing["message"]


def test_a_run_written_after_the_listing_is_read_again(two_runs, copy_of):
    logdir = copy_of(two_runs)
    index = LogIndex(logdir, rescan_s=0.0)
    index.refresh()
    run = index.run("a/version_0")
    assert run is not None and run.summary()["steps"] == list(range(STEPS))
    assert run.refresh() is False  # nothing grew: the cached listing
    events = sorted(Path(run.path).glob("events.out.tfevents.*"))
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run.path))
    writer.add_scalar("shortcut/score", 0.25, STEPS + 3)
    writer.close()
    assert len(sorted(Path(run.path).glob("events.out.tfevents.*"))) == len(events) + 1
    assert run.refresh() is True
    assert run.summary()["scalars"]["shortcut/score"][-1] == [STEPS + 3, 0.25]
