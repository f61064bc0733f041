"""Synthetic datasets for probelens demos and tests."""

from probelens.data.cue_scenes import (
    CUE_FAMILIES,
    OBJECT_KINDS,
    SHAPE_NAMES,
    CueSample,
    CueScenesDataset,
    generate_cue_scenes,
)
from probelens.data.snow_desert import (
    BACKGROUND_NAMES,
    CLASS_NAMES,
    MEAN,
    STD,
    SnowDesertDataset,
    SnowDesertSample,
    generate_snow_desert,
)

__all__ = [
    "BACKGROUND_NAMES",
    "CLASS_NAMES",
    "CUE_FAMILIES",
    "MEAN",
    "OBJECT_KINDS",
    "SHAPE_NAMES",
    "STD",
    "CueSample",
    "CueScenesDataset",
    "SnowDesertDataset",
    "SnowDesertSample",
    "generate_cue_scenes",
    "generate_snow_desert",
]
