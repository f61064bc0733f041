"""The probelens TensorBoard dashboard: a "probelens" tab in a plain ``tensorboard --logdir ...`` once probelens is
installed (registered through the ``tensorboard_plugins`` entry point).

It shows, per run and from the event files alone: the matrix of probe images x (method, layer) at one step with a
slider over every logged step, the same matrix at two steps side by side, one probe image's maps over time, and the
``shortcut/*`` curves with the alert periods and the counterfactual panels; two runs side by side. See
:mod:`probelens.dashboard.plugin` for the routes.
"""

from probelens.dashboard.plugin import PLUGIN_NAME, ProbelensPlugin

__all__ = ["PLUGIN_NAME", "ProbelensPlugin"]
