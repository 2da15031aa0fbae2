"""``python -m asr.report RUN_DIR [RUN_DIR ...]`` (see :mod:`asr.report`)."""

import sys

from asr.report.cli import main

sys.exit(main())
