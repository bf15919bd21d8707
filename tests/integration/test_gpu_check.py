"""benchmarks/gpu_check.py (`make gpu-check`) cannot rot unnoticed on machines without a GPU: its
CPU mode (--device cpu --quick) runs the same code at tiny sizes and must report every case of the
plan; without a GPU the plain command says so in one line and exits 0."""
import json
import math
import subprocess
import sys

import pytest
import torch
from paths import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))
import gpu_check  # noqa: E402

# Every case the check reports, in its order (the list: nothing may silently drop out).
INFER = ["HyperLipsBase", "HyperLipsHR@128", "HyperLipsHR@256", "HyperLipsHR@512"]
PLAN = (["data"]
        + [f"train:{model}:{precision}" for model in ["SyncNet", "HyperLipsBase", "HyperLipsHR@128", "HyperLipsHR@256"]
           for precision in ["fp32", "fp16", "bf16"]]
        + ["resume:SyncNet", "resume:HyperLipsBase", "ddp:1rank", "ddp:2ranks",
           "evaluate:HyperLipsBase", "evaluate:HyperLipsHR@128"]
        + [f"infer:{model}" for model in INFER]
        + ["loader:SyncNet", "loader:HyperLipsBase", "loader:HyperLipsHR@128"])


def run_check(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the plain command runs the whole check")
def test_without_a_gpu_it_says_so_in_one_line_and_exits_0(tmp_path):
    done = run_check("--out", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [gpu_check.NO_GPU]
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_quick_cpu_run_reports_every_case(tmp_path):
    done = run_check("--device", "cpu", "--quick", "--out", tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout)
    written = list(tmp_path.glob("*.json"))
    assert [str(path) for path in written] == [report["written_to"]]
    assert json.loads(written[0].read_text()) == report
    assert report["device"].startswith("cpu") and report["quick"] is True

    cases = report["cases"]
    assert list(cases) == PLAN
    ran = gpu_check.QUICK["cases"]
    assert {name.split(":")[0] for name in ran} == {"data", "train", "resume", "ddp", "evaluate", "infer", "loader"}
    for name, result in cases.items():
        if name in ran:
            assert result["ok"] is True and "error" not in result, (name, result)
        else:
            assert result == {"skipped": "not run with --quick"}
    assert report["summary"] == {"ok": len(ran), "failed": 0, "skipped": len(PLAN) - len(ran)}

    for name in ("train:SyncNet:fp32", "train:SyncNet:bf16"):
        train = cases[name]
        assert train["losses_finite"] and all(math.isfinite(v) for v in train["losses"].values())
        assert train["weights_max_abs_change"]["syncnet"] > 0 and train["seconds_per_step"] > 0
    assert cases["train:SyncNet:bf16"]["amp"] == "torch.bfloat16"
    assert cases["resume:SyncNet"]["bitwise_equal"] is True          # exact on the CPU
    ddp = cases["ddp:1rank"]
    assert (ddp["world_size"], ddp["backend"], ddp["ddp_networks"]) == (1, "gloo", ["syncnet"])
    assert ddp["ranks_max_abs_difference"] == 0 and ddp["losses_finite"]
    assert cases["evaluate:HyperLipsBase"]["frames"] > 0 and math.isfinite(cases["evaluate:HyperLipsBase"]["mean"]["PSNR"])
    assert cases["infer:HyperLipsBase"]["frames"] > 0 and cases["infer:HyperLipsBase"]["frames_per_s"] > 0
    loader = cases["loader:SyncNet"]
    assert loader["num_workers"] == 2 and loader["samples_per_s"] > 0 and 0 <= loader["data_wait_share"] <= 1


def test_a_skipped_fp16_step_is_one_whose_scale_dropped(make_config):
    """What the fp16 training cases rely on: GradScaler skipped a step (inf gradients, weights
    unchanged) exactly when its scale dropped. The line trainer's first steps overflow at 65536."""
    from builders import LineDataset, LineTrainer
    trainer = LineTrainer(make_config("SyncNet", amp=True, amp_dtype="float16"))
    data = LineDataset(64)
    batch = {"x": data.x, "y": data.y}
    seen = []
    for _ in range(5):
        before, weights = gpu_check.grad_scales(trainer), gpu_check.trained_parameters(trainer)
        trainer.train_step(batch)
        step_skipped = gpu_check.skipped(before, gpu_check.grad_scales(trainer))
        assert step_skipped == (gpu_check.largest_change(weights, gpu_check.trained_parameters(trainer))["line"] == 0)
        seen.append(step_skipped)
    assert seen[0] and not seen[-1]
