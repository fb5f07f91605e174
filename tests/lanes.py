"""`make test`: the whole suite, conformance included, as pytest runs on two lanes.

The export tests run single-threaded (one torch thread, one runtime thread: a training step
of theirs went from 0.4 s to 8 s when two threads spun against other jobs), so run alone they
leave the second core of a 2-core machine idle for half an hour. Here the suite is cut into
units (the export tests, the rest, one unit per conformance family) that run as separate
pytest processes, at most LANES at a time, longest first; a lane that frees takes the next.

Each unit writes its own log. A unit's summary line is printed when it ends; a failed unit's
whole log follows, so CI shows what failed. Exit status: 0 when every unit passed, else the
first failing unit's pytest status.

    python tests/lanes.py            # every unit
    python tests/lanes.py ARGS...    # one plain pytest run with ARGS (no lanes)
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Tuple

REPO = Path(__file__).resolve().parents[1]
LANES = int(os.environ.get("EDGEPRUNE_TEST_LANES", min(2, os.cpu_count() or 1)))
SHORT_SUMMARY = "short test summary info"
CONFORMANCE = "tests/conformance/test_conformance.py::test_family_conforms"
# seconds each family took alone on the 2-core VM, only to start the long ones first
FAMILY_SECONDS = {"zoo-mobilenet_v2": 280, "ghostnet": 200, "convnext": 130, "efficientnet": 125,
                  "inception": 110, "zoo-resnet20": 100, "densenet": 90}


def units() -> List[Tuple[str, List[str]]]:
    """(name, pytest arguments), longest first."""
    sys.path.insert(0, str(REPO))
    from tests.conformance.pipeline import family_refs

    families = sorted(family_refs(), key=lambda f: -FAMILY_SECONDS.get(f, 60))
    return [("export", ["tests/export"]),
            ("main", ["tests", "--ignore=tests/export", "--ignore=tests/conformance"]),
            *((f"conformance[{f}]", [f"{CONFORMANCE}[{f}]"]) for f in families)]


def run_unit(name: str, args: List[str], logs: Path) -> Tuple[str, int]:
    log = logs / f"{name}.log"
    start = time.time()
    print(f"[lanes] start {name}", flush=True)
    with open(log, "wb") as out:
        # its own --basetemp: pytest prunes old numbered temp folders, and the units run at once
        rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-rsxX", f"--basetemp={logs / (name + '-tmp')}",
                              *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=_env())
    text = log.read_text(errors="replace")
    print(f"[lanes] {'passed' if rc == 0 else f'FAILED (exit {rc})'} {name} in {time.time() - start:.0f} s: "
          f"{_summary(text)}", flush=True)
    if rc != 0:
        print(text, flush=True)
    elif SHORT_SUMMARY in text:  # skips and expected failures, with their reasons
        print(text[text.index(SHORT_SUMMARY):].rsplit("\n", 2)[0], flush=True)
    return name, rc


def _env() -> dict:
    """One torch (OpenMP) thread per unit when units run side by side, in the tests and in the
    CLI processes they start: two units of two threads each on two cores spin against each
    other (a conformance family took 3x its time alone)."""
    return {**os.environ, "OMP_NUM_THREADS": "1"} if LANES > 1 else dict(os.environ)


def _summary(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip("= ") if lines else "(no output)"


def main(argv: List[str]) -> int:
    if argv:
        return subprocess.call([sys.executable, "-m", "pytest", *argv], cwd=REPO)
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="edgeprune-lanes-") as tmp, ThreadPoolExecutor(LANES) as pool:
        done = list(pool.map(lambda unit: run_unit(*unit, Path(tmp)), units()))
    failed = [(name, rc) for name, rc in done if rc != 0]
    print(f"[lanes] {len(done) - len(failed)} of {len(done)} units passed on {LANES} lanes in "
          f"{time.time() - start:.0f} s" + (f"; failed: {', '.join(n for n, _ in failed)}" if failed else ""))
    return failed[0][1] if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
