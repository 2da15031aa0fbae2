"""asr: an end-to-end speech-recognition training and time-to-accuracy benchmark on TensorFlow.

Stages, one module each, in the order the data flows:
corpus → features → shards (``asr.extract``) → ``tf.data`` (``asr.data``) → model
(``asr.model``) → training loop and strategy (``asr.train``) → decoding and metrics
(``asr.evaluate``) → time-to-accuracy and reports (``asr.report``).
"""

__version__ = "0.1.0"
