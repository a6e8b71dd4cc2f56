"""Runs every `bench/bench_*.py` and writes their sections to one markdown report.

    python -m bench.run_all                       # all benchmarks -> bench/RESULTS.md
    python -m bench.run_all --quick               # smoke test: tiny sizes, one repeat
    python -m bench.run_all --only models         # rerun one benchmark: its section of bench/RESULTS.md is
                                                  # replaced, the others are kept as they were

Each benchmark module exposes `run(quick: bool = False) -> str` returning a markdown section.
A benchmark that fails to import or run gets its traceback in its section; the others still run.
The report starts with the machine, the versions and the command that reproduces it.
"""

import argparse
import datetime
import importlib
import importlib.metadata
import os
import platform
import re
import shlex
import sys
import time
import traceback
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
GPU_RESULTS = BENCH_DIR / "RESULTS-gpu.md"  # written by bench.gpu_check, never by this script


def available_benchmarks() -> list[str]:
    """Names of the benchmark modules, e.g. "models" for bench/bench_models.py."""
    return sorted(path.stem.removeprefix("bench_") for path in BENCH_DIR.glob("bench_*.py"))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20  # kB -> GiB
    except OSError:
        pass
    return None


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _gpus() -> str:
    try:
        import torch
    except ImportError:
        return "unknown (torch not importable)"
    if not torch.cuda.is_available():
        return "none"
    return ", ".join(torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count()))


def gpu_results_line(output: Path, gpu_results: Path = GPU_RESULTS) -> str | None:
    """A link from the report to the GPU check's own file, if it was written: this report is rewritten whole,
    so the GPU figures live apart and survive `make bench`."""
    if not gpu_results.is_file():
        return None
    link = Path(os.path.relpath(gpu_results.resolve(), output.resolve().parent)).as_posix()
    return f"- GPU figures: [{gpu_results.name}]({link}) (`make gpu-check`, python -m bench.gpu_check)"


def header(command: str, extra_lines: tuple[str, ...] = (), title: str = "# Benchmark results") -> str:
    """Machine, versions, date and the command that reproduces the report."""
    ram = _ram_gib()
    return "\n".join(
        [
            title,
            "",
            f"- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}",
            f"- CPU: {_cpu_model()}, {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable by this process)",
            f"- RAM: {ram:.1f} GiB" if ram is not None else "- RAM: unknown",
            f"- GPU: {_gpus()}",
            f"- Versions: python {platform.python_version()}, torch {_version('torch')}, "
            f"speechbrain {_version('speechbrain')}",
            f"- Reproduce: `{command}`",
            *extra_lines,
            "",
        ]
    )


def run_benchmark(name: str, quick: bool) -> str:
    """The markdown section of `bench/bench_<name>.py`, or its traceback if it fails; its last line says which
    benchmark wrote it, when, and how long it took (`report_sections` finds the sections by it)."""
    start = time.perf_counter()
    try:
        module = importlib.import_module(f"bench.bench_{name}")
        section = module.run(quick=quick)
    except Exception:
        section = f"## bench_{name}\n\n**Failed:**\n\n```\n{traceback.format_exc()}```"
    when = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d}"
    return f"{section.rstrip()}\n\n_bench_{name} took {time.perf_counter() - start:.0f} s ({when})._\n"


SECTION_END = re.compile(r"^_bench_(\w+) took [^\n]*\n", re.MULTILINE)


def report_sections(report: str) -> dict[str, str]:
    """The sections of a report written here, by benchmark name, in their order."""
    sections, start = {}, report.find("\n## ") + 1
    for end in SECTION_END.finditer(report):
        sections[end.group(1)] = report[start : end.end()]
        start = end.end() + 1
    return sections


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the benchmarks and write a markdown report.")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: a smoke test")
    parser.add_argument(
        "--only", default=None, help="comma-separated benchmark names, e.g. models (for bench_models.py)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="report path (default bench/RESULTS.md; with --quick bench/RESULTS-quick.md, never the committed one)",
    )
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = BENCH_DIR / ("RESULTS-quick.md" if args.quick else "RESULTS.md")

    names = available_benchmarks()
    if args.only:
        requested = [name.strip().removeprefix("bench_") for name in args.only.split(",") if name.strip()]
        unknown = sorted(set(requested) - set(names))
        if unknown:
            parser.error(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(names)}")
        names = [name for name in names if name in requested]

    command = shlex.join(["python", "-m", "bench.run_all", *(argv if argv is not None else sys.argv[1:])])
    gpu_line = gpu_results_line(args.output)
    earlier = args.output.read_text() if args.only and args.output.is_file() else ""
    kept = report_sections(earlier)
    sections = dict(kept)  # the earlier report's sections, each replaced when its benchmark runs again
    for name in names:
        print(f"running bench_{name} ...", file=sys.stderr, flush=True)
        sections[name] = run_benchmark(name, args.quick)
    if kept:  # the earlier header stays (it says how the other sections were made), with this rerun added
        when = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}"
        top = earlier[: earlier.find("\n## ") + 1].rstrip("\n")
        top += f"\n- {when}: `{command}`; only the sections named were rerun, each section's last line says when\n"
    else:
        top = header(command, (gpu_line,) if gpu_line else ())

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join([top, *sections.values()]))
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
