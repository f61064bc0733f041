"""Metrics over attribution maps and counterfactual probes (torch only)."""

from probelens.metrics.counterfactual import (
    CounterfactualProbes,
    background_only,
    background_swap,
    counterfactual_probes,
    fill_from_background,
    foreground_only,
    inpaint_harmonic,
    neutral_background,
    swap_partners,
)
from probelens.metrics.discovery import (
    ClassStrategies,
    DiscoveryReport,
    adjusted_rand_index,
    discover_strategies,
)
from probelens.metrics.drift import map_drift
from probelens.metrics.localisation import mask_area, pointing_game, relevance_mass, relevance_rank_accuracy
from probelens.metrics.shortcut import (
    ShortcutVerdict,
    agreeing_group_accuracy,
    class_flip_rates,
    direction_flip_rates,
    foreground_only_drop,
    group_accuracies,
    group_gaps,
    group_reliance_score,
    shortcut_score,
)

__all__ = [
    "ClassStrategies",
    "CounterfactualProbes",
    "DiscoveryReport",
    "ShortcutVerdict",
    "adjusted_rand_index",
    "agreeing_group_accuracy",
    "background_only",
    "background_swap",
    "class_flip_rates",
    "counterfactual_probes",
    "direction_flip_rates",
    "discover_strategies",
    "fill_from_background",
    "foreground_only",
    "foreground_only_drop",
    "group_accuracies",
    "group_gaps",
    "group_reliance_score",
    "inpaint_harmonic",
    "map_drift",
    "mask_area",
    "neutral_background",
    "pointing_game",
    "relevance_mass",
    "relevance_rank_accuracy",
    "shortcut_score",
    "swap_partners",
]
