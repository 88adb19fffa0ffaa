"""User-facing errors: the CLI prints them as one line and exits non-zero."""


class BatmannError(Exception):
    """Base class for errors caused by bad input (options, files, data), not by bugs."""


class ConfigError(BatmannError, ValueError):
    """An option or a combination of options is out of range."""


class DataError(BatmannError):
    """A data set, archive or cache is missing, corrupt or inconsistent."""


class CheckpointError(BatmannError):
    """A checkpoint is missing, truncated, incomplete or for another architecture."""
