"""Per-episode logs of long rows: durable appends, exact read-back, cut lines dropped."""

from __future__ import annotations

import pytest

from batmann.errors import ConfigError
from batmann.experiments.episode_log import EpisodeLog


def test_values_read_back_as_the_same_floats(tmp_path):
    path = tmp_path / "logs" / "S3@0.1.csv"
    log = EpisodeLog(path, chip=True)
    values = [(0.949999988079071, 0.9300000071525574), (1.0, 0.0), (1 / 3, 2 / 3)]
    for v in values:
        log.append(*v)
    again = EpisodeLog(path, chip=True)
    assert len(again) == 3 and again.values == values
    assert again.column(1, 2) == [0.9300000071525574, 0.0]
    assert path.read_text().splitlines()[0] == "episode,accuracy,crossbar_accuracy"
    with pytest.raises(ValueError, match="holds 3 episodes, not 4"):
        again.column(0, 4)
    with pytest.raises(ValueError, match="takes 2 values per episode"):
        again.append(0.5)


def test_a_line_cut_short_is_dropped_and_the_next_append_is_clean(tmp_path):
    path = tmp_path / "S9@0.2.csv"
    log = EpisodeLog(path)
    log.append(0.5)
    log.append(0.75)
    with path.open("a") as f:
        f.write("2,0.12")  # an interruption inside the third line: no newline yet
    resumed = EpisodeLog(path)
    assert resumed.values == [(0.5,), (0.75,)]
    resumed.append(0.25)
    assert path.read_text() == "episode,accuracy\n0,0.5\n1,0.75\n2,0.25\n"
    # a header cut short: nothing was recorded, the file starts again
    path.write_text("epis")
    assert len(EpisodeLog(path)) == 0 and not path.exists()


def test_a_malformed_log_is_a_one_line_error_not_skipped(tmp_path):
    path = tmp_path / "S4@0.3.csv"
    path.write_text("episode,accuracy\n0,0.5\n2,0.5\n")
    with pytest.raises(ConfigError, match="line 3 is not episode 1"):
        EpisodeLog(path)
    path.write_text("episode,accuracy\n0,0.5\n")
    with pytest.raises(ConfigError, match="not an episode log with columns episode,accuracy,crossbar_accuracy"):
        EpisodeLog(path, chip=True)


def test_in_memory_log_writes_nothing(tmp_path):
    log = EpisodeLog(None)
    log.append(0.5)
    assert log.values == [(0.5,)] and list(tmp_path.iterdir()) == []
