"""Figures out of raw samples: percentiles, the printed table, the JSON file, the machine."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) by the nearest-rank method; None for no values."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError("q must be within 0..100")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def machine() -> dict[str, Any]:
    """Where the figures come from: cores, CPU model, memory, Python."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_mb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_mb = round(int(line.split()[1]) / 1024)
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_mb": memory_mb,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def best_seconds(work: Callable[[], object], rounds: int) -> float:
    """The fastest of ``rounds`` timings of ``work``: the least disturbed by anything else."""
    best = math.inf
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def cpu_probe_ms() -> float:
    """Milliseconds for a fixed pure-Python loop, best of 3: how fast this machine runs Python
    at the moment. A virtual machine slows down when its host is busy: runs compare by this."""
    return round(best_seconds(_count_up, rounds=3) * 1000, 1)


def _count_up() -> int:
    total = 0
    for i in range(2_000_000):  # interpreted, step by step: sum(range(...)) would run in C
        total += i
    return total


def cpu_ticks() -> tuple[int, int] | None:
    """(all, stolen) CPU ticks since boot from /proc/stat: stolen is the time the host gave
    this machine's CPUs to others. None where there is no /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(f) for f in fields]
    return sum(ticks[:8]), ticks[7] if len(ticks) > 7 else 0


def steal_percent(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The stolen share (%) of the CPU ticks between two ``cpu_ticks()`` readings."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    return round(100 * (after[1] - before[1]) / (after[0] - before[0]), 1)


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


SCENARIO_COLUMNS = (
    ("tasks", "tasks", 0),
    ("strategy", "strategy", 0),
    ("callbacks", "callbacks", 0),
    ("delivered", "delivered", 0),
    ("calls/task", "kling_calls_per_task", 2),
    ("status calls", "status_calls", 0),
    ("lists/cycle", "lists_per_cycle", 2),
    ("downloads", "downloads", 0),
    ("p50 ms", "latency_p50_ms", 0),
    ("p99 ms", "latency_p99_ms", 0),
    ("CPU s", "cpu_seconds", 1),
    ("peak MB", "peak_rss_mb", 0),
    ("max pending", "max_pending", 0),
    ("submit s", "submit_seconds", 1),
    ("steal %", "cpu_steal_percent", 1),
)


def table(scenarios: Sequence[dict[str, Any]]) -> str:
    """The scenarios as a Markdown table (it prints well in a terminal too)."""
    head = [name for name, _, _ in SCENARIO_COLUMNS]
    rows = [[_fmt(s.get(key), digits) for _, key, digits in SCENARIO_COLUMNS] for s in scenarios]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)
    ]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join(lines)


def image_table(rows: Sequence[dict[str, Any]]) -> str:
    head = ["input", "bytes", "path", "ms/image"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['input']} | {r['bytes']} | {r['path']} | {r['ms_per_image']:.2f} |")
    return "\n".join(lines)


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
