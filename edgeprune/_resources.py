"""Files that ship with edgeprune, found the same way from a wheel, an editable install or a checkout."""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def builtin_profiles_dir() -> Path:
    """The folder of the shipped hardware profiles (*.yaml).

    A wheel installs them inside the package, as edgeprune/hardware_profiles/ (setup.py maps
    them there); an editable install or a source checkout keeps them in the top-level
    hardware_profiles/ folder beside the package.
    """
    package = Path(str(resources.files("edgeprune")))
    installed = package / "hardware_profiles"
    return installed if installed.is_dir() else package.parent / "hardware_profiles"
