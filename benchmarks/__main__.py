"""Run benchmarks and merge their sections into ``benchmarks/RESULTS.md``.

``python -m benchmarks`` runs every ``benchmarks/<name>.py`` that has a ``main()``;
``python -m benchmarks NAME ...`` runs only those; ``--merge-only`` just rebuilds
RESULTS.md from the section files in ``benchmarks/results/`` (each benchmark writes its own
section atomically, so one failing benchmark never erases another's numbers).
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import subprocess
import sys
import time
from pathlib import Path

import benchmarks
from core import atomic

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
SECTIONS = HERE / "results"


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if not m.name.startswith("_"))


def merge() -> Path:
    parts = [
        "# Benchmark results\n",
        "Each section is written by `python -m benchmarks.<name>` (or all: `make bench`) on the machine it names; "
        "numbers are medians and ratios measured within one run of that benchmark.\n",
    ]
    for section in sorted(SECTIONS.glob("*.md")):
        parts.append(section.read_text().rstrip() + "\n")
    return atomic.write_text(RESULTS, "\n".join(parts))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help=f"benchmarks to run (default all): {', '.join(available())}")
    ap.add_argument("--merge-only", action="store_true", help="only rebuild RESULTS.md from results/*.md")
    args = ap.parse_args(argv)
    failed = []
    if not args.merge_only:
        for name in args.names or available():
            if name not in available():
                ap.error(f"unknown benchmark {name!r}; available: {', '.join(available())}")
            mod = importlib.import_module(f"benchmarks.{name}")
            if not hasattr(mod, "main"):
                continue
            t0 = time.perf_counter()
            print(f"== {name}", flush=True)
            rc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}"]).returncode
            print(f"== {name}: rc={rc} in {time.perf_counter() - t0:.0f}s", flush=True)
            if rc:
                failed.append(name)
    print(f"wrote {merge()}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
