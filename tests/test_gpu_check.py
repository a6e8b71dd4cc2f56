"""bench/gpu_check.py, proven on CPU: every section and row is written, and the budget is honoured."""

import subprocess
import sys
import time

import pytest

from bench.run_all import gpu_results_line
from tests.helpers import REPO

STEP_COLUMNS = [
    "model",
    "block",
    "precision",
    "batch",
    "median step (ms)",
    "peak memory (MiB)",
    "speed-up vs speechbrain block",
    "speed-up vs upstream",
]
NOT_MEASURED = "not measured (budget)"


def run_gpu_check(output, *options, timeout=180):
    command = [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--quick", "--output", str(output), *options]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def table(text: str, heading: str) -> list[dict[str, str]]:
    """The rows of the first markdown table under `## heading`, keyed by column name."""
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    columns = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(columns, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


def is_number(cell: str) -> bool:
    try:
        float(cell.replace(",", ""))
    except ValueError:
        return False
    return True


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    output = tmp_path_factory.mktemp("gpu_check") / "RESULTS-gpu.md"
    start = time.perf_counter()
    result = run_gpu_check(output)
    assert result.returncode == 0, result.stderr[-3000:]
    return output.read_text(), time.perf_counter() - start


@pytest.mark.slow
def test_quick_cpu_run_measures_every_training_step_row_and_marks_fp16_not_available(quick_report):
    text, _ = quick_report
    assert text.startswith("# GPU check") and "- Device: CPU" in text and "- Goal:" in text
    rows = table(text, "Training step")
    assert list(rows[0]) == STEP_COLUMNS
    expected = {
        (model, block, precision, batch)
        for model in ("sepformer", "convtasnet")
        for batch in ("1", "4")
        for block, precision in [("upstream", "fp32")]
        + [(block, precision) for block in ("speechbrain", "ours") for precision in ("fp32", "bf16", "fp16")]
    }
    assert {(row["model"], row["block"], row["precision"], row["batch"]) for row in rows} == expected
    for row in rows:
        if row["precision"] == "fp16":
            assert row["median step (ms)"] == "n/a on CPU"
        else:
            assert is_number(row["median step (ms)"]) and is_number(row["peak memory (MiB)"]), row
        if row["block"] == "ours" and row["precision"] != "fp16":
            assert row["speed-up vs speechbrain block"].endswith("x") and row["speed-up vs upstream"].endswith("x")


@pytest.mark.slow
def test_quick_cpu_run_trains_with_train_py_in_bf16_without_nan(quick_report):
    text, _ = quick_report
    (row,) = table(text, "train.py under mixed precision")
    assert row["precision"] == "bf16" and row["run (wall time)"].startswith("ok")
    assert row["NaN"] == "no" and row["skipped batches"].startswith("0")
    assert all(is_number(row[key]) for key in ("train si-snr", "valid si-snr", "test si-snr"))


@pytest.mark.slow
def test_quick_cpu_run_scores_and_separates(quick_report):
    text, _ = quick_report
    scoring = table(text, "Test-set scoring throughput")
    assert [(row["device"], row["batch"]) for row in scoring] == [("cpu", "1"), ("cpu", "2")]
    assert all(is_number(row["ms per utterance"]) for row in scoring)
    separate = table(text, "separate.py real-time factor")
    assert [(row["model"], row["windows per pass"]) for row in separate] == [("sepformer", "1"), ("sepformer", "4")]
    assert all(is_number(row["RTF"]) for row in separate)


@pytest.mark.slow
def test_quick_cpu_run_fits_the_test_suite(quick_report):
    text, seconds = quick_report
    assert NOT_MEASURED not in text
    assert seconds < 120


@pytest.mark.slow
def test_zero_budget_writes_every_measurement_as_not_measured(tmp_path):
    output = tmp_path / "gpu.md"
    result = run_gpu_check(output, "--budget-s", "0", timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    text = output.read_text()
    for row in table(text, "Training step"):
        assert row["median step (ms)"] == ("n/a on CPU" if row["precision"] == "fp16" else NOT_MEASURED)
    assert [row["run (wall time)"] for row in table(text, "train.py under mixed precision")] == [NOT_MEASURED]
    assert {row["ms per utterance"] for row in table(text, "Test-set scoring throughput")} == {NOT_MEASURED}
    assert [row["RTF"] for row in table(text, "separate.py real-time factor")] == [NOT_MEASURED] * 2


def test_bench_report_links_the_gpu_results_only_once_they_exist(tmp_path):
    gpu_results = tmp_path / "bench" / "RESULTS-gpu.md"
    report = tmp_path / "bench" / "RESULTS.md"
    assert gpu_results_line(report, gpu_results) is None
    gpu_results.parent.mkdir()
    gpu_results.write_text("# GPU check\n")
    assert "[RESULTS-gpu.md](RESULTS-gpu.md)" in gpu_results_line(report, gpu_results)
    assert "(bench/RESULTS-gpu.md)" in gpu_results_line(tmp_path / "RESULTS.md", gpu_results)


@pytest.mark.slow
def test_short_budget_stops_measuring_in_time_and_still_writes_the_report(tmp_path):
    output = tmp_path / "gpu.md"
    start = time.perf_counter()
    result = run_gpu_check(output, "--budget-s", "8", timeout=90)
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.perf_counter() - start < 8 + 20  # interpreter start, the report, and killing the running worker
    text = output.read_text()
    assert NOT_MEASURED in text
    assert [row["RTF"] for row in table(text, "separate.py real-time factor")] == [NOT_MEASURED] * 2


def test_gpu_header_names_the_gpu_driver_cuda_and_tf32(monkeypatch):
    """The CUDA branch of the header, on a CPU machine: the properties torch would report for a GPU."""
    import types

    import torch

    from bench import gpu_check

    properties = types.SimpleNamespace(name="NVIDIA H200", total_memory=141 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: properties)
    monkeypatch.setattr(gpu_check.subprocess, "run", lambda *args, **kwargs: types.SimpleNamespace(stdout="570.1\n"))
    lines = gpu_check.machine_lines("cuda")
    assert lines[0].startswith("- GPU: NVIDIA H200, 141 GiB; driver 570.1; CUDA")
    assert lines[1].startswith("- TF32 matmuls in the fp32 rows: ")
    assert lines[2].startswith("- Versions: python")


def test_goal_is_met_only_when_both_speed_ups_reach_their_targets():
    from bench.gpu_check import StepCase, goal_summary

    results = {
        StepCase("sepformer", "upstream", "fp32", 1): {"median_ms": 400.0},
        StepCase("sepformer", "speechbrain", "fp16", 1): {"median_ms": 300.0},
        StepCase("sepformer", "ours", "fp16", 1): {"median_ms": 100.0},
        StepCase("sepformer", "speechbrain", "fp32", 1): {"median_ms": 150.0},
        StepCase("sepformer", "ours", "fp32", 1): {"median_ms": 120.0},
        StepCase("sepformer", "ours", "bf16", 1): {"status": NOT_MEASURED},
    }
    lines = goal_summary(results).splitlines()
    assert lines[1] == "  - fp16, batch 1: 3.00x vs SpeechBrain's block, 4.00x vs upstream: met"
    assert lines[2] == "  - fp32, batch 1: 1.25x vs SpeechBrain's block, 3.33x vs upstream: **not met**"
    assert len(lines) == 3


def test_gradscaler_overflows_are_read_from_the_checkpointed_scale(tmp_path):
    import torch

    from bench.gpu_check import gradscaler_scale

    scaler = torch.GradScaler("cpu", init_scale=65536.0 / 8)  # as if three overflows had halved it
    (tmp_path / "save" / "CKPT+1").mkdir(parents=True)
    torch.save(scaler.state_dict(), tmp_path / "save" / "CKPT+1" / "scaler.ckpt")
    assert gradscaler_scale(tmp_path) == 8192.0
    assert gradscaler_scale(tmp_path / "no-run") is None
