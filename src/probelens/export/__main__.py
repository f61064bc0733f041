"""``python -m probelens.export LOGDIR ...``: the same as ``probelens export LOGDIR ...``."""

import sys

from probelens.export.cli import main

sys.exit(main())
