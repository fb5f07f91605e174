"""`make bench`: every benchmark in turn; each prints a table and writes bench/results/*.json.

Hours on a 2-core machine, and bench_emulation, bench_faults and bench_lut's emu-rpi4 rows need
root (cgroups, sshd). `python bench/run_all.py NAME...` runs only the named ones.
(bench/search_truth_seeds.py is a follow-up of bench_search, run by hand.)"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["bench_foundation.py", "bench_export.py", "bench_agents.py", "bench_compress.py", "bench_conformance.py",
           "bench_search.py", "bench_methods.py", "bench_faults.py", "bench_emulation.py", "bench_lut.py"]


def main() -> int:
    failed = []
    chosen = [n if n.endswith(".py") else f"{n}.py" for n in sys.argv[1:]] or BENCHES
    unknown = sorted(set(chosen) - set(BENCHES))
    if unknown:
        print(f"run_all: no such bench: {', '.join(unknown)} (known: {', '.join(BENCHES)})", file=sys.stderr)
        return 2
    for name in chosen:
        print(f"\n## {name}\n", flush=True)
        if subprocess.call([sys.executable, str(HERE / name)]) != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
