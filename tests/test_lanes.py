"""`make test` runs the suite as units on two lanes (tests/lanes.py): together they must select
every test once, and a failing unit must fail the run."""
from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests import lanes

REPO = Path(__file__).resolve().parents[1]


class _Collected:
    def __init__(self):
        self.ids = []

    def pytest_collection_finish(self, session):
        self.ids.extend(item.nodeid for item in session.items)


def _collect(args):
    plugin = _Collected()
    rc = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *args], plugins=[plugin])
    assert rc == 0, (args, rc)
    return plugin.ids


def test_the_units_select_every_test_once(monkeypatch):
    monkeypatch.chdir(REPO)
    everything = _collect(["tests"])
    assert any("conformance" in i for i in everything)  # conformance is part of the suite
    counts = Counter(i for _, args in lanes.units() for i in _collect(args))
    assert set(counts) == set(everything)
    assert max(counts.values()) == 1, [i for i, n in counts.items() if n > 1]


def test_a_failing_unit_fails_the_run(tmp_path, monkeypatch):
    (tmp_path / "test_ok.py").write_text("def test_ok():\n    pass\n")
    (tmp_path / "test_bad.py").write_text("def test_bad():\n    assert False, 'the bad one'\n")
    script = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from tests import lanes; "
              f"lanes.units = lambda: [('ok', [{str(tmp_path / 'test_ok.py')!r}]), "
              f"('bad', [{str(tmp_path / 'test_bad.py')!r}])]; sys.exit(lanes.main([]))")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "passed ok" in run.stdout and "FAILED (exit 1) bad" in run.stdout
    assert "the bad one" in run.stdout  # the failed unit's log is printed
    assert "1 of 2 units passed" in run.stdout
