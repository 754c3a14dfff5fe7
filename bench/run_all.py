"""Run every benchmark, one after the other (they need the machine to themselves), and
write ``bench/RESULTS.md`` from their results. Run: ``scripts/bench``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bench._harness import REPO_ROOT, RESULTS_DIR

SCRIPTS = [
    "bench_submit",
    "bench_api",
    "bench_worker",
    "bench_latency",
    "bench_beat",
    "bench_async",
    "bench_dedupe",
    "bench_flow",
    "bench_history",
]
RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"


def run(names: list[str]) -> int:
    failed = 0
    started = time.monotonic()
    for name in names:
        print(f"== {name}", flush=True)
        code = subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=REPO_ROOT).returncode
        failed += code != 0
    print(f"== all benchmarks took {time.monotonic() - started:.0f} s", flush=True)
    write_markdown()
    return 1 if failed else 0


def write_markdown() -> None:
    results = [
        json.loads((RESULTS_DIR / f"{n}.json").read_text())
        for n in SCRIPTS
        if (RESULTS_DIR / f"{n}.json").exists()
    ]
    lines = [
        "# Benchmark results",
        "",
        "Every figure is a ratio against a baseline measured in the same run on the same",
        "private Redis; absolute numbers are context. Written by `scripts/bench`",
        "(`python -m bench.run_all`); each script can also run alone (`python -m bench.<script>`).",
        "",
    ]
    if results:
        machine = results[0]["machine"]
        lines += ["Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()), ""]
    for result in results:
        lines += [
            f"## {result['script']} ({result['date']})",
            "",
            f"Command: `{result['command']}`",
            "",
            "| figure | ratio | target | met | measured |",
            "|---|---|---|---|---|",
        ]
        for fig in result["figures"]:
            detail = ", ".join(f"{k} {v}" for k, v in fig["detail"].items())
            met = "yes" if fig["passed"] else "**no**"
            lines.append(f"| {fig['name']} | {fig['ratio']} | {fig['target']} | {met} | {detail} |")
        lines += ["", *[f"- {note}" for note in result.get("notes", [])], ""]
    RESULTS_MD.write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {RESULTS_MD}")


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:] or SCRIPTS))
