"""Markdown and JSON output.

bench/results/latest.{md,json} are written on every run (git-ignored). bench/RESULTS.md is the committed
copy: a full default run rewrites its generated part and keeps the hand-written analysis between the
ANALYSIS markers, so re-running the benchmark never erases the explanation of the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.common import BENCH_DIR, Config, Section
from bench.machine import render as render_machine

RESULTS_DIR = BENCH_DIR / "results"
COMMITTED = BENCH_DIR / "RESULTS.md"
ANALYSIS_START = "<!-- ANALYSIS:START (hand-written; kept when the benchmark rewrites this file) -->"
ANALYSIS_END = "<!-- ANALYSIS:END -->"


def _table(columns: list[str], rows: list[list[str]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render_tables(sections: list[Section]) -> str:
    """The part printed to stdout: the targets, then one table per benchmark with its notes."""
    out: list[str] = []
    targets = [t for s in sections for t in s.targets]
    if targets:
        out.append("### Targets\n")
        out.append(
            _table(
                ["what", "target", "measured (median)", "met"],
                [[t.what, t.goal, t.measured, "yes" if t.met else "**NO**"] for t in targets],
            )
        )
        out.append("")
    for section in sections:
        out.append(f"### {section.title}\n")
        out.append(_table(section.columns, section.rows))
        if section.notes:
            out.append("")
            out.extend(f"- {note}" for note in section.notes)
        out.append("")
    return "\n".join(out)


def render_document(
    machine: dict[str, Any], cfg: Config, sections: list[Section], profiles: list[str], command: str, elapsed: float
) -> str:
    parts = [
        "# refund-mcp benchmarks\n",
        "What refund-mcp adds on top of the MCP SDK, measured side by side. Produced by "
        f"`{command}` ({elapsed / 60:.1f} min in all; see bench/README.md); nothing is asserted. Medians over "
        f"repeated runs ({cfg.repeats} for in-process measurements, {cfg.process_repeats} for the HTTP set-ups, which "
        "restart servers on a fresh database each time), with the spread (min–max across repeats) in parentheses.\n",
        "## Machine\n",
        render_machine(machine),
        "## Results\n",
        render_tables(sections),
    ]
    if profiles:
        parts.append("## Profiles of missed targets (pyinstrument, generated)\n")
        parts.extend(profiles)
    return "\n".join(parts).rstrip() + "\n"


def _preserved_analysis() -> str:
    if COMMITTED.exists():
        text = COMMITTED.read_text(encoding="utf-8")
        if ANALYSIS_START in text and ANALYSIS_END in text:
            return text[text.index(ANALYSIS_START) : text.index(ANALYSIS_END) + len(ANALYSIS_END)]
    return f"{ANALYSIS_START}\n## Analysis\n\n(to be written)\n{ANALYSIS_END}"


def write(
    machine: dict[str, Any],
    cfg: Config,
    sections: list[Section],
    profiles: list[str],
    command: str,
    elapsed: float,
    *,
    update_committed: bool,
) -> list[Path]:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    document = render_document(machine, cfg, sections, profiles, command, elapsed)
    written = [RESULTS_DIR / "latest.md", RESULTS_DIR / "latest.json"]
    written[0].write_text(document, encoding="utf-8")
    payload = {
        "command": command,
        "elapsed_seconds": elapsed,
        "machine": machine,
        "config": {k: v for k, v in vars(cfg).items()},
        "sections": {s.name: s.as_dict() for s in sections},
    }
    written[1].write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    if update_committed:
        COMMITTED.write_text(document + "\n" + _preserved_analysis() + "\n", encoding="utf-8")
        written.append(COMMITTED)
    return written


def write_profile(name: str, text: str) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"profile-{name}.txt"
    path.write_text(text, encoding="utf-8")
    return path
