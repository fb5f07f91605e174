"""What pyproject.toml cannot say: the top-level hardware_profiles/ ships inside the package.

The profiles stay at the top of the repository, where users read and copy them; the wheel
installs them as edgeprune/hardware_profiles/ (a package_dir mapping, which pyproject.toml
cannot combine with package discovery). edgeprune._resources finds them either way.
"""
from setuptools import find_namespace_packages, setup

setup(
    packages=find_namespace_packages(include=["edgeprune*", "device_agents*"]) + ["edgeprune.hardware_profiles"],
    package_dir={"edgeprune.hardware_profiles": "hardware_profiles"},
)
