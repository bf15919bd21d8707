"""Batch dubbing (--mode=infer --jobs=CSV, LipSync.batch; talkingface/inference/batch.py) on the
tiny lipsync_media clips with random-init Base weights: rows, failures, the report, resume, ranks."""
import json
import os
import re
import subprocess
import sys

import pytest

import run_talkingface
from talkingface import LipSync
from talkingface.inference import pipeline
from talkingface.inference.batch import jobs_from_rows, run_jobs
from talkingface.utils.errors import ConfigError, InputError
from paths import REPO_ROOT

SCRIPT = os.path.join(str(REPO_ROOT), "run_talkingface.py")


def _args(checkpoint, jobs):
    return ["--model=HyperLipsBase", "--dataset=demo", "--mode=infer", "--device=cpu", f"--checkpoint={checkpoint}",
            f"--jobs={jobs}"]


def _cli(args, cwd, launcher=(), timeout=240):
    """The entry point in a child process (OMP_NUM_THREADS=1: two cores); the result with stderr."""
    return subprocess.run([sys.executable, *launcher, SCRIPT, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))


def _write_csv(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _report(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def short_speech(lipsync_media, tmp_path_factory):
    """The first 0.24 s of lipsync_media's speech (6 frames): the CLI tests run many rows, and what
    they check (rows, failures, the report, resume, ranks) does not depend on the length."""
    from talkingface.utils.audio import load_audio, save_wav
    path = tmp_path_factory.mktemp("batch_speech") / "speech.wav"
    save_wav(str(path), load_audio(lipsync_media["audio"])[:3840])
    return path


@pytest.mark.slow
def test_a_failed_row_is_reported_the_others_run_and_a_rerun_skips_them(lipsync_media, short_speech,
                                                                        random_base_checkpoint, workdir, capsys):
    folder = workdir / "batch"
    folder.mkdir()
    os.symlink(lipsync_media["video"], folder / "face.mp4")  # relative paths: the CSV's folder, not the cwd
    face, speech, noface = "face.mp4", short_speech, lipsync_media["noface"]
    jobs = _write_csv(folder / "jobs.csv", [
        "video,audio,output,infer_batch_size,reference_frame",
        f"{face},{speech},out/1.mp4,,",
        f"{face},{speech},out/2.mp4,4,",
        f"{noface},{speech},out/3.mp4,,",
        f"{face},{speech},out/4.mp4,,same",
        f"{face},{speech},out/5.mp4,16,",
    ])
    # the first run in this process (run_talkingface.main: a child would cost seconds of imports),
    # the rerun below in child processes
    code = run_talkingface.main(_args(random_base_checkpoint["path"], jobs))
    run = subprocess.CompletedProcess([], code, "", capsys.readouterr().err)
    report_file = folder / "jobs_report.json"
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stderr.strip().splitlines()[-1] == f"error: 1 of 5 jobs failed (see {report_file})"
    outputs = [folder / "out" / f"{i}.mp4" for i in (1, 2, 4, 5)]
    assert all(path.is_file() for path in outputs) and not (folder / "out" / "3.mp4").exists()
    assert sorted(os.listdir(folder / "out")) == ["1.mp4", "2.mp4", "4.mp4", "5.mp4"]  # no temp file left
    report = _report(report_file)
    assert (report["total"], report["done"], report["failed"], report["interrupted"]) == (5, 4, 1, False)
    failed = [row for row in report["rows"] if row["status"] == "failed"]
    assert [(row["row"], row["video"]) for row in failed] == [(3, str(noface))]
    assert "face" in failed[0]["error"] and "\n" not in failed[0]["error"]
    rows = {row["row"]: row for row in report["rows"]}
    assert rows[2]["settings"] == {"avatar_cache": "on", "infer_batch_size": 4}  # a shared video: cached
    assert rows[4]["settings"]["reference_frame"] == "same" and rows[1]["output"] == str(outputs[0])
    assert "avatar cache hit" in run.stderr  # the face tracking of face.mp4 ran once

    mtimes = [path.stat().st_mtime_ns for path in outputs]
    # in a worker process (num_infer_workers): the parent skips the finished rows, one worker runs row 3
    rerun = _cli(_args(random_base_checkpoint["path"], jobs) + ["--num_infer_workers=2"], cwd=workdir)
    assert rerun.returncode == 2 and rerun.stderr.strip().splitlines()[-1].startswith("error: 1 of 5 jobs failed")
    assert [path.stat().st_mtime_ns for path in outputs] == mtimes
    statuses = {row["row"]: row["status"] for row in _report(report_file)["rows"]}
    assert statuses == {1: "skipped", 2: "skipped", 3: "failed", 4: "skipped", 5: "skipped"}
    assert rerun.stderr.count("exists, skipped") == 4 and "wrote " not in rerun.stderr


@pytest.mark.slow
def test_two_ranks_share_the_rows_and_rank_0_reports_them_all(lipsync_media, short_speech, random_base_checkpoint,
                                                              workdir):
    jobs = _write_csv(workdir / "jobs.csv", ["video,audio,output"] + [
        f"{lipsync_media['video']},{short_speech},out/{i}.mp4" for i in range(1, 5)])
    run = _cli(_args(random_base_checkpoint["path"], jobs), cwd=workdir,
               launcher=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"))
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    rows = _report(workdir / "jobs_report.json")["rows"]
    # each row ran once, on rank (row - 1) % 2: no output was written twice
    assert [(row["row"], row["status"], row["worker"]) for row in rows] == [
        (1, "done", 0), (2, "done", 1), (3, "done", 0), (4, "done", 1)]
    assert sorted(os.listdir(workdir / "out")) == ["1.mp4", "2.mp4", "3.mp4", "4.mp4"]


def test_lipsync_batch_from_python(lipsync_media, random_base_checkpoint, workdir):
    lipsync = LipSync("HyperLipsBase", checkpoint=random_base_checkpoint["path"], dataset="demo", device="cpu")
    video, audio = lipsync_media["video"], lipsync_media["audio"]
    rows = [{"video": video, "audio": audio, "output": workdir / "a.mp4"},
            {"video": video, "audio": audio, "output": "b.mp4", "infer_batch_size": 0}]
    results = lipsync.batch(rows, report=workdir / "report.json", progress=False)
    assert [(r["row"], r["status"]) for r in results] == [(1, "done"), (2, "failed")]
    assert "infer_batch_size" in results[1]["error"] and (workdir / "a.mp4").is_file()
    assert _report(workdir / "report.json")["rows"] == results
    assert [r["status"] for r in lipsync.batch(rows[:1], progress=False)] == ["skipped"]
    with pytest.raises(ConfigError, match="rows 1 and 2 write the same output"):
        lipsync.batch([rows[0], dict(rows[0])])


@pytest.mark.parametrize("lines, extra, message", [
    (None, [], "jobs file not found"),
    ([], [], "is empty"),
    (["face.mp4,speech.wav,out.mp4"], [], "has no video/audio/output column"),
    (["video,audio", "face.mp4,speech.wav"], [], "has no output column"),
    (["video,audio,output,infer_batch_szie", "face.mp4,speech.wav,out.mp4,4"], [], "unknown column 'infer_batch_szie'"),
    (["video,audio,output,checkpoint", "face.mp4,speech.wav,out.mp4,x.pth"], [], "unknown column 'checkpoint'"),
    (["video,audio,output", "a.mp4,speech.wav,out.mp4", "b.mp4,speech.wav,./out.mp4"], [],
     "rows 1 and 2 write the same output"),
    (["video,audio,output", "a.mp4,speech.wav,out.mp4", "b.mp4,speech.wav,a.mp4"], [],
     "row 2: output .*a.mp4 is the video of row 1"),
    (["video,audio,output", "a.mp4,,out.mp4"], [], "row 1 has no audio path"),
    (["video,audio,output"], [], "has a header but no jobs"),
    (["video,audio,output", "a.mp4,speech.wav,out.mp4"], ["--video=a.mp4"], "leave out --video"),
])
def test_a_bad_jobs_file_is_one_line_before_the_model_loads(lines, extra, message, workdir, capsys, monkeypatch):
    monkeypatch.setattr(pipeline.LipSyncer, "load", lambda self: pytest.fail("the model was loaded"))
    jobs = workdir / "jobs.csv"
    if lines is not None:
        _write_csv(jobs, lines)
    code = run_talkingface.main(_args(workdir / "missing.pth", jobs) + extra)
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error: ")
    assert re.search(message, errors[0]), errors[0]


class _FakeSyncer:
    """LipSyncer's interface for run_jobs, no networks: run() does what `outcomes` says per output name."""

    config = {"avatar_cache": "off"}

    def __init__(self, outcomes):
        self.outcomes = outcomes

    def load(self):
        return self

    def run(self, video, audio, output, **settings):
        outcome = self.outcomes.get(os.path.basename(output))
        if outcome is not None:
            raise outcome
        open(output, "wb").close()


def test_an_unexpected_error_is_a_failed_row_and_an_interrupt_stops_the_batch(workdir):
    rows = [{"video": "v.mp4", "audio": "a.wav", "output": f"{name}.mp4"} for name in "abcd"]
    outcomes = {"b.mp4": RuntimeError("boom\nsecond line"), "c.mp4": InputError("no face in v.mp4")}
    results = run_jobs(_FakeSyncer(outcomes), jobs_from_rows(rows), report="report.json", progress=False)
    assert [(r["status"], r["error"]) for r in results] == [
        ("done", None), ("failed", "unexpected RuntimeError: boom"), ("failed", "no face in v.mp4"), ("done", None)]
    os.remove("d.mp4")
    interrupted = _FakeSyncer(dict(outcomes, **{"d.mp4": KeyboardInterrupt()}))
    with pytest.raises(KeyboardInterrupt):
        run_jobs(interrupted, jobs_from_rows(rows), report="report.json", progress=False)
    report = _report(workdir / "report.json")
    assert report["interrupted"] and [(r["row"], r["status"]) for r in report["rows"]] == [
        (1, "skipped"), (2, "failed"), (3, "failed")]
