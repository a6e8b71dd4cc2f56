"""bench/run_all.py: rerunning some benchmarks replaces their sections of the report and keeps the others."""

import bench.run_all as run_all


def fake_section(name: str, quick: bool) -> str:
    return f"## {name} figures\n\nmeasured again\n\n_bench_{name} took 1 s (2026-12-07)._\n"


def test_only_replaces_the_sections_it_runs_and_keeps_the_others(tmp_path, monkeypatch):
    report = tmp_path / "RESULTS.md"
    monkeypatch.setattr(
        run_all, "run_benchmark", lambda name, quick: f"## {name}\n\nfirst\n\n_bench_{name} took 9 s._\n"
    )
    run_all.main(["--output", str(report)])  # every benchmark once
    first_header = report.read_text().split("\n## ")[0].rstrip("\n")
    first = run_all.report_sections(report.read_text())
    assert list(first) == run_all.available_benchmarks()

    monkeypatch.setattr(run_all, "run_benchmark", fake_section)
    run_all.main(["--only", "windows,demo", "--output", str(report)])
    text = report.read_text()
    sections = run_all.report_sections(text)
    assert list(sections) == list(first)  # same order, none lost
    assert sections["windows"] == fake_section("windows", False)
    assert sections["demo"] == fake_section("demo", False)
    assert all(sections[name] == first[name] for name in first if name not in ("windows", "demo"))
    assert text.startswith(first_header + "\n- ")  # the earlier header kept whole, the rerun added below it
    assert "only the sections named were rerun" in text


def test_quick_runs_never_write_the_committed_report(tmp_path, monkeypatch):
    names = run_all.available_benchmarks()
    monkeypatch.setattr(run_all, "BENCH_DIR", tmp_path)
    monkeypatch.setattr(run_all, "available_benchmarks", lambda: names)
    monkeypatch.setattr(run_all, "run_benchmark", fake_section)
    (tmp_path / "RESULTS.md").write_text("committed figures\n")
    run_all.main(["--quick", "--only", "checkpoints"])
    assert (tmp_path / "RESULTS.md").read_text() == "committed figures\n"
    assert "checkpoints figures" in (tmp_path / "RESULTS-quick.md").read_text()
