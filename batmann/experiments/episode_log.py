"""Per-episode results of one row, appended as they are computed, so that a long evaluation
(an FGSM row: 1000 episodes, an hour or more on one core) resumes at the episode it reached.

One CSV file per row, ``<folder>/<row key>.csv``, columns ``episode``, ``accuracy`` and, for
rows on a chip, ``crossbar_accuracy`` (fractions in [0, 1], written with ``repr`` so that they
read back as the same floats and a resumed row has the bits of an uninterrupted one). Each
episode is one line, flushed and synced before the next episode starts. A last line cut short
by an interruption (no newline yet) is dropped when the file is read again; any other
malformed line is an error, not silently skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

from batmann.errors import ConfigError

#: the header of a row without, and with, a chip
HEADER = ("episode", "accuracy")
CHIP_HEADER = ("episode", "accuracy", "crossbar_accuracy")


class EpisodeLog:
    """The per-episode accuracies of one row in ``path`` (created on the first :meth:`append`;
    ``None``: kept in memory only).

    ``chip``: whether the row also has a crossbar accuracy per episode."""

    def __init__(self, path: str | os.PathLike[str] | None, chip: bool = False) -> None:
        self.path = None if path is None else Path(path)
        self.header = CHIP_HEADER if chip else HEADER
        #: the values read so far, one tuple ``(accuracy[, crossbar_accuracy])`` per episode
        self.values: list[tuple[float, ...]] = self._read()

    def __len__(self) -> int:
        """The number of episodes recorded (episodes ``0 .. len - 1``)."""
        return len(self.values)

    def _read(self) -> list[tuple[float, ...]]:
        if self.path is None or not self.path.exists():
            return []
        text = self.path.read_text()
        head = ",".join(self.header)
        *lines, rest = text.split("\n")  # ``rest``: what follows the last newline, a cut line or ""
        if not lines:  # even the header was cut short: nothing was recorded
            if not head.startswith(rest):
                raise ConfigError(f"{self.path} is not an episode log with columns {head} (it holds {rest[:40]!r})")
            self.path.unlink()
            return []
        if lines[0] != head:
            raise ConfigError(f"{self.path} is not an episode log with columns {head} "
                              f"(its first line: {lines[0]!r})")
        values, good = [], len(lines[0]) + 1
        for line in lines[1:]:
            fields = line.split(",")
            try:
                if len(fields) != len(self.header) or int(fields[0]) != len(values):
                    raise ValueError
                row = tuple(float(x) for x in fields[1:])
            except ValueError:
                raise ConfigError(f"{self.path}: line {len(values) + 2} is not episode {len(values)} "
                                  f"with {len(self.header) - 1} values ({line[:60]!r})") from None
            values.append(row)
            good += len(line) + 1
        if good < len(text):  # drop the line an interruption cut short, so the next append starts clean
            with self.path.open("r+") as f:
                f.truncate(good)
        return values

    def append(self, *accuracy: float) -> None:
        """Record the next episode's accuracy (and crossbar accuracy, for a chip row), durably."""
        if len(accuracy) != len(self.header) - 1:
            raise ValueError(f"{self.path} takes {len(self.header) - 1} values per episode, got {len(accuracy)}")
        if self.path is None:
            self.values.append(tuple(float(a) for a in accuracy))
            return
        new = not self.path.exists()
        if new:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            if new:
                f.write(",".join(self.header) + "\n")
            f.write(",".join([str(len(self.values)), *(repr(float(a)) for a in accuracy)]) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.values.append(tuple(float(a) for a in accuracy))

    def column(self, i: int, episodes: int) -> list[float]:
        """Value ``i`` (0: accuracy, 1: crossbar accuracy) of episodes ``0 .. episodes - 1``."""
        if len(self.values) < episodes:
            raise ValueError(f"{self.path} holds {len(self.values)} episodes, not {episodes}")
        return [v[i] for v in self.values[:episodes]]
