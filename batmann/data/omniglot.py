"""Obtain Omniglot: from a local folder of archives, or by download with MD5 checks.

Layout under ``$BATMANN_HOME`` (default ``~/.cache/batmann``)::

    omniglot/images_background/ALPHABET/characterNN/NNNN_DD.png   (30 / 964 / 19,280)
    omniglot/images_evaluation/...                                 (20 / 659 / 13,180)
    omniglot/cache/32px/...                                        (see batmann.data.cache)

Where the archives come from, first match wins: the ``source`` argument (``--source DIR``),
the environment variable ``BATMANN_OMNIGLOT_SOURCE`` (a folder holding
``images_background.zip`` and ``images_evaluation.zip``), else the official URLs
(``BATMANN_OMNIGLOT_URL`` overrides the base URL, ``BATMANN_OMNIGLOT_MD5`` the sums, as
``images_background.zip=MD5,images_evaluation.zip=MD5``). A download whose MD5 differs from
the expected one is deleted and reported. A local folder's archives are not checked against the
official MD5s (re-packed archives differ in bytes); when the folder holds a ``SHA256SUMS.txt``
every extracted PNG is checked against it instead. Every extraction is safe and atomic
(:func:`batmann.data.archives.safe_extract_zip`) and must give the expected counts. An
extracted set carries a marker file; a set that has one is never fetched again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Mapping

from batmann.data.archives import ExtractedFiles, compare_sha256, read_sha256sums, safe_extract_zip
from batmann.errors import DataError
from batmann.utils.paths import batmann_home

SETS: tuple[str, ...] = ("background", "evaluation")
OFFICIAL_BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
OFFICIAL_MD5: dict[str, str] = {
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
}
ENV_SOURCE = "BATMANN_OMNIGLOT_SOURCE"
ENV_URL = "BATMANN_OMNIGLOT_URL"
ENV_MD5 = "BATMANN_OMNIGLOT_MD5"
MARKER = ".batmann-omniglot.json"
SUMS_FILE = "SHA256SUMS.txt"
MAX_DOWNLOAD_BYTES = 256 * 2**20

Log = Callable[[str], None]


@dataclass(frozen=True)
class Counts:
    """How many alphabets, characters and images a set holds."""

    alphabets: int
    characters: int
    images: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.alphabets} alphabets / {self.characters} characters / {self.images} images"


EXPECTED_COUNTS: dict[str, Counts] = {
    "background": Counts(30, 964, 19_280),
    "evaluation": Counts(20, 659, 13_180),
}


def archive_name(which: str) -> str:
    """``images_background.zip`` / ``images_evaluation.zip``."""
    return f"images_{which}.zip"


def omniglot_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """``HOME/omniglot`` (``HOME`` defaults to :func:`batmann_home`)."""
    return (Path(home).expanduser() if home is not None else batmann_home()) / "omniglot"


def set_dir(which: str, home: str | os.PathLike[str] | None = None) -> Path:
    """The extracted folder of one set, e.g. ``HOME/omniglot/images_background``."""
    return omniglot_dir(home) / f"images_{which}"


def count_files(paths: list[str]) -> Counts:
    """Counts from relative paths ``ALPHABET/CHARACTER/FILE.png`` (other paths are ignored)."""
    alphabets, characters, images = set(), set(), 0
    for p in paths:
        parts = PurePosixPath(p).parts
        if len(parts) == 3 and parts[2].lower().endswith(".png") and not parts[2].startswith("."):
            alphabets.add(parts[0])
            characters.add(parts[:2])
            images += 1
    return Counts(len(alphabets), len(characters), images)


def list_images(folder: Path) -> list[str]:
    """Relative paths of the PNGs of an extracted set, sorted (alphabet, character, file)."""
    out = []
    for alphabet in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for character in sorted(p for p in alphabet.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for image in sorted(character.iterdir()):
                if image.suffix.lower() == ".png" and not image.name.startswith(".") and image.is_file():
                    out.append(f"{alphabet.name}/{character.name}/{image.name}")
    return out


def read_marker(folder: Path) -> dict | None:
    """The marker of a complete extraction, or None."""
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "counts" in data else None


def is_fetched(home: str | os.PathLike[str] | None = None) -> bool:
    """Whether both sets are extracted (have their markers) under ``home``."""
    return all(read_marker(set_dir(w, home)) is not None for w in SETS)


def marker_counts(which: str, home: str | os.PathLike[str] | None = None) -> Counts:
    """The counts recorded when ``which`` was extracted; :class:`DataError` if it is not."""
    marker = read_marker(set_dir(which, home))
    if marker is None:
        raise DataError(f"Omniglot {which} set is not fetched into {omniglot_dir(home)}; "
                        "run `batmann data fetch` (with --source DIR for local archives)")
    return Counts(**marker["counts"])


def resolve_source(source: str | os.PathLike[str] | None) -> tuple[Path | None, str]:
    """The local archive folder to use (argument, then ``$BATMANN_OMNIGLOT_SOURCE``), if any."""
    if source is not None and str(source) != "":
        return Path(source).expanduser(), "--source"
    env = os.environ.get(ENV_SOURCE, "")
    if env:
        return Path(env).expanduser(), ENV_SOURCE
    return None, ""


def _expected_md5(md5: Mapping[str, str] | None) -> dict[str, str]:
    sums = dict(OFFICIAL_MD5)
    env = os.environ.get(ENV_MD5, "")
    if env:
        for item in env.split(","):
            if "=" not in item:
                raise DataError(f"{ENV_MD5} must look like images_background.zip=MD5,images_evaluation.zip=MD5")
            key, value = (s.strip() for s in item.split("=", 1))
            sums[key if key.endswith(".zip") else archive_name(key)] = value.lower()
    for key, value in (md5 or {}).items():
        sums[key if key.endswith(".zip") else archive_name(key)] = value.lower()
    return sums


def download(url: str, folder: Path, expected_md5: str, *, timeout: float = 60.0,
             max_bytes: int = MAX_DOWNLOAD_BYTES) -> Path:
    """Download ``url`` into a new temporary folder inside ``folder`` and check its MD5.

    Returns the file's path, named like the URL's last component; the caller deletes its folder
    (:func:`discard_download`). On a failed download or an MD5 mismatch the temporary folder is
    deleted and :class:`DataError` is raised.
    """
    folder.mkdir(parents=True, exist_ok=True)
    name = url.rstrip("/").rsplit("/", 1)[-1] or "download"
    tmp_dir = Path(tempfile.mkdtemp(prefix=".download-", dir=folder))
    path = tmp_dir / name
    digest = hashlib.md5()
    size = 0
    try:
        with open(path, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    while chunk := resp.read(1 << 20):
                        size += len(chunk)
                        if size > max_bytes:
                            raise DataError(f"download of {url} exceeds {max_bytes} bytes; refused")
                        digest.update(chunk)
                        out.write(chunk)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = str(getattr(exc, "reason", None) or exc).strip()
                reason = reason.splitlines()[0] if reason else type(exc).__name__
                raise DataError(f"cannot download {url}: {reason}") from None
        got = digest.hexdigest()
        if got != expected_md5.lower():
            raise DataError(f"MD5 mismatch for {name} downloaded from {url}: expected {expected_md5}, "
                            f"got {got}; the download was deleted")
    except BaseException:
        discard_download(path)
        raise
    return path


def discard_download(path: Path) -> None:
    """Delete a file made by :func:`download` and its temporary folder."""
    shutil.rmtree(path.parent, ignore_errors=True)


def _extract_set(archive: Path, which: str, home: str | os.PathLike[str] | None, origin: str,
                 md5: str | None, expected: Counts | None, sums: dict[str, str] | None) -> Counts:
    target = set_dir(which, home)
    found: dict[str, Counts] = {}

    def check(tmp: Path, files: ExtractedFiles) -> None:
        counts = count_files(files.files)
        if expected is not None and counts != expected:
            raise DataError(f"{archive.name} holds {counts}; expected {expected} "
                            "(an incomplete or wrong archive); nothing was kept")
        if sums:
            compare_sha256(sums, files.sha256, f"{archive.name}", relevant=files.files)
            missing = sorted(set(sums) - set(files.sha256))
            if missing:
                raise DataError(f"{archive.name} lacks {missing[0]}, which SHA256SUMS.txt lists")
        found["counts"] = counts
        marker = {"set": which, "archive": archive.name, "origin": origin, "md5": md5,
                  "counts": counts.as_dict(), "checked_sha256": bool(sums),
                  "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")

    try:
        safe_extract_zip(archive, target, top=f"images_{which}", check=check)
    except OSError as exc:
        # another process may have finished the same extraction first
        marker = read_marker(target)
        if marker is not None:
            return Counts(**marker["counts"])
        raise DataError(f"cannot extract {archive.name} into {target}: {exc}") from None
    return found["counts"]


def fetch_omniglot(home: str | os.PathLike[str] | None = None, source: str | os.PathLike[str] | None = None,
                   *, base_url: str | None = None, md5: Mapping[str, str] | None = None,
                   expected: Mapping[str, Counts] | None = None, timeout: float = 60.0,
                   log: Log | None = None) -> dict[str, dict]:
    """Make sure both Omniglot sets are extracted under ``home``; a no-op when they are.

    ``source``: a folder holding the two archives (default ``$BATMANN_OMNIGLOT_SOURCE``; without
    either the archives are downloaded from ``base_url``, default ``$BATMANN_OMNIGLOT_URL`` or the
    official URL, and checked against ``md5``, default the official sums). ``expected``: counts
    per set (default :data:`EXPECTED_COUNTS`). Returns, per set, ``{"status": "present" |
    "extracted", "path", "counts", "origin"}``. Raises :class:`DataError` on any failure, leaving
    nothing behind.
    """
    say = log or (lambda _msg: None)
    expected = dict(EXPECTED_COUNTS if expected is None else expected)
    report: dict[str, dict] = {}
    root = omniglot_dir(home)
    for which in SETS:
        target = set_dir(which, home)
        marker = read_marker(target)
        if marker is not None:
            report[which] = {"status": "present", "path": str(target), "counts": Counts(**marker["counts"]),
                             "origin": marker.get("origin", "")}
            continue
        if target.exists():
            raise DataError(f"{target} exists but is not a complete extraction; delete it and fetch again")
        name = archive_name(which)
        folder, how = resolve_source(source)
        if folder is not None:
            if not folder.is_dir():
                raise DataError(f"Omniglot source folder {folder} (from {how}) does not exist")
            archive = folder / name
            if not archive.is_file():
                raise DataError(f"Omniglot source folder {folder} (from {how}) has no {name}")
            sums_path = folder / SUMS_FILE
            sums = read_sha256sums(sums_path, f"images_{which}") if sums_path.is_file() else None
            say(f"{which}: extracting {archive}" + (" (checking SHA256SUMS.txt)" if sums else ""))
            counts = _extract_set(archive, which, home, str(archive), None, expected.get(which), sums)
            origin = str(archive)
        else:
            url = f"{(base_url or os.environ.get(ENV_URL) or OFFICIAL_BASE_URL).rstrip('/')}/{name}"
            want = _expected_md5(md5).get(name)
            if not want:
                raise DataError(f"no expected MD5 for {name}")
            say(f"{which}: downloading {url}")
            tmp = download(url, root, want, timeout=timeout)
            try:
                counts = _extract_set(tmp, which, home, url, want, expected.get(which), None)
            finally:
                discard_download(tmp)
            origin = url
        say(f"{which}: extracted {counts} into {target}")
        report[which] = {"status": "extracted", "path": str(target), "counts": counts, "origin": origin}
    return report
