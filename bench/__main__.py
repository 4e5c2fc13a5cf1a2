"""`make bench`: run every bench/bench_*.py module, print a table, write .bench/results.json.

Each module defines ``run() -> list[BenchResult]``. Ratios are against baselines measured
in the same run; the machine is shared and noisy, so values are medians.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import traceback
from pathlib import Path

import bench
from bench.common import BenchResult


def main() -> int:
    only = sys.argv[1:]
    results: list[BenchResult] = []
    failures = 0
    for module_info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda m: m.name):
        if not module_info.name.startswith("bench_"):
            continue
        if only and not any(o in module_info.name for o in only):
            continue
        print(f"== {module_info.name}", flush=True)
        try:
            module = importlib.import_module(f"bench.{module_info.name}")
            for row in module.run():
                results.append(row)
                _print_row(row)
        except Exception:
            failures += 1
            traceback.print_exc()
    out = Path(".bench")
    out.mkdir(exist_ok=True)
    (out / "results.json").write_text(json.dumps({"results": results}, indent=2) + "\n")
    print(f"\n{'benchmark':48} {'value':>12} {'unit':10} {'baseline':>12} {'ratio':>7}  target")
    for row in results:
        _print_row(row)
    print(f"\nwrote .bench/results.json ({len(results)} results)")
    return 1 if failures else 0


def _print_row(row: BenchResult) -> None:
    print(
        f"{row['name']:48} {row['value']:12.1f} {row['unit']:10} "
        f"{row['baseline_value']:12.1f} {row['ratio']:7.2f}  "
        f"{row['target']} (vs {row['baseline']})",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
