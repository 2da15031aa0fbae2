"""Fault injection: the real pipeline commands as processes, a fault each, and the guarantees checked.

    python tools/faults --quick               # CI: a few trials on data/tiny (~2.5 minutes, 2 idle cores)
    python tools/faults                       # full: every trial below, data/tiny and ../shared/minilibri
    python tools/faults --only train-kill,disk-full --seed 3 --work /tmp/f --keep --json rows.json
    python -m tools.faults --quick            # the same, as a module (from the repository root)

Every trial runs ``python -m asr.extract``/``asr.train``/``asr.evaluate``/``asr.lm``/``asr.report``/
``asr.export``/``asr.compress``/``asr.transcribe`` as processes, injects one fault and checks what the
program promises (``docs/train.md``, ``docs/inference.md``, ``asr/files.py``, ``asr/checkpoint.py``,
``asr/shardset.py``, ``asr/runlock.py``). A trial passes only when every one of its checks holds; the
first failed checks are named in its row. Faults (one module each in ``tools/faults/trials/``):

- ``train-kill``: SIGKILL a training run (at a random time, or inside a checkpoint write or an evaluation
  through ``ASR_FAILPOINTS``), rerun it: it must resume from the newest complete checkpoint with its run
  clock, take over the run directory's lock, and end exactly where an uninterrupted run ends (same step
  losses, bit-identical weights).
- ``extract-kill``: SIGKILL feature extraction (the main process at a random time, or a worker through the
  ``extract.shard`` fail point), rerun it: the output must be byte-identical to an uninterrupted run's.
- ``checkpoint-damage``: cut, empty, corrupt or delete the newest checkpoint's files: training and
  evaluation must fall back to the older one with one warning; with every checkpoint damaged, exit 2.
- ``events-cut``: cut the event log's last line (a kill mid-write): resuming and the report must cope.
- ``disk-full``: shards, checkpoints, the event log, evaluation results each on a full filesystem (a small
  tmpfs, or RLIMIT_FSIZE where mounting is not possible): one line naming the path, nothing damaged, and
  the same command completes once space is back.
- ``corrupt-input``: damaged or missing shards for training, evaluation and the LM build (warnings, or exit 2
  with ``--strict``); a FLAC file that decodes to garbage (skipped and counted by extraction).
- ``worker-kill``: SIGKILL one of two multi-worker training processes: the other stops with one line naming
  the lost worker, and both resume to the same weights.
- ``nan-inject``: non-finite steps through the ``train.step`` fail point: skipped and counted, or the run
  stops with the last good weights saved.
- ``run-lock``: a second ``asr.train`` on a run directory a live run holds exits 2 with one line naming the
  holder and changes nothing, and the first ends exactly like an uninterrupted run; a run SIGKILLed and
  rerun: the rerun takes the lock over.
- ``export-kill``, ``compress-kill``: SIGKILL ``asr.export`` / ``asr.compress`` while it writes its output,
  rerun it: the rerun completes, no temporary (``*.tmp-*``, ``*.old-*``) is left beside or inside the
  output, and the run directory read is unchanged.
- ``output-is-input``: ``asr.export``/``asr.compress --out RUN --force`` and ``asr.transcribe a.wav
  --output a.wav``: exit 2 with one line, the input byte-identical.

Every random choice comes from ``random.Random(--seed)``, drawn for every fault in a fixed order before
anything runs (new fault kinds draw after the older ones), so a seed names the same trials with or without
``--only`` and ``--jobs``. Trials run ``--jobs`` at a time (worker-kill alone, at the end). The table goes
to stdout as Markdown, then a per-fault summary and the wall time; progress goes to stderr. Exit status 0
when every trial passed, 1 otherwise, 2 for bad options.

Modules: :mod:`~tools.faults.process` (commands as processes), :mod:`~tools.faults.checks` (rows and
checks), :mod:`~tools.faults.outputs` (reading what the programs wrote), :mod:`~tools.faults.damage`
(damaged files, a full disk), :mod:`~tools.faults.fixtures` (corpora, shards, reference runs),
:mod:`~tools.faults.kinds` (the fault kinds and the plan), :mod:`~tools.faults.cli` (the command line).
"""
