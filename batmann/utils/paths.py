"""Where batmann keeps its data: ``$BATMANN_HOME`` (default ``~/.cache/batmann``)."""

from __future__ import annotations

import os
from pathlib import Path


def batmann_home() -> Path:
    """The data folder: ``$BATMANN_HOME`` or ``~/.cache/batmann``."""
    env = os.environ.get("BATMANN_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "batmann"
