"""Synthetic datasets for probelens demos and tests."""

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
    "MEAN",
    "STD",
    "SnowDesertDataset",
    "SnowDesertSample",
    "generate_snow_desert",
]
