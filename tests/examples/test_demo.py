"""The README demo, scaled down: every kind of picture lands in TensorBoard for several steps, non-blank."""

import importlib.util
from pathlib import Path

from lit import decode, read_events

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_logs_filters_activations_gradcam_and_saliency(tmp_path, capsys):
    demo = load_example("snow_vs_desert")
    # as the README runs it: with the progress bar (Lightning adds it to the callbacks), summary printed at the end
    trainer = demo.main(["--n", "384", "--epochs", "3", "--probe", "4", "--logdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "Trained 3 epochs" in out and f"TensorBoard run: {trainer.logger.log_dir}" in out
    assert "SHORTCUT ALERT" in out or "No shortcut alert" in out
    acc = read_events(trainer.logger.log_dir)
    tags = acc.Tags()["images"]
    steps_per_epoch = 6  # 384 / 64
    for kind in ("filters", "activations", "gradcam", "saliency"):
        kind_tags = [t for t in tags if t.startswith(f"probelens/{kind}/")]
        assert kind_tags, f"no {kind} images in {tags}"
        for tag in kind_tags:
            events = acc.Images(tag)
            # on the validation curve's steps (Lightning writes epoch-end validation one behind global_step)
            assert [e.step for e in events] == [steps_per_epoch * k - 1 for k in (1, 2, 3)], tag
            assert [e.step for e in events] == [s.step for s in acc.Scalars("val/loss")], tag
            for e in events:
                assert decode(e).std() > 5, f"{tag} at step {e.step} is blank"
    # Grad-CAM at every conv stage
    assert len([t for t in tags if t.startswith("probelens/gradcam/")]) == 4
    # the loss curves are on the same axis
    assert {"train/loss", "val/loss"} <= set(acc.Tags()["scalars"])


def test_lightning_cli_example_with_the_yaml_config(tmp_path, monkeypatch):
    import sys

    import yaml

    monkeypatch.syspath_prepend(str(EXAMPLES))
    config = yaml.safe_load((EXAMPLES / "snow_vs_desert.yaml").read_text())
    config["trainer"].update(max_epochs=2, enable_progress_bar=False)
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path)
    config["data"].update(n=256)
    small = tmp_path / "config.yaml"
    small.write_text(yaml.safe_dump(config))
    cli = load_example("cli_snow_vs_desert").main(["fit", "--config", str(small)])
    monitors = {type(m).__name__: m for m in cli.trainer.callbacks if type(m).__module__ == "probelens.pl"}
    assert set(monitors) == {
        "FilterMonitor",
        "ActivationMonitor",
        "GradCAMMonitor",
        "SaliencyMonitor",
        "ShortcutMonitor",
    }
    assert all(m.fire_count == 2 and m.failure_count == 0 for m in monitors.values())
    assert monitors["GradCAMMonitor"].probe is monitors["SaliencyMonitor"].probe  # same probe_size/seed: shared
    assert monitors["ShortcutMonitor"].probe.has_masks and len(monitors["ShortcutMonitor"].probe) == 32
    tags = read_events(cli.trainer.logger.log_dir).Tags()
    assert "probelens/gradcam/net.0.12" in tags["images"] and "shortcut/score" in tags["scalars"]
    assert sys.modules.get("snow_vs_desert") is not None


def test_quickstart_and_resnet18_examples(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    quick = load_example("quickstart").main(max_epochs=1, n=128, logdir=str(tmp_path / "q"))
    tags = read_events(quick.logger.log_dir).Tags()
    assert "probelens/gradcam/net.0.12" in tags["images"] and "shortcut/score" in tags["scalars"]
    resnet = load_example("resnet18_snow_vs_desert").main(
        ["--n", "32", "--size", "64", "--epochs", "1", "--logdir", str(tmp_path / "r")]
    )
    acc = read_events(resnet.logger.log_dir)
    # "auto" on a ResNet; the stem's relu would sort after layer4, so the tags carry the depth first
    for tag in ("00_net.relu", "01_net.layer1", "02_net.layer2", "03_net.layer3", "04_net.layer4"):
        assert decode(acc.Images(f"probelens/gradcam/{tag}")[0]).std() > 5
    assert "probelens/saliency/guided_backprop" in acc.Tags()["images"]


def test_the_readme_quickstart_is_the_example_file():
    """The README's Quickstart block is examples/quickstart.py itself (run above), so what a user pastes runs."""
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Quickstart") : readme.index("## Gallery")]
    block = section[section.index("```python\n") + len("```python\n") :]
    block = block[: block.index("```")]
    example = (EXAMPLES / "quickstart.py").read_text(encoding="utf-8")
    assert block.strip() and block.strip() in example
