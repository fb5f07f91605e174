"""`import edgeprune` stays light: no TensorFlow, onnx2tf, paramiko or stable-baselines3."""
import json
import subprocess
import sys

HEAVY = ["tensorflow", "onnx2tf", "paramiko", "stable_baselines3", "torchvision"]


def _modules_after(code: str) -> set:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_edgeprune_is_light():
    loaded = _modules_after("import edgeprune")
    assert not [m for m in HEAVY if m in loaded]
    assert "torch" not in loaded  # nothing is imported until a name is used


def test_core_api_does_not_pull_heavy_packages():
    loaded = _modules_after(
        "import edgeprune, edgeprune.models, edgeprune.pruning, edgeprune.data, edgeprune.train, edgeprune.cli")
    assert not [m for m in HEAVY if m in loaded]


def test_lazy_names_resolve():
    import edgeprune
    assert callable(edgeprune.create_model) and callable(edgeprune.prune)


def test_missing_optional_package_names_the_extra():
    from edgeprune._optional import require
    from edgeprune.errors import MissingDependencyError
    import pytest
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgeprune\[all\]'"):
        require("edgeprune_no_such_package")
