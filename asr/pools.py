"""Worker-process pools that fail instead of hanging (feature extraction, beam-search decoding).

Both stages use ``concurrent.futures.ProcessPoolExecutor`` rather than ``multiprocessing.Pool``: when a
worker dies (SIGKILL, the out-of-memory killer, a SIGTERM sent to the whole process group by ``pkill -f``
or a batch scheduler) the executor fails the pending work with ``BrokenProcessPool``, where
``multiprocessing.Pool`` replaces the worker and waits forever for the lost result, and can block in
``terminate()`` on a queue lock the dead worker held.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor


def stop_pool(executor: ProcessPoolExecutor) -> None:
    """End the workers at once and wait until none runs: terminate, join, then shut the executor down
    (its manager thread, left running, races the interpreter's exit and prints a traceback)."""
    processes = list((getattr(executor, "_processes", None) or {}).values())
    for process in processes:
        process.terminate()
    for process in processes:
        process.join()
    executor.shutdown(wait=True, cancel_futures=True)
