"""asr.startup: TensorFlow imported without Keras' scikit-learn and matplotlib integrations, which stay
importable afterwards."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import sys
from asr.startup import import_tensorflow
tf = import_tensorflow()
assert tf is sys.modules["tensorflow"] and "keras" in sys.modules
loaded = [name for name in ("sklearn", "matplotlib") if name in sys.modules]
import matplotlib.pyplot, sklearn  # put back: importable as usual
print(loaded, tf.constant(2.0).numpy() * 2)
"""


def test_tensorflow_starts_without_keras_optional_integrations_and_they_stay_importable():
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[0] == "[] 4.0"
