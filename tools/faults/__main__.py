"""``python tools/faults`` (a directory run as a script) or ``python -m tools.faults``: the harness's command
line (:func:`tools.faults.cli.main`)."""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(REPO_ROOT)  # run as a directory: import the package, not its modules by bare name
elif str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tools.faults.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
