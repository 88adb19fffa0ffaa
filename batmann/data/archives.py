"""Archives: MD5 sums and safe, atomic zip extraction.

:func:`safe_extract_zip` refuses absolute paths, ``..`` components, links and other
non-regular members, members larger than a limit (by their header *and* by the bytes that
actually come out, so a lying header cannot inflate), duplicates, and a truncated or corrupt
archive. Everything is written into a temporary folder beside the target, checked, and only
then renamed into place, so a failure leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from batmann.errors import DataError
from batmann.utils.atomic import atomic_directory

#: Default limits: Omniglot's PNGs are below 5 KB, its archives below 10 MB.
MAX_MEMBER_BYTES = 16 * 2**20
MAX_TOTAL_BYTES = 2 * 2**30
MAX_MEMBERS = 200_000
_CHUNK = 1 << 16
#: Members skipped silently (metadata some zip tools add).
_IGNORED_PREFIXES = ("__MACOSX/",)


def md5_file(path: str | os.PathLike[str]) -> str:
    """Hex MD5 of a file."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ExtractedFiles:
    """What :func:`safe_extract_zip` wrote: relative paths (under the top folder) and SHA-256s."""

    files: list[str] = field(default_factory=list)
    sha256: dict[str, str] = field(default_factory=dict)
    total_bytes: int = 0


def _member_path(info: zipfile.ZipInfo, top: str | None, archive: Path) -> PurePosixPath | None:
    """The member's path relative to ``top``, or None to skip it; raises on an unsafe name."""
    name = info.filename
    if "\\" in name or "\x00" in name:
        raise DataError(f"archive {archive.name} has a member with an unsafe name: {name!r}")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"archive {archive.name} has an absolute member path: {name!r}")
    parts = PurePosixPath(name).parts
    if any(p == ".." for p in parts):
        raise DataError(f"archive {archive.name} has a member that escapes the target folder: {name!r}")
    if name.startswith(_IGNORED_PREFIXES):
        return None
    parts = tuple(p for p in parts if p not in ("", "."))
    if top is not None:
        if not parts or parts[0] != top:
            raise DataError(f"archive {archive.name} has a member outside its {top}/ folder: {name!r}")
        parts = parts[1:]
    return PurePosixPath(*parts) if parts else None


def _check_type(info: zipfile.ZipInfo, archive: Path) -> None:
    kind_bits = stat.S_IFMT(info.external_attr >> 16)  # 0 when the tool recorded no file type
    if kind_bits and kind_bits not in (stat.S_IFREG, stat.S_IFDIR):
        kind = "a link" if kind_bits == stat.S_IFLNK else "not a regular file"
        raise DataError(f"archive {archive.name} member {info.filename!r} is {kind}; refused")


def safe_extract_zip(archive: str | os.PathLike[str], target: str | os.PathLike[str], *,
                     top: str | None = None,
                     max_member_bytes: int = MAX_MEMBER_BYTES,
                     max_total_bytes: int = MAX_TOTAL_BYTES,
                     max_members: int = MAX_MEMBERS,
                     check: Callable[[Path, ExtractedFiles], None] | None = None) -> ExtractedFiles:
    """Extract ``archive`` into the new folder ``target`` (which must not exist), atomically.

    ``top``: the archive's single top folder (e.g. ``"images_background"``); its contents go
    straight into ``target`` and any member outside it is refused. ``check(tmp_folder, files)``
    runs before the rename and may raise to refuse the result. Raises :class:`DataError` for an
    unsafe, truncated or corrupt archive; nothing is left behind on any failure.
    """
    archive, target = Path(archive), Path(target)
    if target.exists():
        raise DataError(f"{target} already exists; delete it to extract {archive.name} again")
    try:
        zf = zipfile.ZipFile(archive)
    except FileNotFoundError:
        raise DataError(f"archive {archive} does not exist") from None
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DataError(f"archive {archive} is truncated or not a zip file ({_reason(exc)})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise DataError(f"archive {archive.name} has {len(infos)} members (more than {max_members}); refused")
        plan: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        seen: set[str] = set()
        declared = 0
        for info in infos:
            rel = _member_path(info, top, archive)
            _check_type(info, archive)
            if rel is None:
                continue
            key = rel.as_posix()
            if key in seen:
                raise DataError(f"archive {archive.name} has the member {info.filename!r} twice; refused")
            seen.add(key)
            if info.is_dir():
                plan.append((info, rel))
                continue
            if info.file_size > max_member_bytes:
                raise DataError(f"archive {archive.name} member {info.filename!r} is {info.file_size} bytes "
                                f"(more than {max_member_bytes}); refused")
            declared += info.file_size
            if declared > max_total_bytes:
                raise DataError(f"archive {archive.name} holds more than {max_total_bytes} bytes; refused")
            plan.append((info, rel))
        result = ExtractedFiles()
        with atomic_directory(target) as tmp:
            try:
                for info, rel in plan:
                    dest = tmp.joinpath(*rel.parts)
                    if info.is_dir():
                        dest.mkdir(parents=True, exist_ok=True)
                        continue
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    result.sha256[rel.as_posix()] = _copy_member(zf, info, dest, max_member_bytes, archive)
                    result.files.append(rel.as_posix())
                    result.total_bytes += info.file_size
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                raise DataError(f"archive {archive} is truncated or corrupt ({_reason(exc)})") from None
            if check is not None:
                check(tmp, result)
    return result


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, limit: int, archive: Path) -> str:
    """Stream one member to ``dest`` (never more than ``limit`` or its declared size); SHA-256."""
    digest = hashlib.sha256()
    written = 0
    with zf.open(info) as src, open(dest, "xb") as out:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > min(limit, info.file_size):
                raise DataError(f"archive {archive.name} member {info.filename!r} inflates beyond its "
                                "declared size; refused")
            digest.update(chunk)
            out.write(chunk)
    if written != info.file_size:
        raise DataError(f"archive {archive} is truncated or corrupt (member {info.filename!r} is short)")
    return digest.hexdigest()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_sha256sums(path: str | os.PathLike[str], prefix: str) -> dict[str, str]:
    """``{path relative to prefix: sha256}`` from a ``sha256sum``-style file, for lines under ``prefix``."""
    sums: dict[str, str] = {}
    pre = prefix.strip("/") + "/"
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            continue
        digest, name = parts
        name = name.lstrip("*")
        if name.startswith("./"):
            name = name[2:]
        if name.startswith(pre):
            sums[name[len(pre):]] = digest.lower()
    return sums


def compare_sha256(expected: dict[str, str], got: dict[str, str], what: str,
                   relevant: Iterable[str] | None = None) -> None:
    """Raise :class:`DataError` when a file's SHA-256 differs from ``expected`` (or one is missing)."""
    names = set(expected) if relevant is None else set(relevant)
    for name in sorted(names):
        if name in expected and got.get(name) != expected[name]:
            state = "is missing" if name not in got else "does not match its SHA-256 in SHA256SUMS.txt"
            raise DataError(f"{what}: {name} {state}")
