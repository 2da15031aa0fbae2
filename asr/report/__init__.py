"""``python -m asr.report RUN_DIR [RUN_DIR ...]``: compare runs by time, cost and energy to accuracy.

Reads only run directories (they may come from different machines): ``events.jsonl`` (the
event log, :mod:`asr.events`), ``recipe.yaml`` (the resolved recipe: name, rig, targets, window,
batch) and, when present, ``eval/results.json`` (final ``asr.evaluate`` results: a list of rows
``{split, wer, cer, cer_maxlen, beam_width, utterances, ...}``). Writes ``report.md`` with its
plots as PNG files next to it and a self-contained ``report.html`` (plots embedded as base64),
and prints the tables:

- time to accuracy (the paper's Table 4) under the median and the first-evaluation rule, in
  minutes and as % of the baseline, ``NA`` where a target was not reached;
- final accuracy (Table 5), cost and energy to accuracy, throughput and utilization;
- the evaluation share: seconds and % of the run clock of evaluation, swapping, checkpointing and training
  per run, with the energy of each beside it (and a stacked bar per run);
- per run: sessions, active run time, downtime between stop and resume, feature extraction.

Runs of the same configuration (same recipe name, rig label and resolved recipe apart from the
seed and data paths) are aggregated as MLPerf does: drop the fastest and slowest, mean of the
rest; with fewer than 5 runs, the median; min and max are shown. ``docs/metrics.md`` defines
every number. Bad input (a missing log, a truncated line, disagreeing targets, an unknown
baseline) gives a one-line message on stderr and the rest of the report; exit status 2 only
when no run can be reported (or for a usage error).

Modules, each importing only those below it:

- :mod:`~asr.report.cli`: the command line (``__main__`` runs it);
- :mod:`~asr.report.render`: the report assembled, Markdown, HTML, stdout;
- :mod:`~asr.report.accuracy_tables`, :mod:`~asr.report.resource_tables` (on
  :mod:`~asr.report.table`) and :mod:`~asr.report.plots`: tables and figures;
- :mod:`~asr.report.energy` and :mod:`~asr.report.measures`: the numbers of one run;
- :mod:`~asr.report.grouping` and :mod:`~asr.report.loading`: which runs, read how, compared how.
"""

from asr.report.cli import main
from asr.report.loading import Run, load_run

__all__ = ["Run", "load_run", "main"]
