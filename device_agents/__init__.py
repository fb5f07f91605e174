"""Device agents: the on-device agent (agent.py) and the transports that reach it.

Transports are registered by name and imported lazily, so `import device_agents` pulls in
neither paramiko nor anything else heavy.
"""
from __future__ import annotations

import importlib
from typing import Any

# transport name -> "module:class"
TRANSPORTS = {
    "local": "device_agents.local:LocalTransport",
    "ssh": "device_agents.ssh:SSHTransport",
    "adb": "device_agents.adb:ADBTransport",
}


def make_transport(kind: str, name: str, **options: Any) -> Any:
    """A Transport instance of the registered `kind` for target `name`."""
    if kind not in TRANSPORTS:
        raise ValueError(f"unknown transport {kind!r}; one of {sorted(TRANSPORTS)}")
    module, cls = TRANSPORTS[kind].split(":")
    return getattr(importlib.import_module(module), cls)(name, **options)
