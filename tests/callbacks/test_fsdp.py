"""FSDP (2 CPU processes over gloo): every rank computes, rank 0 logs, the weights stay those of the unwatched run.

Lightning's ``FSDPStrategy`` refuses a CPU accelerator and wraps without a device; ``_CPUFSDPStrategy`` below (test
only) wraps with ``device_id=cpu``, which torch's FSDP accepts, and being a subclass it passes Lightning's check.
FSDP2 runs through Lightning's own ``ModelParallelStrategy``, which accepts the CPU as it is. The two processes are
started here (Lightning sees ``LOCAL_RANK`` and does not launch), so both runs of a test (with and without monitors)
share one pair of processes. A process-group timeout and a join deadline turn a deadlock into a failure.
"""

from __future__ import annotations

import datetime
import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from lit import LitClassifier, loaders, random_data, read_events, trainer

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")

STEPS_PER_EPOCH = 4  # 64 images / 8 per batch / 2 ranks
GRADCAM_LAYERS = ["model.0", "model.8"]


def boxes(images, targets):
    masks = torch.zeros(images.shape[0], 1, *images.shape[-2:], dtype=torch.bool)
    masks[..., 2:8, 3:9] = True
    return masks


def probe_set():
    from probelens import ProbeSet

    return ProbeSet.from_dataset(random_data(32, seed=2), num_samples=7, masks=boxes)  # 7: uneven slices (4 + 3)


class _Fsdp2Classifier(LitClassifier):
    """FSDP2: each conv is its own unit, the rest belongs to the unit at ``self.model``."""

    def configure_model(self):
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for layer in self.model:
            if isinstance(layer, nn.Conv2d):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.model, mesh=mesh)


def _strategy(kind: str):
    from pytorch_lightning.strategies import FSDPStrategy, ModelParallelStrategy

    timeout = datetime.timedelta(seconds=60)
    if kind == "fsdp2":
        # both ranks data parallel (the default puts them in one tensor-parallel group instead)
        return ModelParallelStrategy(
            data_parallel_size=2,
            tensor_parallel_size=1,
            save_distributed_checkpoint=False,
            process_group_backend="gloo",
            timeout=timeout,
        )

    class _CPUFSDPStrategy(FSDPStrategy):
        def _setup_model(self, model):
            from torch.distributed.fsdp import FullyShardedDataParallel

            model = FullyShardedDataParallel(model, device_id=torch.device("cpu"), **self.kwargs)
            return super()._setup_model(model)  # sees the wrapper and keeps it

    # each conv its own FSDP unit: layer names then carry `_fsdp_wrapped_module` prefixes
    return _CPUFSDPStrategy(
        auto_wrap_policy={nn.Conv2d}, use_orig_params=True, process_group_backend="gloo", timeout=timeout
    )


def _local(t):
    if t is None:
        return None
    return (t.to_local() if hasattr(t, "to_local") else t).detach().clone()


def _callbacks(record: dict):
    """The monitors, plus probes that record grads around them, the maps rank 0 computed, and the final weights."""
    import pytorch_lightning as pl

    from probelens.methods.grad_cam import grad_cam_map
    from probelens.pl import (
        ActivationMonitor,
        DeconvMonitor,
        FeatureVisMonitor,
        FilterMonitor,
        GradCAMMonitor,
        OcclusionMonitor,
        SaliencyMonitor,
        ShortcutMonitor,
    )

    # the monitors fire at on_train_batch_end (every_n_steps), where the last backward's grads are still there
    class GradsBefore(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            record["grads"] = [_local(p.grad) for p in pl_module.parameters()]

    class GradsAfter(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            after = [_local(p.grad) for p in pl_module.parameters()]
            same = all(
                (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
                for a, b in zip(record["grads"], after)
            )
            record.setdefault("grads_unchanged", []).append(same)
            record.setdefault("grads_present", []).append(any(g is not None and g.numel() for g in after))

    class RecordingGradCAM(GradCAMMonitor):
        def explain(self, step, pl_module, trainer):
            super().explain(step, pl_module, trainer)
            result = self._pass(pl_module, step)  # cached: no second pass
            record["maps"] = {
                layer: grad_cam_map(result.activations[layer], result.gradients["pred"][layer], self.probe.image_size)
                for layer in self._layers
            }
            record["logits"] = result.logits

    class FailingOnRank1(GradCAMMonitor):
        def explain(self, step, pl_module, trainer):
            super().explain(step, pl_module, trainer)
            if trainer.global_rank == 1 and step == STEPS_PER_EPOCH - 1:  # the first firing's log step
                raise RuntimeError("injected failure on rank 1")

    class FinalWeights(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            state = trainer.strategy.lightning_module_state_dict()  # collective: full weights on rank 0
            record["state"] = {k: v.detach().clone() for k, v in state.items()}

    probe = probe_set()
    every = {"every_n_steps": STEPS_PER_EPOCH}
    monitors = [
        FilterMonitor(**every),
        ActivationMonitor(probe, layers=["model.2", "model.6"], **every),
        RecordingGradCAM(probe, layers=GRADCAM_LAYERS, **every),
        SaliencyMonitor(
            probe,
            methods=("vanilla", "smoothgrad", "integrated_gradients", "guided_backprop"),
            method_options={"smoothgrad": {"samples": 4}, "integrated_gradients": {"steps": 4}},
            **every,
        ),
        OcclusionMonitor(probe, **every),
        DeconvMonitor(probe, **every),  # ends its forward passes early, at the layer
        FeatureVisMonitor(probe, **every),
        ShortcutMonitor(probe, on_shortcut="stop", threshold=1.0, **every),  # counterfactual forwards; never stops
        # target="both": two target sets, one sharded forward each
        FailingOnRank1(probe, layers=["model.4"], target="both", filmstrip=False, name="failing", **every),
    ]
    return [GradsBefore(), *monitors, GradsAfter(), FinalWeights()], monitors


def _fit(kind: str, root: str, callbacks, logger):
    import pytorch_lightning as pl

    pl.seed_everything(11, workers=True)
    train, val = loaders(n=64, batch_size=8)
    module = (_Fsdp2Classifier if kind == "fsdp2" else LitClassifier)(seed=3)
    tr = trainer(root, callbacks, logger=logger, strategy=_strategy(kind), devices=2, max_epochs=2, deterministic=True)
    tr.fit(module, train, val)
    return tr


def _worker(rank: int, kind: str, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0", LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import TensorBoardLogger

    with_record: dict = {}
    callbacks, monitors = _callbacks(with_record)
    logger = TensorBoardLogger(os.path.join(out, "with"), name="tb", version=0)
    start = time.perf_counter()
    _fit(kind, os.path.join(out, "with"), callbacks, logger)
    seconds = time.perf_counter() - start
    plain_record: dict = {}

    class FinalWeights(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            plain_record["state"] = {
                k: v.detach().clone() for k, v in trainer.strategy.lightning_module_state_dict().items()
            }

    _fit(kind, os.path.join(out, "without"), [FinalWeights()], False)
    result = {
        "grads_unchanged": with_record["grads_unchanged"],
        "grads_present": with_record["grads_present"],
        "counts": {m.name: (m.fire_count, m.failure_count) for m in monitors},
        "seconds_with_monitors": seconds,
    }
    if rank == 0:
        result.update(
            maps=with_record["maps"],
            logits=with_record["logits"],
            state=with_record["state"],
            plain_state=plain_record["state"],
            log_dir=logger.log_dir,
        )
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    _leave()


def _leave() -> None:
    """End the rank without the interpreter's teardown of a live process group.

    Lightning leaves the gloo group open after ``fit``; destroying it at interpreter exit can hit a joinable C++ thread
    ("terminate called without an active exception", SIGABRT) on a loaded machine, after every result is written. Both
    ranks meet, the group is destroyed in order, and the process ends with exit status 0: a real failure above has
    already raised (a non-zero status), and a missing result file fails the test.
    """
    import sys

    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_ranks(kind: str, out, deadline_s: float = 150.0) -> list[dict]:
    context = mp.start_processes(
        _worker, args=(kind, _free_port(), str(out)), nprocs=2, join=False, start_method="spawn"
    )
    end = time.monotonic() + deadline_s
    while not context.join(timeout=5):  # raises if a rank failed (and stops the other)
        if time.monotonic() > end:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{kind}: the two ranks did not finish within {deadline_s:.0f} s (deadlock?)")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("kind", ["fsdp1", "fsdp2"])
def test_fsdp_every_rank_computes_rank0_logs_once_weights_unchanged(tmp_path, kind):
    from probelens.methods import grad_cam

    ranks = _run_two_ranks(kind, tmp_path)
    rank0 = ranks[0]

    # training is the same with and without monitors (a sharded probe pass leaves FSDP's state as it found it)
    assert rank0["state"].keys() == rank0["plain_state"].keys() and rank0["state"]
    for key, value in rank0["plain_state"].items():
        assert torch.equal(value, rank0["state"][key]), key

    # parameter grads present and untouched around the monitors, on every rank and at every firing
    for rank in ranks:
        assert len(rank["grads_unchanged"]) == 2 * STEPS_PER_EPOCH and all(rank["grads_unchanged"])
        assert all(rank["grads_present"])

    # the failure on rank 1 was agreed on: skipped (and counted) on both ranks, the other monitors unaffected
    for rank in ranks:
        assert rank["counts"]["failing"] == (1, 1)
        assert all(counts == (2, 0) for name, counts in rank["counts"].items() if name != "failing"), rank["counts"]

    # the maps rank 0 gathered equal those of the same weights, unsharded, on the whole probe
    reference = LitClassifier(seed=0)
    reference.load_state_dict(rank0["state"])
    probe = probe_set()
    maps = grad_cam(reference, probe.images, None, GRADCAM_LAYERS)
    for layer in GRADCAM_LAYERS:
        assert rank0["maps"][layer].shape == (len(probe), 1, *probe.image_size)
        torch.testing.assert_close(rank0["maps"][layer], maps[layer], rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(rank0["logits"], reference.eval()(probe.images), rtol=1e-4, atol=1e-6)

    # every image tag once per firing; the failed step of the failing monitor wrote nothing
    acc = read_events(rank0["log_dir"])
    images = acc.Tags()["images"]
    expected = {"probelens/filters/model.0", "probelens/gradcam/model.8", "probelens/activations/model.6"}
    assert expected <= set(images), images
    steps = [STEPS_PER_EPOCH - 1, 2 * STEPS_PER_EPOCH - 1]  # Lightning's log steps of the two firings
    for tag in images:
        want = steps[1:] if tag.startswith("probelens/failing/") else steps  # the named monitor's tags
        assert [e.step for e in acc.Images(tag)] == want, tag
    assert [e.step for e in acc.Scalars("shortcut/score")] == steps
    assert [(e.step, e.value) for e in acc.Scalars("probelens/failures/failing")] == [(STEPS_PER_EPOCH - 1, 1.0)]


def test_wrapper_prefixes_resolve_to_the_users_names():
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    from models import small_cnn
    from probelens.methods import grad_cam
    from probelens.methods.layers import resolve_layers, strip_compile_prefix

    assert strip_compile_prefix("_fsdp_wrapped_module.model.0._fsdp_wrapped_module") == "model.0"
    assert strip_compile_prefix("_orig_mod.features._checkpoint_wrapped_module.3") == "features.3"
    plain = small_cnn(seed=1)
    wrapped = small_cnn(seed=1)
    conv = wrapped[4]
    wrapped[4] = checkpoint_wrapper(conv)  # how FSDP strategies apply activation checkpointing
    layers = resolve_layers(wrapped, "all")
    assert list(layers) == ["0", "4", "8"] and layers["4"] is conv
    assert resolve_layers(wrapped, "4._checkpoint_wrapped_module") == {"4": conv}
    x = torch.randn(3, 3, 16, 16)
    ours, reference = grad_cam(wrapped, x, None, ["4"]), grad_cam(plain, x, None, ["4"])
    torch.testing.assert_close(ours["4"], reference["4"])
