"""Shared fixtures.

Omniglot for the tests comes from ``$BATMANN_OMNIGLOT_SOURCE`` (default
``<repo>/../shared/data/omniglot``) and is fetched and preprocessed once into ``$BATMANN_HOME``
(default ``<repo>/.test-home``, reused across runs). Both defaults are put into ``os.environ``
so that subprocesses started by tests find the same data.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if not os.environ.get("BATMANN_HOME"):
    os.environ["BATMANN_HOME"] = str(REPO / ".test-home")
if not os.environ.get("BATMANN_OMNIGLOT_SOURCE"):
    os.environ["BATMANN_OMNIGLOT_SOURCE"] = str((REPO.parent / "shared" / "data" / "omniglot").resolve())


@pytest.fixture(scope="session")
def omniglot_cache():
    """The 32x32 Omniglot :class:`batmann.data.ImageCache` (fetched and built on first use)."""
    from batmann.data import is_fetched, load_image_cache
    from batmann.data.cache import cache_dir

    source = Path(os.environ["BATMANN_OMNIGLOT_SOURCE"])
    if not is_fetched() and not cache_dir(32).is_dir() and not source.is_dir():
        pytest.skip(f"no Omniglot: {source} does not exist and nothing is fetched into $BATMANN_HOME")
    return load_image_cache(32, source=source)


@pytest.fixture(scope="session")
def omniglot_home(omniglot_cache) -> Path:
    """``$BATMANN_HOME`` holding the fetched Omniglot and its 32x32 cache."""
    return Path(os.environ["BATMANN_HOME"])
