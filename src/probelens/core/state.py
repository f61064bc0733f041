"""A monitor's checkpointed counters, and the rule that one (tag, step) is written once.

Lightning stores a callback's ``state_dict()`` in the checkpoint (when it is not empty) under the callback's
``state_key``; on resume it calls ``load_state_dict`` after ``setup`` and before ``on_fit_start``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from probelens.probe import ProbeSet


@dataclass
class MonitorState:
    """What a monitor has done in this run."""

    fire_count: int = 0
    """Firings that wrote their pictures."""
    failure_count: int = 0
    """Firings that failed (warned about once, then counted)."""
    last_logged_step: int = -1
    """The last training step written (checkpointed, so a resumed run never writes a step twice)."""
    stage_steps: dict[str, int] = field(default_factory=dict)
    """The last step written by ``validate`` / ``test`` (not checkpointed: those stages write under their prefix)."""
    saved_fingerprint: str | None = None
    """The probe fingerprint of a loaded checkpoint."""

    def claim(self, stage: str, step: int) -> bool:
        """Whether ``stage`` has not written ``step`` yet; then it is recorded as written."""
        last = self.last_logged_step if stage == "fit" else self.stage_steps.get(stage, -1)
        if step == last:
            return False
        if stage == "fit":
            self.last_logged_step = step
        else:
            self.stage_steps[stage] = step
        return True

    def to_dict(self, probe: ProbeSet | None) -> dict[str, Any]:
        return {
            "fire_count": self.fire_count,
            "failure_count": self.failure_count,
            "last_logged_step": self.last_logged_step,
            "probe_fingerprint": probe.fingerprint() if probe is not None else None,
            "probe_indices": None if probe is None or probe.indices is None else probe.indices.tolist(),
        }

    def load(self, state: dict[str, Any]) -> None:
        self.fire_count = int(state.get("fire_count", 0))
        self.failure_count = int(state.get("failure_count", 0))
        self.last_logged_step = int(state.get("last_logged_step", -1))
        self.saved_fingerprint = state.get("probe_fingerprint")
