"""``python -m asr.extract``: audio corpus → 93-dim features → TFRecord shards + ``manifest.json``.

One output directory is one split. The run plans first (transcripts and audio headers only),
sorts the kept utterances by id and cuts them into shards of ``--shard-size``; shard ``i`` is
written by task ``i % --num-tasks``. Each shard is written under a temporary name and renamed,
then a sidecar (``sidecars/shard-NNNNN.json``) with its statistics, so an interrupted run resumes
where it stopped and K tasks can share one directory. Whichever run finds every shard's sidecar
writes ``manifest.json`` (feature mean/std, counts, skipped utterances, shard list).
Output bytes do not depend on the number of workers, tasks or interruptions.

Exit status: 0 done (or this task's part done), 2 unusable input or output (including a write that
fails: one line naming the file, no temporary left, rerun to resume), 130 interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import itertools
import math
import multiprocessing
import os
import platform
import select
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

import asr
from asr import audio, corpus, failpoints, features, shards, text
from asr.clock import process_seconds
from asr.config import OneLineParser
from asr.files import WriteError, read_json, remove_temporaries, write_json
from asr.pools import stop_pool

MANIFEST = "manifest.json"
SIDECARS = "sidecars"
FORMAT = "asr-shards"
VERSION = 1
PLAN_CHUNK = 256
"""Candidates per header-probing task (header reads are ~0.3 ms each)."""
SPEED_RANGE = (0.1, 10.0)
"""Speed-perturbation factors allowed (Kaldi uses 0.9 and 1.1)."""


class ExtractError(Exception):
    """A problem the run cannot proceed with; printed as one line, exit status 2."""


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """Everything one extraction run needs, built once from the command line."""

    out: Path
    """Output directory (one split)."""
    corpus: Path | None = None
    """LibriSpeech-layout corpus directory."""
    subsets: tuple[str, ...] = ()
    """Subset directories of ``corpus`` combined into this split."""
    manifest_input: Path | None = None
    """CSV/JSON-lines list of utterances (``audio``, ``text``, optional ``id``)."""
    workers: int = 1
    """Worker processes."""
    shard_size: int = 64
    """Planned utterances per shard (a shard is smaller when some fail to decode)."""
    max_duration: float = 16.7
    """Longest utterance kept, in seconds."""
    compression: shards.Compression = "gzip"
    compression_level: int = shards.DEFAULT_LEVEL
    """zlib level 0-9 for gzip/zlib."""
    compression_strategy: shards.Strategy = "huffman"
    """zlib strategy; ``huffman`` is as small as ``default`` on float32 features and ~3.5x faster."""
    task_index: int = 0
    num_tasks: int = 1
    overwrite: bool = False
    merge_only: bool = False
    resample: bool = True
    """Resample audio that is not 16 kHz (soxr, high quality); otherwise skip it."""
    quiet: bool = False
    speed_perturb: tuple[float, ...] = ()
    """Speed-perturbation factors: each utterance also gets a copy played s times faster per factor s
    (Kaldi's ``sp<s>-<id>``); 1.0 (the original, always kept) may be listed and adds nothing."""

    def speeds(self) -> tuple[float, ...]:
        """The factors of the extra copies: sorted, unique, without 1.0 (so their order on the command
        line does not change the output)."""
        return tuple(sorted({s for s in self.speed_perturb if s != 1.0}))

    def validate(self) -> None:
        """Raise :class:`ExtractError` for impossible combinations."""
        if self.corpus is None and self.manifest_input is None:
            raise ExtractError("give --corpus with --subsets, or --manifest-input")
        if self.corpus is not None and not self.subsets:
            raise ExtractError("--corpus needs --subsets (the subset directories to read)")
        for option, value in (("--workers", self.workers), ("--shard-size", self.shard_size),
                              ("--num-tasks", self.num_tasks)):  # fmt: skip
            if value < 1:
                raise ExtractError(f"{option}: must be at least 1, got {value}")
        if not 0 <= self.task_index < self.num_tasks:
            raise ExtractError(f"--task-index {self.task_index} is not in [0, {self.num_tasks})")
        if self.compression != "none" and not 0 <= self.compression_level <= 9:
            raise ExtractError(f"--compression-level {self.compression_level} is not in 0..9")
        if not 0 < self.max_duration < math.inf:  # NaN fails too: it would keep every utterance
            raise ExtractError(f"--max-duration {self.max_duration} must be a positive number of seconds")
        for factor in self.speed_perturb:
            if not SPEED_RANGE[0] <= factor <= SPEED_RANGE[1]:  # NaN fails too
                raise ExtractError(
                    f"--speed-perturb: factor {factor} is not in [{SPEED_RANGE[0]}, {SPEED_RANGE[1]}]"
                )
        names = [corpus.speed_id("", s) for s in self.speeds()]
        if len(set(names)) < len(names):
            raise ExtractError(f"--speed-perturb: factors {list(self.speeds())} give the same utterance id")

    def parameters(self) -> dict[str, Any]:
        """What determines the bytes written; an output directory holds one set of these."""
        compressed = self.compression != "none"
        return {
            "sample_rate": features.SAMPLE_RATE,
            "window": features.WINDOW,
            "hop": features.HOP,
            "n_fft": features.N_FFT,
            "n_mels": features.N_MELS,
            "n_mfcc": features.N_MFCC,
            "feature_dim": features.FEATURE_DIM,
            "max_duration": self.max_duration,
            "min_frames": features.MIN_FRAMES,
            "shard_size": self.shard_size,
            "compression": self.compression,
            "compression_level": self.compression_level if compressed else None,
            "compression_strategy": self.compression_strategy if compressed else None,
            "resample": self.resample,
            # only when set, so that shards made before this option existed stay valid
            **({"speed_perturb": list(self.speeds())} if self.speeds() else {}),
        }

    def sources(self) -> dict[str, Any]:
        """Where the utterances come from (absolute paths)."""
        return {
            "corpus": str(self.corpus.resolve()) if self.corpus else None,
            "subsets": list(self.subsets),
            "manifest_input": str(self.manifest_input.resolve()) if self.manifest_input else None,
        }

    def shard_file(self, index: int) -> Path:
        return self.out / f"shard-{index:05d}{shards.SUFFIXES[self.compression]}"

    def sidecar_file(self, index: int) -> Path:
        return self.out / SIDECARS / f"shard-{index:05d}.json"


@dataclasses.dataclass(frozen=True)
class Plan:
    """Kept utterances sorted by id, cut into shards; skips found from headers and transcripts."""

    shards: tuple[tuple[corpus.Planned, ...], ...]
    skipped: tuple[corpus.Skipped, ...]
    candidates: int
    warnings: tuple[str, ...]
    empty_subsets: int


# --------------------------------------------------------------------------- small helpers


def planned_digest(utterances: Sequence[corpus.Planned]) -> str:
    """Fingerprint of a shard's planned utterances (ids, paths, texts): a changed corpus redoes it."""
    digest = hashlib.sha256()
    for utterance in utterances:
        speed = f"\t{utterance.speed!r}" if utterance.speed != 1.0 else ""
        line = f"{utterance.utt_id}\t{utterance.path}\t{utterance.text}{speed}\n"
        digest.update(line.encode("utf-8", "surrogateescape"))  # a path may hold any bytes
    return digest.hexdigest()


def speed_perturb(samples: np.ndarray, factor: float) -> np.ndarray:
    """``samples`` played ``factor`` times faster, as Kaldi's speed perturbation: resampled by q/p
    (``factor`` ≈ p/q, :func:`asr.corpus.speed_ratio`) with a polyphase filter and kept at 16 kHz, so
    tempo, pitch and formants all scale by the factor; N samples become ``round(N / factor)``
    (:func:`asr.corpus.perturbed_length`). float32 in, float32 out."""
    if factor == 1.0:
        return samples
    from scipy.signal import resample_poly

    p, q = corpus.speed_ratio(factor)
    resampled = resample_poly(samples, q, p)
    return resampled[: corpus.perturbed_length(len(samples), factor)].astype(np.float32)


def package_versions() -> dict[str, str]:
    """Versions of what determines the features' bytes."""
    import scipy

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "librosa": importlib.metadata.version("librosa"),
        "soundfile": soundfile.__version__,
        "soxr": importlib.metadata.version("soxr"),
        "asr": asr.__version__,
    }


def _log(config: ExtractConfig, message: str) -> None:
    if not config.quiet:
        print(f"asr.extract: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- worker side


def _init_worker(main_pid: int) -> None:
    """Worker start: leave Ctrl-C to the parent, end when the main process ends, one BLAS thread, build
    the Mel matrix once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_when_gone, args=(main_pid,), name="main-watch", daemon=True).start()
    try:
        import threadpoolctl

        threadpoolctl.threadpool_limits(1)
    except ImportError:  # pragma: no cover - librosa depends on it through scikit-learn
        pass
    features.mel_filterbank()


def _exit_when_gone(pid: int) -> None:
    """End this worker once process ``pid`` (``asr.extract``'s main process) has ended: after a kill -9 of
    it no worker goes on writing behind a rerun, or lingers idle (its task queue never reports EOF)."""
    try:
        with contextlib.closing(os.pidfd_open(pid)) as handle:  # Linux >= 5.3: readable once pid has ended
            select.select([handle], [], [])
    except (AttributeError, OSError):
        while _alive(pid):
            time.sleep(1.0)
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _probe_chunk(
    job: tuple[list[corpus.Candidate], float, bool, tuple[float, ...]],
) -> list[corpus.Planned | corpus.Skipped]:
    return corpus.probe_many(*job)


def _load_audio(path: str, resample: bool) -> np.ndarray | str:
    """Mono 16 kHz float32 samples, or the skip reason.

    :func:`asr.audio.read` refuses what is not a regular file and checks the decoded samples against the
    header (count, a WAV file cut short, NaN, a FLAC file's MD5), so that no features are made from garbage
    or from part of an utterance: ``corrupt audio: DETAIL``.
    """
    try:
        decoded = audio.read(path, fallback=False)
    except audio.DamagedAudioError as error:
        return f"{corpus.CORRUPT_AUDIO}: {error.detail}"
    except audio.NotAFileError as error:
        return f"{corpus.UNREADABLE_AUDIO}: {error}"
    except audio.AudioError:
        return corpus.UNREADABLE_AUDIO
    if decoded.channels != 1:
        return corpus.NOT_MONO
    if decoded.sample_rate != features.SAMPLE_RATE and not resample:
        return corpus.WRONG_SAMPLE_RATE
    return audio.to_model_input(decoded)


def extract_shard(config: ExtractConfig, index: int, utterances: Sequence[corpus.Planned]) -> dict:
    """Decode, featurize and write one shard, then its sidecar; returns the sidecar."""
    failpoints.hit("extract.shard", key=index)
    started = time.perf_counter()
    cpu_started = time.process_time()
    feature_sum = np.zeros(features.FEATURE_DIM, dtype=np.float64)
    feature_squares = np.zeros(features.FEATURE_DIM, dtype=np.float64)
    totals = {"utterances": 0, "frames": 0, "seconds": 0.0}
    skipped: list[dict[str, str]] = []
    lengths: list[tuple[str, int, int]] = []

    def records():
        for utterance in utterances:
            samples = _load_audio(utterance.path, config.resample)
            if isinstance(samples, np.ndarray):
                samples = speed_perturb(samples, utterance.speed)
            if isinstance(samples, np.ndarray) and features.num_frames(len(samples)) < features.MIN_FRAMES:
                samples = corpus.TOO_SHORT
            values = _features(samples) if isinstance(samples, np.ndarray) else samples
            if isinstance(values, str):
                skipped.append({"utt_id": utterance.utt_id, "path": utterance.path, "reason": values})
                continue
            wide = values.astype(np.float64)
            feature_sum[:] += wide.sum(axis=0)
            feature_squares[:] += np.square(wide).sum(axis=0)
            seconds = len(samples) / features.SAMPLE_RATE
            totals["utterances"] += 1
            totals["frames"] += values.shape[0]
            totals["seconds"] += seconds
            labels = text.encode(utterance.text)
            lengths.append((utterance.utt_id, values.shape[0], len(labels)))
            yield shards.utterance_example(values, labels, utterance.text, utterance.utt_id, seconds)

    path = config.shard_file(index)
    size = shards.write_shard(
        path, records(), config.compression, config.compression_level, config.compression_strategy
    )
    sidecar = {
        "shard": index,
        "file": path.name,
        "parameters": config.parameters(),
        "sources": config.sources(),
        "planned": planned_digest(utterances),
        "planned_utterances": len(utterances),
        "bytes": size,
        **totals,
        "feature_sum": feature_sum.tolist(),
        "feature_sum_squares": feature_squares.tolist(),
        "skipped": skipped,
        "lengths": lengths,
        "worker_seconds": time.perf_counter() - started,
        "worker_cpu_seconds": time.process_time() - cpu_started,
    }
    write_json(config.sidecar_file(index), sidecar)
    return sidecar


def _features(samples: np.ndarray) -> np.ndarray | str:
    """The utterance's features, or the skip reason when they are not all finite (finite but absurd
    samples, such as 1e30 in a float WAV, overflow the power spectrum)."""
    with np.errstate(over="ignore", invalid="ignore"):
        values = features.compute_features(samples)
    return values if np.isfinite(values).all() else f"{corpus.CORRUPT_AUDIO}: NaN or infinite features"


def _extract_shard_job(job: tuple[ExtractConfig, int, tuple[corpus.Planned, ...]]) -> dict:
    """:func:`extract_shard` in a worker: a failed write comes back to the parent as :class:`ExtractError`,
    whose one line pickles (a :class:`WriteError` does not survive the trip through the pool's pipe, and
    the pool then waits forever for the result it lost)."""
    try:
        return extract_shard(*job)
    except WriteError as error:
        raise ExtractError(str(error)) from None


# --------------------------------------------------------------------------- main side


def check_sources(config: ExtractConfig) -> None:
    """Raise for a missing corpus directory, an unknown subset or an unreadable manifest."""
    if config.corpus is not None:
        corpus.check_subsets(config.corpus, list(config.subsets))
    if config.manifest_input is not None and not config.manifest_input.is_file():
        raise ExtractError(f"manifest input not found: {config.manifest_input}")


def _our_files(out: Path) -> list[Path]:
    names = [p for p in out.glob("shard-*.tfrecord*")]
    names += list((out / SIDECARS).glob("shard-*.json*")) if (out / SIDECARS).is_dir() else []
    names += [p for p in out.glob(f"{MANIFEST}*")]
    return names


def prepare_output(config: ExtractConfig) -> None:
    """Create the output directory; refuse one holding another parameter set unless ``--overwrite``."""
    try:
        (config.out / SIDECARS).mkdir(parents=True, exist_ok=True)
        probe_file = config.out / f".write-test-{os.getpid()}"
        probe_file.write_bytes(b"")
        probe_file.unlink()
    except OSError as error:
        raise ExtractError(f"cannot write output directory {config.out}: {error.strerror}") from None
    if config.overwrite and not config.merge_only:
        for path in _our_files(config.out):
            path.unlink(missing_ok=True)
        return
    existing = [config.out / MANIFEST, *sorted((config.out / SIDECARS).glob("shard-*.json"))]
    for path in existing:
        recorded = read_json(path) if path.is_file() else None
        if not isinstance(recorded, dict):
            continue
        for section, current in (("parameters", config.parameters()), ("sources", config.sources())):
            previous = recorded.get(section, {})
            for key in sorted(set(current) | set(previous)):
                if current.get(key) != previous.get(key):
                    raise ExtractError(
                        f"{config.out} holds shards made with {key}={previous.get(key)!r}, this run has "
                        f"{key}={current.get(key)!r}; use --overwrite to replace them or another --out"
                    )
        return


@dataclasses.dataclass(frozen=True)
class Found:
    """What :func:`gather_candidates` found: candidates sorted by id, warnings, the number of subsets
    without audio, and the directories and transcript files that could not be read."""

    candidates: list[corpus.Candidate]
    warnings: list[str]
    empty_subsets: int
    unreadable: list[corpus.Skipped]


def gather_candidates(config: ExtractConfig) -> Found:
    """Every candidate of the corpus subsets and the manifest input (see :class:`Found`); each directory
    or transcript file that cannot be read is a warning and a skipped entry with its reason."""
    candidates: list[corpus.Candidate] = []
    warnings: list[str] = []
    unreadable: list[corpus.Skipped] = []
    empty = 0
    if config.corpus is not None:
        for subset in config.subsets:
            found, cannot = corpus.librispeech_listing(config.corpus, subset)
            if not found and not cannot:
                empty += 1
                warnings.append(f"subset {subset!r} in {config.corpus} has no audio files")
            for skipped in cannot:
                warnings.append(f"{skipped.path}: {skipped.reason}; what it holds is left out")
            candidates += found
            unreadable += cannot
    if config.manifest_input is not None:
        candidates += corpus.manifest_candidates(config.manifest_input)
    candidates.sort(key=lambda c: (c.utt_id, c.path))
    for previous, current in itertools.pairwise(candidates):
        if previous.utt_id == current.utt_id:
            raise ExtractError(
                f"utterance id {current.utt_id!r} appears twice: {audio.display(previous.path)}, "
                f"{audio.display(current.path)}"
            )
    return Found(candidates, warnings, empty, unreadable)


def make_plan(config: ExtractConfig, pool: WorkerPool, found: Found) -> Plan:
    """Probe every candidate's transcript and header (in the worker pool) and cut the kept into shards."""
    candidates = found.candidates
    chunks = [
        (candidates[start : start + PLAN_CHUNK], config.max_duration, config.resample, config.speeds())
        for start in range(0, len(candidates), PLAN_CHUNK)
    ]
    kept: list[corpus.Planned] = []
    skipped: list[corpus.Skipped] = list(found.unreadable)
    for results in pool.ordered(_probe_chunk, chunks):
        for result in results:
            (kept if isinstance(result, corpus.Planned) else skipped).append(result)
    size = config.shard_size
    shard_list = tuple(tuple(kept[start : start + size]) for start in range(0, len(kept), size))
    return Plan(shard_list, tuple(skipped), len(candidates), tuple(found.warnings), found.empty_subsets)


def valid_sidecar(config: ExtractConfig, plan: Plan, index: int) -> dict | None:
    """The shard's sidecar if it and its shard file are complete and made from this plan."""
    sidecar = read_json(config.sidecar_file(index))
    if not isinstance(sidecar, dict):
        return None
    shard_path = config.shard_file(index)
    if (
        sidecar.get("parameters") != config.parameters()
        or sidecar.get("sources") != config.sources()
        or sidecar.get("planned") != planned_digest(plan.shards[index])
        or not shard_path.is_file()
        or shard_path.stat().st_size != sidecar.get("bytes")
    ):
        return None
    return sidecar


def feature_mean_std(feature_sum, feature_squares, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation over ``frames`` frames from their sum and sum of squares
    (float64 ``[93]`` each); zeros and ones when there are no frames."""
    if not frames:
        return np.zeros(features.FEATURE_DIM), np.ones(features.FEATURE_DIM)
    mean = np.asarray(feature_sum, dtype=np.float64) / frames
    variance = np.asarray(feature_squares, dtype=np.float64) / frames - np.square(mean)
    return mean, np.sqrt(np.maximum(variance, 0.0))


def build_manifest(config: ExtractConfig, plan: Plan, sidecars: list[dict]) -> dict:
    """The split's manifest from the plan and every shard's sidecar (no feature is re-read)."""
    feature_sum = np.zeros(features.FEATURE_DIM, dtype=np.float64)
    feature_squares = np.zeros(features.FEATURE_DIM, dtype=np.float64)
    skipped = [dataclasses.asdict(s) for s in plan.skipped]
    for sidecar in sidecars:
        feature_sum += np.asarray(sidecar["feature_sum"], dtype=np.float64)
        feature_squares += np.asarray(sidecar["feature_sum_squares"], dtype=np.float64)
        skipped += sidecar["skipped"]
    skipped.sort(key=lambda s: (s["utt_id"], s["path"]))
    frames = sum(s["frames"] for s in sidecars)
    seconds = sum(s["seconds"] for s in sidecars)
    mean, std = feature_mean_std(feature_sum, feature_squares, frames)
    by_reason = Counter(corpus.reason_key(s["reason"]) for s in skipped)
    return {
        "format": FORMAT,
        "version": VERSION,
        "split": config.out.resolve().name,
        "sources": config.sources(),
        "parameters": config.parameters(),
        "alphabet": list(text.SYMBOLS),
        "versions": package_versions(),
        "counts": {
            "candidates": plan.candidates,
            "kept": sum(s["utterances"] for s in sidecars),
            "skipped": len(skipped),
            "skipped_by_reason": dict(sorted(by_reason.items())),
            "hours_kept": seconds / 3600,
            "frames_kept": frames,
            "empty_subsets": plan.empty_subsets,
        },
        "warnings": list(plan.warnings),
        "skipped": skipped,
        "feature_mean": mean.tolist(),
        "feature_std": std.tolist(),
        "shards": [
            {"file": s["file"], "utterances": s["utterances"], "frames": s["frames"], "seconds": s["seconds"]}
            for s in sidecars
        ],
        "extraction_seconds": sum(s["worker_seconds"] for s in sidecars),
    }


def merge(config: ExtractConfig, plan: Plan) -> dict | None:
    """Write ``manifest.json`` if every shard's sidecar is present; else return None."""
    sidecars = [valid_sidecar(config, plan, index) for index in range(len(plan.shards))]
    if any(sidecar is None for sidecar in sidecars):
        return None
    for path in _our_files(config.out):  # shards of an earlier, longer plan with the same parameters
        stem = path.name.split(".", 1)[0]
        if stem.startswith("shard-") and int(stem[6:]) >= len(plan.shards):
            path.unlink(missing_ok=True)
    manifest = build_manifest(config, plan, sidecars)  # type: ignore[arg-type]
    write_json(config.out / MANIFEST, manifest)
    return manifest


def _remove_temporaries(config: ExtractConfig, indices: Sequence[int]) -> None:
    """Delete ``NAME.tmp-<pid>`` files of these shards and their sidecars: left by a killed run, or by
    workers this run stopped (after an error or Ctrl-C). Other tasks never write these shards."""
    for index in indices:
        remove_temporaries(config.out, f"shard-{index:05d}.*")
        remove_temporaries(config.out / SIDECARS, f"shard-{index:05d}.json")


def _progress(config: ExtractConfig, total_seconds: float, total_utterances: int):
    from tqdm import tqdm

    return tqdm(
        total=total_seconds / 3600,
        unit="h",
        desc=f"extract {config.out.name}",
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.3f}/{total:.3f} h audio "
        "[{elapsed}<{remaining}]{postfix}",
        postfix=f"0/{total_utterances} utts",
        disable=config.quiet,
        file=sys.stderr,
    )


def _summary(config: ExtractConfig, manifest: dict, timing: dict) -> None:
    counts = manifest["counts"]
    reasons = ", ".join(f"{reason} {n}" for reason, n in counts["skipped_by_reason"].items()) or "none"
    wall = timing["total_seconds"]
    speed = timing["audio_seconds_written"] / max(wall, 1e-9)
    _log(
        config,
        f"{config.out}: kept {counts['kept']} utterances ({counts['hours_kept']:.3f} h) in "
        f"{len(manifest['shards'])} shards; skipped {counts['skipped']} ({reasons})",
    )
    _log(
        config,
        f"{timing['shards_written']} shards written in {wall:.1f} s wall ({speed:.0f}x real time with "
        f"{config.workers} workers; start-up {timing.get('startup_seconds', 0.0):.1f} s)",
    )


class WorkerPool:
    """The worker processes (forkserver: they start fast and share no TensorFlow state).

    A ``concurrent.futures`` pool, so a worker that dies fails its task instead of hanging
    (:mod:`asr.pools`). :meth:`stop` ends the workers at once (Ctrl-C, an error): none is still writing
    when it returns.
    """

    def __init__(self, workers: int):
        context = multiprocessing.get_context("forkserver")
        # Not asr.extract itself: each worker runs it as its main module, which must not be preloaded.
        context.set_forkserver_preload(["asr.corpus", "asr.features", "asr.shards", "scipy.fft"])
        self.executor = ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker, initargs=(os.getpid(),)
        )

    def ordered(self, function, jobs) -> Iterator:
        return self._unbroken(self.executor.map(function, jobs))

    def unordered(self, function, jobs) -> Iterator:
        futures = [self.executor.submit(function, job) for job in jobs]
        return self._unbroken(future.result() for future in as_completed(futures))

    @staticmethod
    def _unbroken(results: Iterator) -> Iterator:
        try:
            yield from results
        except BrokenProcessPool:
            raise ExtractError(
                "a worker process died (killed, or out of memory?); the shards completed are kept, "
                "rerun the same command to resume"
            ) from None

    def stop(self) -> None:
        """End the workers at once; none is still writing when it returns."""
        stop_pool(self.executor)


def run(config: ExtractConfig) -> int:
    """Plan, extract this task's missing shards, merge if complete. Returns the exit status."""
    started = time.perf_counter()
    since_process_start = process_seconds()
    timing: dict[str, float | int] = {"imports_seconds": since_process_start}
    check_sources(config)
    prepare_output(config)
    found = gather_candidates(config)
    pool = WorkerPool(config.workers)
    todo: list[int] = []
    try:
        plan = make_plan(config, pool, found)
        for warning in plan.warnings:
            print(f"asr.extract: warning: {warning}", file=sys.stderr)
        mine = [i for i in range(len(plan.shards)) if i % config.num_tasks == config.task_index]
        todo = [] if config.merge_only else [i for i in mine if valid_sidecar(config, plan, i) is None]
        _remove_temporaries(config, todo)  # a killed run's
        if len(todo) < len(mine):
            _log(config, f"{len(mine) - len(todo)} of this task's {len(mine)} shards already complete")
        timing["startup_seconds"] = since_process_start + time.perf_counter() - started
        timing.update(extract_shards(config, pool, plan, todo))
    except KeyboardInterrupt:
        print("\nasr.extract: interrupted; the shards completed are kept, re-run the same command to resume",
              file=sys.stderr)  # fmt: skip
        return 130
    finally:
        pool.stop()
        _remove_temporaries(config, todo)  # of the shards the workers were writing when stopped
    manifest = merge(config, plan)
    timing.update(total_seconds=since_process_start + time.perf_counter() - started, workers=config.workers)
    write_json(config.out / f"timing-task{config.task_index}.json", timing)
    if manifest is None:
        missing = sum(valid_sidecar(config, plan, i) is None for i in range(len(plan.shards)))
        if config.merge_only:
            raise ExtractError(
                f"cannot merge {config.out}: {missing} of {len(plan.shards)} shards are missing"
            )
        _log(config, f"this task is done; {missing} shards of other tasks missing, manifest not written yet")
        return 0
    _summary(config, manifest, timing)
    return 0


def extract_shards(config: ExtractConfig, pool: WorkerPool, plan: Plan, todo: list[int]) -> dict[str, float]:
    """Write shards ``todo`` in the pool with a progress bar; returns their timing figures."""
    total_utterances = sum(len(plan.shards[i]) for i in todo)
    figures = {"shards_written": 0, "audio_seconds_written": 0.0, "worker_cpu_seconds": 0.0}
    utterances = 0
    began = time.perf_counter()
    with _progress(config, sum(u.duration for i in todo for u in plan.shards[i]), total_utterances) as bar:
        jobs = [(config, index, plan.shards[index]) for index in todo]
        for sidecar in pool.unordered(_extract_shard_job, jobs):
            figures["shards_written"] += 1
            figures["audio_seconds_written"] += sidecar["seconds"]
            figures["worker_cpu_seconds"] += sidecar["worker_cpu_seconds"]
            utterances += sidecar["planned_utterances"]
            shard_hours = sum(u.duration for u in plan.shards[sidecar["shard"]]) / 3600
            bar.update(min(shard_hours, bar.total - bar.n))  # summing in another order must not pass 100 %
            bar.set_postfix_str(f"{utterances}/{total_utterances} utts", refresh=False)
    return {**figures, "extract_seconds": time.perf_counter() - began}


def parse_args(argv: Sequence[str] | None = None) -> ExtractConfig:
    """The command line as a validated :class:`ExtractConfig`."""
    parser = OneLineParser(prog="asr.extract", description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, help="LibriSpeech-layout corpus directory")
    parser.add_argument("--subsets", nargs="+", default=[], help="subset directories to combine")
    parser.add_argument("--manifest-input", type=Path, help="CSV/JSON-lines list: audio, text[, id]")
    parser.add_argument("--out", type=Path, required=True, help="output directory (one split)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--shard-size", type=int, default=64, help="utterances per shard")
    parser.add_argument("--max-duration", type=float, default=16.7, help="longest utterance kept (s)")
    parser.add_argument("--compression", choices=sorted(shards.SUFFIXES), default="gzip")
    parser.add_argument("--compression-level", type=int, default=shards.DEFAULT_LEVEL, help="0-9")
    parser.add_argument("--compression-strategy", choices=list(shards.STRATEGIES), default="huffman")
    parser.add_argument("--task-index", type=int, default=0, help="this task's index in [0, num-tasks)")
    parser.add_argument("--num-tasks", type=int, default=1, help="tasks sharing the output directory")
    parser.add_argument("--overwrite", action="store_true", help="replace output made with other settings")
    parser.add_argument("--merge-only", action="store_true", help="only write manifest.json from sidecars")
    parser.add_argument("--no-resample", action="store_true", help="skip audio that is not 16 kHz")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    parser.add_argument(
        "--speed-perturb",
        default="",
        metavar="S,S,...",
        help="also copies played S times faster, e.g. 0.9,1.1",
    )
    args = parser.parse_args(argv)
    config = ExtractConfig(
        out=args.out,
        corpus=args.corpus,
        subsets=tuple(args.subsets),
        manifest_input=args.manifest_input,
        workers=args.workers,
        shard_size=args.shard_size,
        max_duration=args.max_duration,
        compression=args.compression,
        compression_level=args.compression_level,
        compression_strategy=args.compression_strategy,
        task_index=args.task_index,
        num_tasks=args.num_tasks,
        overwrite=args.overwrite,
        merge_only=args.merge_only,
        resample=not args.no_resample,
        quiet=args.quiet,
        speed_perturb=parse_speeds(args.speed_perturb),
    )
    config.validate()
    return config


def parse_speeds(value: str) -> tuple[float, ...]:
    """``"0.9,1.1"`` → ``(0.9, 1.1)``; an empty string → ``()``; anything else is an :class:`ExtractError`."""
    factors = []
    for part in value.split(",") if value.strip() else []:
        try:
            factors.append(float(part))
        except ValueError:
            raise ExtractError(f"--speed-perturb {value!r}: {part.strip()!r} is not a number") from None
    return tuple(factors)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: one-line errors with exit status 2, 130 on Ctrl-C or SIGTERM."""
    previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return run(parse_args(argv))
    except (ExtractError, corpus.CorpusError, WriteError) as error:
        print(f"asr.extract: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nasr.extract: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


if __name__ == "__main__":
    from asr.extract import main as _main  # workers must find the functions under asr.extract

    sys.exit(_main())
