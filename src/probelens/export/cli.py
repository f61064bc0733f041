"""``probelens export`` on the command line (``python -m probelens export LOGDIR ...``)."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from probelens.export.results import ExportError
from probelens.export.runs import DEFAULT_OUT_NAME, export

__all__ = ["build_parser", "main"]


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def build_parser(prog: str = "probelens export") -> argparse.ArgumentParser:
    """The ``probelens export`` argument parser.

    Args:
        prog: Program name shown in usage and errors.

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Export the images and scalars that probelens logged to TensorBoard as animated GIFs, "
        "filmstrip PNGs, scalar plots and one static index.html.",
    )
    parser.add_argument("logdir", help="TensorBoard log directory (a run, or a folder of runs)")
    parser.add_argument("--out", default=None, help=f"output folder (default: LOGDIR/{DEFAULT_OUT_NAME})")
    parser.add_argument(
        "--max-frames", type=_positive_int, default=16, help="at most this many frames per filmstrip (default 16)"
    )
    parser.add_argument("--fps", type=_positive_float, default=2.0, help="GIF frames per second (default 2)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point of ``probelens export``.

    Args:
        argv: Arguments after ``export`` (default ``sys.argv[1:]``).

    Returns:
        0 on success, 1 when there is nothing to export, 2 for a bad argument such as a missing log directory.
    """
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the skipped pictures are printed below, once each
            result = export(args.logdir, out=args.out, max_frames=args.max_frames, fps=args.fps)
    except ExportError as err:
        print(f"probelens export: error: {err}", file=sys.stderr)
        return err.exit_code
    for run in result.runs:
        for line in run.skipped:
            print(f"probelens export: warning: {line}", file=sys.stderr)
    n_images = sum(len(r.images) for r in result.runs)
    n_probe = sum(len(t.probe_images) for r in result.runs for t in r.images)
    n_scalars = sum(len(r.scalars) for r in result.runs)
    print(
        f"probelens export: {len(result.runs)} run(s), {n_images} image tag(s) as GIF + filmstrip, "
        f"{n_probe} per-probe-image GIF(s) + filmstrip(s), {n_scalars} scalar plot(s)\n  open {result.index}"
    )
    return 0
