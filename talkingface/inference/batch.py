"""Batch dubbing: many (video, audio, output) jobs through one loaded model per process
(--mode=infer --jobs=jobs.csv, and talkingface.api.LipSync.batch). docs/inference.md has the user's view.

The jobs file is a CSV whose header names its columns: video, audio, output (paths relative to the
CSV's folder), then any of ROW_SETTINGS, that row's inference settings (an empty cell keeps the
run's value). Row 1 is the line after the header.
- Resume: a row whose output exists is skipped; outputs appear only when complete (VideoWriter
  renames a finished temp file), so an existing one is finished.
- A row that fails (a TalkingFaceError, or a bug: `unexpected <Type>: ...` with its traceback
  logged) is a failed result and the batch goes on; Ctrl-C / SIGTERM stop it.
- The report, <csv stem>_report.json beside the CSV, lists every row's status; --mode=infer exits
  with BatchFailed (exit 2) when a row failed.
- Rows that share a video turn the avatar cache on (avatar.py), so its face tracking runs once.
- Scale-out: under torchrun row i runs on rank i % world_size (each rank on its own device,
  distributed.setup_distributed) and rank 0 writes the merged report; without torchrun,
  num_infer_workers=N > 1 spawns N processes, each with a share of the pending rows and of the
  CPU cores, and this process merges their results.
"""
import collections
import csv
import dataclasses
import logging
import math
import multiprocessing
import os
import queue
import signal
import time

import torch
from tqdm import tqdm

from talkingface.config.configurator import parse_value
from talkingface.config.schema import show_path, show_text, show_value
from talkingface.inference.pipeline import LipSyncer
from talkingface.utils.distributed import (all_gather_object, is_distributed, is_main_process, patient_group, rank,
                                           raise_if_any_failed, world_size)
from talkingface.utils.errors import ConfigError, InputError, TalkingFaceError, error_line
from talkingface.utils.files import probe_writable, write_json_atomic
from talkingface.utils.runtime import usable_cpus
from talkingface.utils.tracking import TRACKER_KEYS

logger = logging.getLogger(__name__)

PATH_COLUMNS = ("video", "audio", "output")
# What a row may set: the settings LipSyncer.run reads per run (the rest, e.g. the device or the
# checkpoint, belong to the loaded model).
ROW_SETTINGS = ("reference_frame", "infer_batch_size", "infer_mask_feather", "infer_landmark_window", "infer_bf16",
                "infer_detect_every", "infer_int8", "infer_frame_cache_mb", "infer_x264_preset", "avatar_cache",
                "avatar_cache_dir", "avatar_cache_mb", "silence_mode", "silence_min_ms", "silence_fade_frames",
                "face_fade_frames", *TRACKER_KEYS)


class BatchFailed(TalkingFaceError):
    """Some rows of a batch failed; each has its error line in the report."""


@dataclasses.dataclass
class Job:
    row: int          # 1 = the first row (the CSV line after the header, or the first dict)
    video: str
    audio: str
    output: str
    settings: dict    # this row's inference settings: LipSyncer.run's overrides


def report_path(jobs_file):
    """Where the report of a jobs file goes: beside it, jobs.csv -> jobs_report.json."""
    stem = os.path.splitext(os.path.basename(jobs_file))[0]
    return os.path.join(os.path.dirname(jobs_file), f"{stem}_report.json")


def read_jobs(path):
    """The jobs of a CSV file; anything that keeps it from being one is a one-line error."""
    name = show_path(path)
    if os.path.isdir(path):
        raise InputError(f"jobs file {name} is a folder: give a .csv file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte order mark
            lines = [cells for cells in csv.reader(f) if any(cell.strip() for cell in cells)]
    except FileNotFoundError:
        raise InputError(f"jobs file not found: {name}") from None
    except UnicodeDecodeError:
        raise InputError(f"jobs file {name} is not a UTF-8 text CSV") from None
    except csv.Error as exc:
        raise InputError(f"jobs file {name} is not a valid CSV ({exc})") from None
    except OSError as exc:
        raise InputError(f"cannot read jobs file {name} ({exc.strerror or type(exc).__name__})") from None
    usage = "its first line names the columns: video,audio,output[,inference setting...]"
    if not lines:
        raise ConfigError(f"jobs file {name} is empty: {usage}")
    header = [cell.strip() for cell in lines[0]]
    missing = [column for column in PATH_COLUMNS if column not in header]
    if missing:
        raise ConfigError(f"jobs file {name} has no {'/'.join(missing)} column "
                          f"(first line: {show_text(','.join(header))}): {usage}")
    repeated = sorted({column for column in header if header.count(column) > 1})
    if repeated:
        raise ConfigError(f"jobs file {name} names the column {show_text(repeated[0])} twice")
    if len(lines) == 1:
        raise ConfigError(f"jobs file {name} has a header but no jobs")
    folder = os.path.dirname(os.path.abspath(path))
    rows = []
    for number, cells in enumerate(lines[1:], 1):
        if len(cells) > len(header):
            raise ConfigError(f"jobs file {name} row {number} has {len(cells)} cells for {len(header)} columns")
        row = {}
        for column, cell in zip(header, (cell.strip() for cell in cells)):
            if not cell:
                continue  # an empty setting keeps the run's value; an empty path is refused below
            row[column] = os.path.join(folder, cell) if column in PATH_COLUMNS else parse_value(cell)
        rows.append(row)
    return jobs_from_rows(rows, f"jobs file {name}")


def jobs_from_rows(rows, source="batch"):
    """Jobs from dicts {video, audio, output, **settings} (relative paths: the working directory's),
    checked as a whole before any work: names, one output per row, no output that is an input."""
    jobs = []
    for number, row in enumerate(rows, 1):
        unknown = [key for key in row if key not in PATH_COLUMNS + ROW_SETTINGS]
        if unknown:
            raise ConfigError(f"{source}: unknown column {show_text(str(unknown[0]))} in row {number}: a row has "
                              f"video, audio, output and inference settings ({', '.join(ROW_SETTINGS)})")
        paths = {}
        for column in PATH_COLUMNS:
            value = row.get(column)
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{source} row {number} has no {column} path")
            paths[column] = value
        settings = {key: value for key, value in row.items() if key not in PATH_COLUMNS}
        jobs.append(Job(number, paths["video"], paths["audio"], paths["output"], settings))
    inputs, outputs = {}, {}
    for job in jobs:
        inputs.setdefault(_same_file(job.video), (job.row, "video"))
        inputs.setdefault(_same_file(job.audio), (job.row, "audio"))
    for job in jobs:
        key = _same_file(job.output)
        if key in outputs:
            raise ConfigError(f"{source} rows {outputs[key]} and {job.row} write the same output "
                              f"{show_path(job.output)}: give each row its own")
        if key in inputs:
            row, column = inputs[key]
            raise ConfigError(f"{source} row {job.row}: output {show_path(job.output)} is the {column} of row "
                              f"{row}: choose another output")
        outputs[key] = job.row
    return jobs


def _same_file(path):
    """A key equal for two names of one file (relative or absolute, through symbolic links)."""
    return os.path.normcase(os.path.realpath(path))


def with_shared_avatars(jobs, config):
    """Rows that share a video get avatar_cache=on, so its face tracking and avatar are made once,
    unless the row or the run sets avatar_cache. Counted over all the rows, so a row's output does
    not depend on sharding or on which rows are already done."""
    if config["avatar_cache"] not in ("off", False):
        return jobs
    uses = collections.Counter(_same_file(job.video) for job in jobs)
    return [dataclasses.replace(job, settings={"avatar_cache": "on", **job.settings})
            if uses[_same_file(job.video)] > 1 else job for job in jobs]


def run_job(syncer, job, worker=0, total=None):
    """One row's result: skipped when its output exists, else run. A failure is a result, not an
    exception; KeyboardInterrupt and networks that cannot be loaded stop the batch."""
    if os.path.exists(job.output):
        return _skipped(job, worker)
    syncer.load()
    logger.info("row %d%s: %s + %s -> %s", job.row, f" of {total}" if total else "", job.video, job.audio,
                job.output)
    started = time.perf_counter()
    try:
        syncer.run(job.video, job.audio, job.output, **job.settings)
        error = None
    except TalkingFaceError as exc:
        error = error_line(exc) or type(exc).__name__
    except Exception as exc:  # a bug: its traceback goes to the log, the other rows still run
        logger.exception("row %d: unexpected error", job.row)
        first = str(exc).strip().splitlines()  # a bug's message may be long: its first line, as the app shows
        error = f"unexpected {type(exc).__name__}: {first[0] if first else ''}"
    if error:
        logger.warning("row %d failed: %s", job.row, error)
    return _result(job, "failed" if error else "done", error, time.perf_counter() - started, worker)


def _skipped(job, worker=0):
    logger.info("row %d: %s exists, skipped", job.row, job.output)
    return _result(job, "skipped", worker=worker)


def _result(job, status, error=None, seconds=0.0, worker=0):
    return {"row": job.row, "status": status, "error": error, "video": job.video, "audio": job.audio,
            "output": job.output, "settings": {key: _plain(value) for key, value in job.settings.items()},
            "seconds": round(seconds, 3), "worker": worker}


def _plain(value):
    """A setting as strict JSON takes it (a bad value, e.g. nan, as the user wrote it)."""
    if value is None or isinstance(value, (str, bool, int)) or (isinstance(value, float) and math.isfinite(value)):
        return value
    return show_value(value)


def run_jobs(syncer, jobs, report=None, progress=True):
    """Run `jobs` with `syncer` (a LipSyncer; loaded at the first row to run) and return every row's
    result in row order. Under torchrun this rank runs rows i % world_size == rank and the results
    are gathered on every rank; rank 0 writes `report` (a JSON path, or None)."""
    jobs = with_shared_avatars(jobs, syncer.config)
    mine = jobs[rank()::world_size()]
    results, fatal = [], None
    try:
        for job in tqdm(mine, desc="jobs", unit="job", disable=not progress or not is_main_process()):
            results.append(run_job(syncer, job, rank(), len(jobs)))
    except TalkingFaceError as exc:  # the networks could not be loaded: every rank stops with it
        fatal = exc
    except KeyboardInterrupt:
        if is_main_process():
            _stopped(report, results, len(jobs))
        raise
    group = patient_group()  # ranks finish far apart: no 30-minute limit (None: not distributed)
    raise_if_any_failed(fatal, group)
    if is_distributed():
        results = [result for share in all_gather_object(results, group) for result in share]
    results.sort(key=lambda result: result["row"])
    if report and is_main_process():
        write_report(report, results, len(jobs))
    return results


def write_report(path, results, total, interrupted=False):
    """The report: counts, then one entry per row with a result (all rows unless `interrupted`)."""
    counts = collections.Counter(result["status"] for result in results)
    write_json_atomic(path, {"total": total, "done": counts["done"], "skipped": counts["skipped"],
                             "failed": counts["failed"], "interrupted": interrupted,
                             "rows": sorted(results, key=lambda result: result["row"])})


def _stopped(report, results, total):
    if report:
        write_report(report, results, total, interrupted=True)
    logger.warning("batch stopped after %d of %d rows; finished outputs are kept: run the same command to go on",
                   len(results), total)


def run_batch(config):
    """--mode=infer --jobs=CSV: run its rows (in this process, this rank's share under torchrun, or
    num_infer_workers processes), write the report beside the CSV and raise BatchFailed, one line
    naming it, when a row failed. A bad CSV is refused before any model loads."""
    if config["video"] or config["audio"] or config["output"]:
        raise ConfigError("--jobs takes the videos, audios and outputs from its CSV: leave out --video, --audio "
                          "and --output")
    path = str(config["jobs"])
    jobs = read_jobs(path)
    report = report_path(path)
    try:
        probe_writable(os.path.dirname(os.path.abspath(report)))
    except OSError as exc:
        raise InputError(f"cannot write the report {show_path(report)} ({exc.strerror or type(exc).__name__}): "
                         "put the jobs file in a writable folder") from None
    workers = config["num_infer_workers"]
    if workers > 1 and is_distributed():
        raise ConfigError("num_infer_workers is for runs without torchrun; under torchrun each rank is one worker "
                          "(--nproc_per_node=N): leave num_infer_workers at 1")
    if workers > 1:
        results = _run_in_workers(config, jobs, workers, report)
    else:
        results = run_jobs(LipSyncer(config), jobs, report)
    failed = sum(result["status"] == "failed" for result in results)
    if failed and is_main_process():
        raise BatchFailed(f"{failed} of {len(results)} jobs failed (see {show_path(report)})")
    return results


def _run_in_workers(config, jobs, count, report):
    """num_infer_workers: the pending rows over `count` spawned processes (worker i: pending[i::count]),
    each loading the networks once, with cores // count torch threads; returns all results."""
    jobs = with_shared_avatars(jobs, config)
    results, pending = [], []
    for job in jobs:
        if os.path.exists(job.output):
            results.append(_skipped(job))
        else:
            pending.append(job)
    if not pending:  # every output exists: no worker to start
        write_report(report, results, len(jobs))
        return results
    count = min(count, len(pending))
    threads = max(1, usable_cpus() // max(1, count))
    context = multiprocessing.get_context("spawn")  # fork would copy this process's torch threads and locks
    messages = context.Queue()
    workers = [context.Process(target=_worker, args=(config, pending[i::count], i, threads, messages),
                               name=f"infer-worker-{i}") for i in range(count)]
    fatal = None
    try:
        with tqdm(total=len(jobs), initial=len(results), desc="jobs", unit="job") as bar:
            for worker in workers:
                worker.start()
            for kind, value in _receive(messages, workers):
                if kind == "error":
                    fatal = fatal or value
                else:
                    results.append(value)
                    bar.update()
        for worker in workers:
            worker.join()
    except KeyboardInterrupt:
        for worker in workers:  # SIGTERM: a worker unwinds as on Ctrl-C, leaving no partial output
            if worker.is_alive():
                worker.terminate()
        for worker in workers:
            if worker.pid is not None:
                worker.join()
        results += [value for kind, value in _receive(messages, []) if kind == "result"]
        _stopped(report, results, len(jobs))
        raise
    if fatal is not None:
        raise fatal
    finished = {result["row"] for result in results}
    for i, worker in enumerate(workers):  # a worker that died (killed, out of memory) left its rows
        results += [_result(job, "failed", f"unexpected exit of worker {i} (exit code {worker.exitcode})", worker=i)
                    for job in pending[i::count] if job.row not in finished]
    results.sort(key=lambda result: result["row"])
    write_report(report, results, len(jobs))
    return results


def _receive(messages, workers):
    """The workers' messages until every worker has exited and the queue is empty."""
    while True:
        alive = any(worker.is_alive() for worker in workers)  # before reading: a worker's last put comes after
        try:
            yield messages.get(timeout=0.2)
        except queue.Empty:
            if not alive:
                return


def _worker(config, jobs, index, threads, messages):
    """A spawned worker: one LipSyncer for its rows, each result sent as it is done."""
    from talkingface.utils.logger import init_logger
    signal.signal(signal.SIGTERM, _interrupt)
    torch.set_num_threads(threads)
    init_logger(None, config["log_level"])
    syncer = LipSyncer(config)
    try:
        for job in jobs:
            messages.put(("result", run_job(syncer, job, index)))
    except TalkingFaceError as exc:  # the networks could not be loaded
        messages.put(("error", exc))
    except KeyboardInterrupt:
        pass  # the parent stops the batch and writes the report


def _interrupt(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt()
