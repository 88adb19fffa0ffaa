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
# training runs in the tests stay on the eager kernels (compiling costs ~13 s on a cold
# machine); tests/test_fused.py switches the compiled ones on explicitly
os.environ.setdefault("BATMANN_COMPILE", "0")
# evaluations compute their features (the on-disk feature cache would carry them from one test,
# and one run, to the next); tests/test_feature_cache.py switches it on explicitly
os.environ.setdefault("BATMANN_FEATURE_CACHE", "0")
# two pytest-xdist workers share the machine's cores: each runs torch on one thread (and so do the
# processes its tests start), instead of two workers x all cores fighting over the same cores
if os.environ.get("PYTEST_XDIST_WORKER") and int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
if not os.environ.get("BATMANN_OMNIGLOT_SOURCE"):
    os.environ["BATMANN_OMNIGLOT_SOURCE"] = str((REPO.parent / "shared" / "data" / "omniglot").resolve())


def _omniglot_available() -> bool:
    from batmann.data import is_fetched
    from batmann.data.cache import cache_dir

    return is_fetched() or cache_dir(32).is_dir() or Path(os.environ["BATMANN_OMNIGLOT_SOURCE"]).is_dir()


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs two workers), the controller fetches Omniglot and
    builds its cache once before the workers start, so that they never build it side by side."""
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        return
    if _omniglot_available():
        from batmann.data import load_image_cache

        load_image_cache(32, source=Path(os.environ["BATMANN_OMNIGLOT_SOURCE"]))


@pytest.fixture(scope="session")
def omniglot_cache():
    """The 32x32 Omniglot :class:`batmann.data.ImageCache` (fetched and built on first use)."""
    from batmann.data import load_image_cache

    source = Path(os.environ["BATMANN_OMNIGLOT_SOURCE"])
    if not _omniglot_available():
        pytest.skip(f"no Omniglot: {source} does not exist and nothing is fetched into $BATMANN_HOME")
    return load_image_cache(32, source=source)


@pytest.fixture(scope="session")
def omniglot_home(omniglot_cache) -> Path:
    """``$BATMANN_HOME`` holding the fetched Omniglot and its 32x32 cache."""
    return Path(os.environ["BATMANN_HOME"])


def _train_small_run(omniglot_cache, run_dir: Path):
    import batmann.train as T
    from batmann.config import EpisodeOptions, ModelConfig, TrainConfig

    cfg = TrainConfig(
        model=ModelConfig(controller="fp", feature_dim=128),
        episodes=EpisodeOptions(class_num=5, num_shot=1, pool_query_train=4, pool_val_train=2,
                                batch_size_train=4, val_num_train=2, pool_query_test=4, batch_size_test=2),
        train_episode=60, log_interval=10, val_episode=0, val_interval=60, test_episode=100,
        checkpoint_interval=60, learning_rate=1e-3, precision="fp32", seed=3, device="cpu",
    )
    losses: list[float] = []
    orig = T.train_step

    def spy(*a, **k):
        loss, acc = orig(*a, **k)
        losses.append(loss.item())
        return loss, acc

    T.train_step = spy
    try:
        result = T.train(cfg, run_dir, progress=False, cache=omniglot_cache)
    finally:
        T.train_step = orig
    return result, losses


@pytest.fixture(scope="session")
def trained_run(omniglot_cache, tmp_path_factory):
    """A small fp controller trained for 60 5-way 1-shot episodes (about 50 s on 2 AVX2 cores), shared by tests.

    Returns ``(TrainResult, losses)``: the run (folder with best.safetensors, tested on 100
    episodes) and the training loss of every episode. Under pytest-xdist the first worker to ask
    trains it (the others wait on a file lock) and each worker gets its own copy of the folder.
    """
    import dataclasses
    import pickle
    import shutil

    from filelock import FileLock

    mine = tmp_path_factory.mktemp("trained_run")
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return _train_small_run(omniglot_cache, mine)
    shared = tmp_path_factory.getbasetemp().parent / "trained_run"
    record = shared.with_suffix(".pickle")
    with FileLock(str(shared) + ".lock"):
        if not record.is_file():
            shared.mkdir(exist_ok=True)
            result, losses = _train_small_run(omniglot_cache, shared)
            record.write_bytes(pickle.dumps((result, losses)))
        result, losses = pickle.loads(record.read_bytes())
    shutil.copytree(shared, mine, dirs_exist_ok=True)
    return dataclasses.replace(result, run_dir=mine), losses


@pytest.fixture
def one_thread():
    """Run a test single-threaded: small tensor ops on 2 shared cores stall badly with torch's
    2 OpenMP threads whenever another process holds a core (100x seen here)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_addoption(parser):
    parser.addoption("--reverse", action="store_true", help="run the collected tests in reverse order "
                     "(to check that no test depends on another having run first)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--reverse"):
        items.reverse()
