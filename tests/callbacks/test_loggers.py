"""Images and text reach every attached logger that takes them: real Trainer runs with TensorBoard, Weights & Biases
(offline) and MLflow (a local file store), read back from what each logger wrote."""

import csv
import glob
import importlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from lit import LitClassifier, decode, loaders, random_data, read_events, trainer
from probelens import GradCAMMonitor, ProbeSet, SaliencyMonitor
from probelens.core import sinks as _sinks
from probelens.core.sinks import MLflowSink, TensorBoardSink, WandbSink, register_sink, sinks_for
from probelens.render import cells_from_text

DEADLINE_S = 90  # the whole file takes ~30 s; a logger waiting on a network must fail the test, not hang the CI job
STEPS = [1, 3]  # 32 images in batches of 16, two epochs, one firing at each validation end (Lightning's log step)


@pytest.fixture(autouse=True)
def deadline():
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def expired(signum, frame):
        raise TimeoutError(f"a logger test ran past {DEADLINE_S} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(DEADLINE_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B in offline mode with every file under ``tmp_path``; a connection attempt would fail at once."""
    import wandb

    unreachable = "http://127.0.0.1:9"  # the discard port: nothing listens, so any request is refused
    env = {
        "WANDB_MODE": "offline",  # also restores the variable that WandbLogger(offline=True) overwrites
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_ERROR_REPORTING": "false",
        "WANDB_INIT_TIMEOUT": "30",
        "WANDB__DISABLE_STATS": "true",
        "WANDB__DISABLE_MACHINE_INFO": "true",
        "WANDB_BASE_URL": unreachable,
        "HTTP_PROXY": unreachable,
        "HTTPS_PROXY": unreachable,
        "WANDB_DIR": str(tmp_path),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb_data"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    yield wandb
    wandb.finish()


def make_probe():
    return ProbeSet.from_dataset(random_data(32, seed=2), num_samples=6, seed=0, class_names=["cat", "dog"])


def monitors():
    return [GradCAMMonitor(make_probe(), layers="last"), SaliencyMonitor(make_probe())]


def fit(tmp_path, logger):
    train, val = loaders(n=32, batch_size=16)
    tr = trainer(tmp_path, monitors(), logger=logger, max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr.fit(LitClassifier(), train, val)
    assert tr.global_step == STEPS[-1] + 1  # validation metrics are logged one behind global_step
    return tr, [str(w.message) for w in caught]


def tensorboard_images(log_dir):
    acc = read_events(log_dir)
    return {(tag, e.step): decode(e) for tag in acc.Tags()["images"] for e in acc.Images(tag)}


def read_png(path):
    with open(path, "rb") as fh:
        return np.asarray(Image.open(io.BytesIO(fh.read())).convert("RGB"))


def wandb_rows(run_dir):
    """The history rows of an offline W&B run, read from its transaction log (``run-<id>.wandb``): a LevelDB-style
    log of 32 KiB blocks after a 7-byte header, each record a 7-byte header (CRC, length, type) and a chunk of a
    protobuf ``Record``; type 1 is a whole record, 2/3/4 its first/middle/last chunk. Keys are tuples
    (``("probelens/gradcam/model.8", "filenames")``), values decoded JSON."""
    from wandb.proto import wandb_internal_pb2

    (path,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
    with open(path, "rb") as fh:
        data = fh.read()
    assert data[:4] == b":W&B"
    block, pos, chunks, rows = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the block's tail is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {tuple(item.nested_key) or (item.key,): json.loads(item.value_json) for item in record.history.item}
                )
    return rows


def test_tensorboard_and_wandb_each_get_every_image_on_the_global_step(tmp_path, wandb_offline):
    from pytorch_lightning.loggers import WandbLogger

    tb = TensorBoardLogger(str(tmp_path), name="tb")
    wb = WandbLogger(offline=True, save_dir=str(tmp_path), project="probelens-tests")
    _, messages = fit(tmp_path, [tb, wb, CSVLogger(str(tmp_path), name="csv")])  # CSV: scalars only, skipped
    run_dir = wb.experiment.dir.rsplit(os.sep + "files", 1)[0]
    wandb_offline.finish()  # flushes the transaction log

    assert not any("PNG files" in m or "failed" in m for m in messages), messages
    assert not glob.glob(os.path.join(str(tmp_path), "**", "probelens_images"), recursive=True)

    in_tensorboard = tensorboard_images(tb.log_dir)
    tags = {tag for tag, _ in in_tensorboard}
    assert {"probelens/gradcam/model.8", "probelens/saliency/vanilla", "probelens/gradcam_filmstrip/model.8"} <= tags
    assert set(in_tensorboard) == {(tag, step) for tag in tags for step in STEPS}

    rows = wandb_rows(run_dir)
    in_wandb = {}
    for row in rows:
        for key, value in row.items():
            if key[-1] == "filenames":
                ((media,),) = [value]
                in_wandb[("/".join(key[:-1]), row[("trainer/global_step",)])] = read_png(
                    os.path.join(run_dir, "files", media)
                )
    assert set(in_wandb) == set(in_tensorboard)  # every image, none dropped, at the trainer's global step
    for key, pixels in in_wandb.items():
        assert pixels.std() > 5, f"{key} is blank"
        assert np.array_equal(pixels, in_tensorboard[key]), key  # the very same picture

    # the loss curve and the monitors' scalars share that axis; W&B's own _step is another count
    assert sorted(row[("trainer/global_step",)] for row in rows if ("train_loss",) in row) == [0, 1, 2, 3]
    cost = [row for row in rows if ("probelens/cost_ms/GradCAMMonitor",) in row]
    assert sorted(row[("trainer/global_step",)] for row in cost) == STEPS
    image_rows = [row for row in rows if any(key[-1] == "filenames" for key in row)]
    assert any(row[("_step",)] != row[("trainer/global_step",)] for row in image_rows)

    (table,) = [row for row in rows if ("probelens/architecture", "path") in row]
    assert table[("trainer/global_step",)] == 0  # logged after later rows, kept all the same
    with open(os.path.join(run_dir, "files", table[("probelens/architecture", "path")])) as fh:
        assert "| **model.4** | Conv2d |" in json.load(fh)["data"][0][0]


def test_mlflow_gets_png_artifacts_under_tag_and_step(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses the file store unless told
    from mlflow.tracking import MlflowClient
    from pytorch_lightning.loggers import MLFlowLogger

    uri = (tmp_path / "mlruns").as_uri()
    ml = MLFlowLogger(experiment_name="probelens-tests", tracking_uri=uri)
    _, messages = fit(tmp_path, ml)
    assert not any("PNG files" in m or "failed" in m for m in messages), messages

    client = MlflowClient(uri)

    def files(path):
        for info in client.list_artifacts(ml.run_id, path):
            yield from files(info.path) if info.is_dir else [info.path]

    images = sorted(files("probelens"))
    tags = sorted({os.path.dirname(p) for p in images if p.endswith(".png")})
    assert {"probelens/gradcam/model.8", "probelens/saliency/vanilla", "probelens/gradcam_filmstrip/model.8"} <= set(
        tags
    )
    for tag in tags:
        assert [p for p in images if os.path.dirname(p) == tag] == [f"{tag}/step_{s:08d}.png" for s in STEPS]
    local = client.download_artifacts(ml.run_id, "probelens", str(tmp_path / "download"))
    for path in images:
        if path.endswith(".png"):
            assert read_png(os.path.join(os.path.dirname(local), path)).std() > 5, f"{path} is blank"
    # the probe-image layout rides along in the PNG, as in TensorBoard
    with Image.open(os.path.join(os.path.dirname(local), f"probelens/gradcam/model.8/step_{STEPS[0]:08d}.png")) as im:
        assert sorted({k for k, *_ in cells_from_text(im.text)}) == list(range(6))
    assert images.count("probelens/architecture/step_00000000.txt") == 1
    with open(os.path.join(os.path.dirname(local), "probelens/architecture/step_00000000.txt")) as fh:
        assert "| **model.4** | Conv2d |" in fh.read()
    # the images' steps are the metric history's steps
    cost = client.get_metric_history(ml.run_id, "probelens/cost_ms/GradCAMMonitor")
    assert sorted(m.step for m in cost) == STEPS


def test_csv_logger_only_falls_back_to_pngs_and_warns_once(tmp_path):
    logger = CSVLogger(str(tmp_path), name="csv")
    _, messages = fit(tmp_path, logger)
    assert sum("no TensorBoardLogger" in m and "PNG files" in m for m in messages) == 1
    root = os.path.join(logger.log_dir, "probelens_images")
    gradcam = sorted(glob.glob(os.path.join(root, "probelens", "gradcam", "model.8", "*.png")))
    assert [os.path.basename(p) for p in gradcam] == [f"step_{s:08d}.png" for s in STEPS]
    assert all(read_png(p).std() > 5 for p in gradcam)
    with Image.open(gradcam[0]) as im:
        cells = cells_from_text(im.text)
        assert sorted(k for k, *_ in cells) == list(range(6))
        assert all(0 <= x0 < x1 <= im.width and 0 <= y0 < y1 <= im.height for _, x0, y0, x1, y1 in cells)
    assert os.path.isfile(os.path.join(root, "probelens", "architecture", "step_00000000.txt"))


class ExplodingLogger(CSVLogger):
    """A real logger whose image sink (registered below) always raises."""


class ExplodingSink:
    def __init__(self, logger):
        self.logger = logger

    def add_image(self, tag, image, step, facts=None):
        raise RuntimeError(f"disk full under {self.logger.name}")

    def add_text(self, tag, text, step):
        raise RuntimeError(f"disk full under {self.logger.name}")


class PlainLogger(CSVLogger):
    """A real logger whose sink (registered in the test) ignores the grid's facts."""


class PlainSink:
    def __init__(self):
        self.images: list[tuple[str, int]] = []

    def add_image(self, tag, image, step, facts=None):  # the facts are the sink's to ignore
        self.images.append((tag, step))

    def add_text(self, tag, text, step):
        pass


def test_a_sink_that_ignores_the_facts_gets_every_image(tmp_path, monkeypatch):
    monkeypatch.setattr(_sinks, "_REGISTERED", [])
    plain = PlainSink()
    register_sink(lambda logger: plain if isinstance(logger, PlainLogger) else None)
    tb = TensorBoardLogger(str(tmp_path), name="tb")
    _, messages = fit(tmp_path, [PlainLogger(str(tmp_path), name="plain"), tb])
    assert not any("failed" in m for m in messages), messages
    assert sorted(plain.images) == sorted(tensorboard_images(tb.log_dir))
    grid = read_events(tb.log_dir).Images("probelens/saliency/vanilla")[0].encoded_image_string
    with Image.open(io.BytesIO(grid)) as im:  # TensorBoard's copy still carries the layout
        assert sorted(k for k, *_ in cells_from_text(im.text)) == list(range(6))


@pytest.fixture
def exploding_sinks(monkeypatch):
    monkeypatch.setattr(_sinks, "_REGISTERED", [])
    register_sink(lambda logger: ExplodingSink(logger) if isinstance(logger, ExplodingLogger) else None)


def test_a_failing_logger_costs_the_others_nothing(tmp_path, exploding_sinks):
    tb = TensorBoardLogger(str(tmp_path), name="tb")
    _, messages = fit(tmp_path, [ExplodingLogger(str(tmp_path), name="boom"), tb])
    reports = [m for m in messages if "writing to ExplodingLogger failed (RuntimeError: disk full under boom)" in m]
    assert len(reports) == 1, messages  # once per logger, not per image or per monitor
    assert not any("was skipped" in m for m in messages), messages
    in_tensorboard = tensorboard_images(tb.log_dir)
    assert {step for _, step in in_tensorboard} == set(STEPS)
    assert {tag for tag, _ in in_tensorboard} >= {"probelens/gradcam/model.8", "probelens/saliency/vanilla"}
    acc = read_events(tb.log_dir)
    assert len(acc.Tensors("probelens/architecture/text_summary")) == 1
    assert not any(t.startswith("probelens/failures") for t in acc.Tags()["scalars"])


def test_a_failing_only_logger_does_not_stop_training(tmp_path, exploding_sinks):
    logger = ExplodingLogger(str(tmp_path), name="boom")
    _, messages = fit(tmp_path, logger)
    assert any(
        "GradCAMMonitor failed at step 1 and was skipped (RuntimeError: disk full under boom)" in m for m in messages
    )
    assert any("could not log the architecture table (RuntimeError: disk full under boom)" in m for m in messages)
    assert not any("PNG files" in m for m in messages)  # a sink exists: no fallback
    with open(os.path.join(logger.log_dir, "metrics.csv")) as fh:
        failures = [r["probelens/failures/GradCAMMonitor"] for r in csv.DictReader(fh)]
    assert [float(f) for f in failures if f] == [1.0, 2.0]


def test_when_every_image_logger_fails_each_ones_own_exception_is_named(tmp_path, exploding_sinks):
    first, second = ExplodingLogger(str(tmp_path), name="first"), ExplodingLogger(str(tmp_path), name="second")
    _, messages = fit(tmp_path, [first, second])
    failed = [m for m in messages if "GradCAMMonitor failed at step 1 and was skipped" in m]
    assert len(failed) == 1, messages
    # neither logger's error hides behind the other's
    assert "ExplodingLogger: RuntimeError: disk full under first" in failed[0], failed
    assert "ExplodingLogger: RuntimeError: disk full under second" in failed[0], failed


@pytest.mark.parametrize("namespace", ["pytorch_lightning", "lightning.pytorch"])
def test_loggers_are_recognised_in_both_lightning_namespaces(namespace, tmp_path, wandb_offline, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    loggers = importlib.import_module(f"{namespace}.loggers")

    class MyWandbLogger(loggers.WandbLogger):
        pass

    class WandbLogger:  # same name, not Lightning's: no log_image to call
        pass

    attached = [
        loggers.CSVLogger(str(tmp_path)),
        loggers.TensorBoardLogger(str(tmp_path)),
        MyWandbLogger(offline=True, save_dir=str(tmp_path)),
        WandbLogger(),
        loggers.MLFlowLogger(tracking_uri=(tmp_path / "mlruns").as_uri()),
    ]
    assert [type(sink) for sink in sinks_for(attached)] == [TensorBoardSink, WandbSink, MLflowSink]


def test_wandb_and_mlflow_stay_optional():
    code = (
        "import sys, probelens, probelens.callbacks\n"
        "print(','.join(m for m in ('wandb', 'mlflow') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing probelens imported {out.stdout.strip()}"
