"""Studies: non-ideality grids over many chips, run locally or on Dask, recorded in SQLite.

- :mod:`batmann.study.spec`: the study file (:func:`load_study`, :class:`Study`);
- :mod:`batmann.study.run`: :func:`run_study` (resumable; one transaction per cell);
- :mod:`batmann.study.store`: the SQLite results store (:class:`StudyStore`);
- :mod:`batmann.study.work`: the tasks a worker runs (feature chunks, cells);
- :mod:`batmann.study.executors`: in-process, local processes, Dask;
- :mod:`batmann.study.stats`: paired differences and chip-level aggregation;
- :mod:`batmann.study.tables`: tidy tables (one row per cell or per configuration), export;
- :mod:`batmann.study.plot`: accuracy against a parameter, heat maps.
"""

from batmann.study.spec import Study, load_study  # noqa: F401
from batmann.study.store import StudyStore  # noqa: F401


def run_study(*args, **kwargs):
    """See :func:`batmann.study.run.run_study`."""
    from batmann.study.run import run_study as _run

    return _run(*args, **kwargs)
