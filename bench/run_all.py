"""`make bench`: every benchmark in turn; each prints a table and writes bench/results/*.json."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["bench_foundation.py", "bench_export.py", "bench_agents.py", "bench_compress.py", "bench_conformance.py"]


def main() -> int:
    failed = []
    for name in BENCHES:
        print(f"\n## {name}\n", flush=True)
        if subprocess.call([sys.executable, str(HERE / name)]) != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
