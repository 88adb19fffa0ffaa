"""Safe, atomic zip extraction: unsafe or broken archives are refused and leave nothing behind."""

from __future__ import annotations

import stat
import zipfile

import pytest

from batmann.data.archives import md5_file, safe_extract_zip
from batmann.errors import DataError
from data_helpers import leftovers, make_omniglot_zip, png_bytes


def _zip(path, members):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for item in members:
            if isinstance(item, zipfile.ZipInfo):
                zf.writestr(item, b"target")
            else:
                name, data = item
                zf.writestr(name, data)
    return path


def _refused(tmp_path, archive, match, **kw):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    with pytest.raises(DataError, match=match):
        safe_extract_zip(archive, out / "images_background", top="images_background", **kw)
    assert leftovers(out) == []
    assert not (tmp_path / "evil.png").exists()


def test_good_archive_extracts_atomically(tmp_path):
    archive = tmp_path / "images_background.zip"
    counts = make_omniglot_zip(archive, "background")
    got = safe_extract_zip(archive, tmp_path / "out" / "bg", top="images_background")
    assert len(got.files) == counts.images == 12
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bg"]  # no temporary folder left
    assert (tmp_path / "out" / "bg" / got.files[0]).is_file()
    with pytest.raises(DataError, match="already exists"):
        safe_extract_zip(archive, tmp_path / "out" / "bg", top="images_background")
    assert len(md5_file(archive)) == 32


@pytest.mark.parametrize("name", ["images_background/../../evil.png", "../evil.png",
                                  "images_background/a/../../../evil.png"])
def test_zip_slip_refused(tmp_path, name):
    archive = _zip(tmp_path / "slip.zip", [("images_background/ok.png", png_bytes(1)), (name, png_bytes(2))])
    _refused(tmp_path, archive, "escapes the target folder")


def test_absolute_path_refused(tmp_path):
    archive = _zip(tmp_path / "abs.zip", [("/tmp/evil.png", png_bytes(1))])
    _refused(tmp_path, archive, "absolute member path")


def test_link_refused(tmp_path):
    info = zipfile.ZipInfo("images_background/link.png")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = _zip(tmp_path / "link.zip", [("images_background/ok.png", png_bytes(1)), info])
    _refused(tmp_path, archive, "is a link")


def test_oversized_member_refused(tmp_path):
    archive = _zip(tmp_path / "big.zip", [("images_background/big.png", b"\0" * 5000)])
    _refused(tmp_path, archive, "more than 1000", max_member_bytes=1000)


def test_member_outside_top_folder_refused(tmp_path):
    archive = _zip(tmp_path / "other.zip", [("images_background/a.png", b"x"), ("elsewhere/b.png", b"y")])
    _refused(tmp_path, archive, "outside its images_background/ folder")


def test_truncated_archive_refused(tmp_path):
    archive = tmp_path / "images_background.zip"
    make_omniglot_zip(archive, "background")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    _refused(tmp_path, archive, "truncated")


def test_corrupt_member_refused_mid_extraction(tmp_path):
    """A damaged member fails after other members were written: the partial folder is removed."""
    payload = bytes(range(256)) * 64
    archive = _zip(tmp_path / "bad.zip", [("images_background/a.bin", payload), ("images_background/b.bin", payload)])
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        second = zf.infolist()[1]
    pos = second.header_offset + 30 + len(second.filename) + 5  # inside b.bin's compressed bytes
    data[pos] ^= 0xFF
    archive.write_bytes(bytes(data))
    _refused(tmp_path, archive, "truncated or corrupt")


def test_failing_check_leaves_nothing(tmp_path):
    archive = tmp_path / "images_background.zip"
    make_omniglot_zip(archive, "background")

    def check(folder, files):
        raise DataError("wrong counts")

    _refused(tmp_path, archive, "wrong counts", check=check)
