"""Channel specs as data: JSON files mapping layer names to output channels."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

from edgeprune._io import atomic_write_bytes
from edgeprune.errors import BadInputError
from edgeprune.pruning.surgery import ChannelSpec


def load_spec(path: Union[str, Path]) -> ChannelSpec:
    """Read a channel spec JSON ({"layer.name": channels, ...} or {"channels": {...}})."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BadInputError(f"channel spec file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"channel spec {path} is not valid JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("channels"), dict):
        data = data["channels"]
    if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
        raise BadInputError(f"channel spec {path} must map layer names to integer channel counts")
    return data


def save_spec(path: Union[str, Path], spec: ChannelSpec, arch: str = "") -> None:
    """Write a channel spec JSON atomically."""
    payload = {"arch": arch, "channels": spec}
    atomic_write_bytes(path, (json.dumps(payload, indent=2) + "\n").encode())
