"""bench.gpu_check, proven on CPU: every section and row is written, and the budget is honoured."""

import itertools
import subprocess
import sys
import time

import pytest

from bench.run_all import gpu_results_line
from tests.helpers import REPO

NOT_MEASURED = "not measured (budget)"


def run_gpu_check(output, *options, timeout=180):
    command = [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--quick", "--output", str(output), *options]
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
def test_quick_cpu_run_measures_every_step_row_and_marks_fp16_not_available(quick_report):
    text, _ = quick_report
    assert text.startswith("# GPU check") and "- Device: CPU" in text and "- Budget: " in text
    rows = table(text, "Training and inference steps")
    expected = set(
        itertools.product(
            ("sepformer", "convtasnet"), ("speechbrain", "ours"), ("fp32", "bf16", "fp16"), ("train", "inference"), "14"
        )
    )
    assert {(row["model"], row["block"], row["precision"], row["mode"], row["batch"]) for row in rows} == expected
    for row in rows:
        if row["precision"] == "fp16":
            assert row["median step (ms)"] == "n/a on CPU"
        else:
            assert is_number(row["median step (ms)"]), row
        if row["block"] == "ours" and row["precision"] != "fp16":
            assert row["speed-up vs speechbrain"].endswith("x")


@pytest.mark.slow
def test_quick_cpu_run_trains_with_train_py_in_bf16_without_nan(quick_report):
    text, _ = quick_report
    (row,) = table(text, "train.py under mixed precision")
    assert row["precision"] == "bf16" and row["run (wall time)"].startswith("ok")
    assert row["NaN"] == "no" and row["skipped batches"] == "0"
    assert all(is_number(row[key]) for key in ("train si-snr", "valid si-snr", "test si-snr"))


@pytest.mark.slow
def test_quick_cpu_run_separates_with_one_and_four_windows_per_pass(quick_report):
    text, _ = quick_report
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
    for row in table(text, "Training and inference steps"):
        assert row["median step (ms)"] == ("n/a on CPU" if row["precision"] == "fp16" else NOT_MEASURED)
    assert [row["run (wall time)"] for row in table(text, "train.py under mixed precision")] == [NOT_MEASURED]
    assert [row["RTF"] for row in table(text, "separate.py real-time factor")] == [NOT_MEASURED] * 2


def test_bench_report_links_the_gpu_results_only_once_they_exist(tmp_path):
    gpu_results = tmp_path / "bench" / "RESULTS-gpu.md"
    report = tmp_path / "bench" / "RESULTS.md"
    assert gpu_results_line(report, gpu_results) is None
    gpu_results.parent.mkdir()
    gpu_results.write_text("# GPU check\n")
    assert "[RESULTS-gpu.md](RESULTS-gpu.md)" in gpu_results_line(report, gpu_results)
    assert "(bench/RESULTS-gpu.md)" in gpu_results_line(tmp_path / "RESULTS.md", gpu_results)


def test_gpu_line_names_the_gpu_driver_cuda_and_tf32(monkeypatch):
    """The CUDA branch of the header, on a CPU machine: the properties torch would report for a GPU."""
    import types

    import torch

    from bench import gpu_check

    properties = types.SimpleNamespace(name="NVIDIA H200", total_memory=141 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: properties)
    monkeypatch.setattr(gpu_check.subprocess, "run", lambda *args, **kwargs: types.SimpleNamespace(stdout="570.1\n"))
    line = gpu_check.device_line("cuda")
    assert line.startswith("- Device: NVIDIA H200, 141 GiB; driver 570.1; CUDA")
    assert "; TF32 matmuls in fp32: " in line


def test_gradscaler_overflows_are_read_from_the_checkpointed_scale(tmp_path):
    import torch

    from bench.gpu_check import gradscaler_scale

    scaler = torch.GradScaler("cpu", init_scale=65536.0 / 8)  # as if three overflows had halved it
    (tmp_path / "save" / "CKPT+1").mkdir(parents=True)
    torch.save(scaler.state_dict(), tmp_path / "save" / "CKPT+1" / "scaler.ckpt")
    assert gradscaler_scale(tmp_path) == 8192.0
    assert gradscaler_scale(tmp_path / "no-run") is None
