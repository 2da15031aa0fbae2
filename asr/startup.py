"""TensorFlow's start-up without Keras' optional integrations: about a second less per process.

``import tensorflow`` imports Keras 3, and Keras imports scikit-learn (for its scikit-learn estimator
wrappers) and matplotlib (for its image-gallery and bounding-box plots) whenever they are installed; both
are here (librosa needs scikit-learn, the report matplotlib). This project uses neither integration, and
the two imports are a third of TensorFlow's import: measured 3.1-3.4 s -> 2.1-2.2 s of CPU for ``import
tensorflow``, and 7.6-8.2 s -> 6.8-7.0 s for a one-epoch run of ``recipes/tiny.yaml`` (Intel Xeon, 2 cores).
Every command that trains or evaluates pays it once per process, and so do the processes the tests and the
fault harness start (about 150 per test run).

:func:`import_tensorflow` imports TensorFlow with those two modules marked absent (``sys.modules[name] =
None`` makes ``import name`` raise ``ImportError``, which Keras catches: it then leaves the integrations
out) and puts them back at once, so a later ``import sklearn`` or ``import matplotlib.pyplot`` works as
usual. Commands call it where they first need TensorFlow; the modules' own ``import tensorflow as tf``
statements then find it loaded.
"""

from __future__ import annotations

import sys
from types import ModuleType

KERAS_OPTIONAL = ("sklearn", "matplotlib")
"""Modules Keras imports only for integrations this project does not use."""


def import_tensorflow() -> ModuleType:
    """``tensorflow``, imported without :data:`KERAS_OPTIONAL` if this process has not imported it yet."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    hidden = [name for name in KERAS_OPTIONAL if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import tensorflow
    finally:
        for name in hidden:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]
    return tensorflow
