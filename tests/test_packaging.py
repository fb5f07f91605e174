"""The wheel works on its own: built from this tree, installed into a fresh venv, run elsewhere.

The fresh venv gets edgeprune and device_agents only from the wheel. For torch and the other
heavy packages it borrows this venv's site-packages through a .pth line: a folder named in a
.pth file joins sys.path after the venv's own, and its .pth files are not run, so the
editable install of edgeprune living there stays out.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# What a build reads. Copied, so that the build's build/ and egg-info stay out of the checkout
# and stale files in an old build/ cannot slip into the wheel.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "edgeprune", "device_agents", "hardware_profiles")
PROFILES = sorted(p.stem for p in (REPO / "hardware_profiles").glob("*.yaml"))


@dataclass
class Installed:
    wheel: Path
    venv: Path
    workdir: Path
    env: dict

    def run(self, *argv: str) -> subprocess.CompletedProcess:
        """Run a command of the fresh venv (edgeprune, python) from a folder outside the repo."""
        out = subprocess.run([str(self.venv / "bin" / argv[0]), *argv[1:]], cwd=self.workdir, env=self.env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"{argv} exited {out.returncode}:\n{out.stderr[-3000:]}"
        return out

    def python(self, code: str) -> str:
        return self.run("python", "-c", code).stdout.strip()


def _check(argv: list, **kwargs) -> None:
    out = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=600, **kwargs)
    assert out.returncode == 0, f"{argv} exited {out.returncode}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"


def _build_wheel(tmp: Path) -> Path:
    src, dist = tmp / "src", tmp / "dist"
    src.mkdir()
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, src / name)
    # the build needs no network: setuptools and wheel come from this venv (the dev extra)
    _check([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
            "--no-cache-dir", "-w", dist, src])
    (wheel,) = dist.glob("edgeprune-*.whl")
    return wheel


def _borrow_site_packages(venv: Path) -> None:
    """Put this venv's site-packages on the fresh venv's path, after its own."""
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    own = Path(out.stdout.strip())
    host = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (own / "borrowed-site-packages.pth").write_text("".join(f"{path}\n" for path in host))


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    tmp = tmp_path_factory.mktemp("packaging")
    assert not tmp.resolve().is_relative_to(REPO), "the test must run outside the repo"
    wheel, venv = _build_wheel(tmp), tmp / "venv"
    _check([sys.executable, "-m", "venv", venv])
    # installed before the .pth exists, so that pip never sees the editable edgeprune
    _check([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", "--no-cache-dir", wheel])
    _borrow_site_packages(venv)
    (tmp / "user-targets").mkdir()
    (tmp / "elsewhere").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(EDGEPRUNE_TARGETS_DIR=str(tmp / "user-targets"), OMP_NUM_THREADS="1",
               PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return Installed(wheel, venv, tmp / "elsewhere", env)


def test_the_wheel_carries_the_package_data(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    assert {f"edgeprune/hardware_profiles/{p}.yaml" for p in PROFILES} <= names
    assert {"edgeprune/data/mnist/t10k-images-idx3-ubyte.gz", "edgeprune/data/mnist/t10k-labels-idx1-ubyte.gz",
            "device_agents/agent.py", "edgeprune/_resources.py"} <= names
    assert not any(n.startswith(("hardware_profiles/", "tests/")) for n in names)


def test_edgeprune_is_imported_from_the_wheel(installed):
    code = ("import device_agents.client, edgeprune; from edgeprune._resources import builtin_profiles_dir; "
            "print(edgeprune.__file__); print(device_agents.client.AGENT_FILE); print(builtin_profiles_dir())")
    package, agent, profiles = map(Path, installed.python(code).splitlines())
    for path in (package, agent, profiles):
        assert path.resolve().is_relative_to(installed.venv.resolve()), path
    assert agent.is_file() and sorted(p.stem for p in profiles.glob("*.yaml")) == PROFILES


def test_targets_list_shows_the_shipped_profiles(installed):
    listed = json.loads(installed.run("edgeprune", "targets", "list", "--json").stdout)
    names = [t["name"] for t in listed["targets"]]
    assert {"x86-ort", "emu-rpi4", "rpi4"} <= set(names)
    assert names == PROFILES
    shown = json.loads(installed.run("edgeprune", "targets", "show", "x86-ort", "--json").stdout)
    assert Path(shown["source_file"]).resolve().is_relative_to(installed.venv.resolve())


def test_models_lists_the_zoo(installed):
    from edgeprune.models import list_models

    listed = json.loads(installed.run("edgeprune", "models", "--json").stdout)
    assert [m["name"] for m in listed["models"]] == list(list_models())


def test_the_builtin_data_set_loads(installed):
    code = "from edgeprune.data import load_dataset; print(len(load_dataset('mnist', 'test')))"
    assert installed.python(code) == "1000"
