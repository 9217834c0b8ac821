"""``python -m bench``: run the benchmark, print the tables, write the JSON.

python -m bench                       # the full run: 10, 100, 1000, 10000 tasks
python -m bench --sizes 10,100 --quick
python -m bench --sizes 1000 --scenarios pg-1-process,pg-3-processes --no-images
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import image_prep, report, scaleout
from bench.runner import Timing, run_scenario, timing_dict

SCENARIOS = ("ours-callbacks", "ours-lost", "baseline")  # the default run
# PostgreSQL, one process or one `run` and two `worker`s (bench/scaleout.py): asked for by name.
POSTGRES_SCENARIOS = tuple(scaleout.SCENARIOS)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000,10000", help="concurrent tasks per run")
    parser.add_argument("--quick", action="store_true", help="fewer image rounds")
    parser.add_argument("--factor", type=float, default=10.0, help="time compression")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"of {', '.join(SCENARIOS + POSTGRES_SCENARIOS)}",
    )
    parser.add_argument("--no-images", action="store_true", help="skip image preparation")
    parser.add_argument("--out", type=Path, default=Path("bench/results/latest.json"))
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    timing = Timing(factor=args.factor)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    results: dict[str, Any] = {
        "machine": report.machine(),
        "cpu_probe_ms": {"start": report.cpu_probe_ms()},
        "timing": timing_dict(timing),
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "scenarios": [],
    }
    started = time.monotonic()
    for n in sizes:
        for kind in args.scenarios.split(","):
            print(f"-- {kind}, {n} tasks ...", flush=True)
            try:
                if kind in scaleout.SCENARIOS:
                    result = await scaleout_scenario(kind, n, timing)
                else:
                    result = await run_scenario(kind, n, timing)
            except Exception as exc:  # one failed scenario must not lose the others
                result = {"tasks": n, "strategy": kind, "error": repr(exc)}
            results["scenarios"].append(result)
            print(report.table([result]).splitlines()[-1], flush=True)
            if result.get("log_problems"):
                print("   log problems:", result["log_problems"][:3], flush=True)
    if not args.no_images:
        print("-- image preparation ...", flush=True)
        rows = image_prep.run(rounds=3 if args.quick else 10)
        results["image_prep"] = {"rows": rows, "speedup": image_prep.speedup(rows)}
    results["cpu_probe_ms"]["end"] = report.cpu_probe_ms()
    results["total_seconds"] = time.monotonic() - started
    return results


async def scaleout_scenario(kind: str, n: int, timing: Timing) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kling-bench-") as tmp:
        started = time.monotonic()
        result = await scaleout.run_postgres(
            n, processes=scaleout.SCENARIOS[kind], timing=timing, workdir=Path(tmp)
        )
        result["wall_seconds"] = time.monotonic() - started
        return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = asyncio.run(run(args))
    print()
    print(report.table(results["scenarios"]))
    if "image_prep" in results:
        print()
        print(report.image_table(results["image_prep"]["rows"]))
        print(f"pass-through is {results['image_prep']['speedup']:.0f}x faster than converting")
    probe = results["cpu_probe_ms"]
    print(f"\nCPU probe (a fixed Python loop): {probe['start']} ms first, {probe['end']} ms last")
    report.write_json(args.out, results)
    print(f"\nwritten to {args.out} ({results['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
