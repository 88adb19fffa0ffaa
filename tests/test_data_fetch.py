"""Fetching Omniglot: from a folder, from $BATMANN_OMNIGLOT_SOURCE, or by download (MD5-checked).

The download tests serve tiny archives built here from an HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading

import numpy as np
import pytest

from batmann.cli import main
from batmann.data import fetch_omniglot, is_fetched, load_image_cache, load_image_file, omniglot_dir
from batmann.data.omniglot import ENV_MD5, ENV_SOURCE, ENV_URL, MARKER
from batmann.errors import DataError
from data_helpers import leftovers, make_source


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        type(self).requests.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """(folder served, base URL, list of requested paths)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = type("Handler", (_Handler,), {"requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv(ENV_SOURCE, raising=False)
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}", handler.requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_good_archives_then_noop(tmp_path, server):
    root, url, requests = server
    expected = make_source(root)
    md5 = {p.name: _md5(p) for p in root.glob("*.zip")}
    home = tmp_path / "home"
    report = fetch_omniglot(home, base_url=url, md5=md5, expected=expected)
    assert {w: r["status"] for w, r in report.items()} == {"background": "extracted", "evaluation": "extracted"}
    assert report["background"]["counts"] == expected["background"]
    assert sorted(requests) == ["/images_background.zip", "/images_evaluation.zip"]
    assert is_fetched(home)
    assert sorted(p.name for p in omniglot_dir(home).iterdir()) == ["images_background", "images_evaluation"]
    assert (omniglot_dir(home) / "images_background" / MARKER).is_file()
    again = fetch_omniglot(home, base_url=url, md5=md5, expected=expected)
    assert {r["status"] for r in again.values()} == {"present"}
    assert len(requests) == 2  # nothing downloaded the second time


def test_download_md5_mismatch_deleted_and_reported(tmp_path, server):
    root, url, _ = server
    expected = make_source(root)
    md5 = {p.name: _md5(p) for p in root.glob("*.zip")}
    archive = root / "images_background.zip"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF  # corrupted in transit
    archive.write_bytes(bytes(data))
    home = tmp_path / "home"
    with pytest.raises(DataError, match="MD5 mismatch for images_background.zip.*deleted"):
        fetch_omniglot(home, base_url=url, md5=md5, expected=expected)
    assert leftovers(omniglot_dir(home)) == []


def test_download_truncated_archive_refused(tmp_path, server):
    """A truncated archive whose MD5 was (wrongly) published passes the MD5 but not extraction."""
    root, url, _ = server
    expected = make_source(root)
    archive = root / "images_background.zip"
    archive.write_bytes(archive.read_bytes()[:-200])
    md5 = {p.name: _md5(p) for p in root.glob("*.zip")}
    home = tmp_path / "home"
    with pytest.raises(DataError, match="truncated"):
        fetch_omniglot(home, base_url=url, md5=md5, expected=expected)
    assert leftovers(omniglot_dir(home)) == []


def test_download_http_error_reported(tmp_path, server):
    _, url, _ = server
    home = tmp_path / "home"
    with pytest.raises(DataError, match="cannot download .*images_background.zip"):
        fetch_omniglot(home, base_url=url, md5={"background": "0" * 32})
    assert leftovers(omniglot_dir(home)) == []


def test_cli_download_md5_mismatch_from_env(tmp_path, server, monkeypatch, capsys):
    """The CLI path with the URL and sums taken from the environment: one line, exit 2."""
    root, url, _ = server
    make_source(root)
    monkeypatch.setenv(ENV_URL, url)
    monkeypatch.setenv(ENV_MD5, "images_background.zip=" + "0" * 32 + ",images_evaluation.zip=" + "1" * 32)
    home = tmp_path / "home"
    assert main(["data", "fetch", "--home", str(home)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("batmann data: error: MD5 mismatch for images_background.zip")
    assert leftovers(omniglot_dir(home)) == []


def test_fetch_from_source_folder_and_env(tmp_path, monkeypatch):
    src = tmp_path / "src"
    expected = make_source(src)
    home = tmp_path / "home"
    report = fetch_omniglot(home, src, expected=expected)
    assert {r["status"] for r in report.values()} == {"extracted"}
    monkeypatch.setenv(ENV_SOURCE, str(src))
    home2 = tmp_path / "home2"
    report = fetch_omniglot(home2, expected=expected)
    assert report["evaluation"]["origin"] == str(src / "images_evaluation.zip")


def test_source_with_wrong_counts_refused(tmp_path):
    src = tmp_path / "src"
    make_source(src)
    home = tmp_path / "home"
    with pytest.raises(DataError, match="expected 30 alphabets / 964 characters / 19280 images"):
        fetch_omniglot(home, src)  # the real counts: a tiny archive is incomplete
    assert leftovers(omniglot_dir(home)) == []


def test_source_truncated_refused_and_source_kept(tmp_path):
    src = tmp_path / "src"
    expected = make_source(src)
    archive = src / "images_evaluation.zip"
    archive.write_bytes(archive.read_bytes()[:100])
    home = tmp_path / "home"
    with pytest.raises(DataError, match="truncated"):
        fetch_omniglot(home, src, expected=expected)
    assert archive.exists()  # a user's file is never deleted
    # the background set was complete and stays; nothing of the evaluation set is left
    assert sorted(p.name for p in omniglot_dir(home).iterdir()) == ["images_background"]


def test_source_sha256sums_checked(tmp_path):
    src = tmp_path / "src"
    expected = make_source(src)
    (src / "SHA256SUMS.txt").write_text(
        "0" * 64 + "  ./images_background/Background_Alphabet_0/character01/0001_01.png\n")
    home = tmp_path / "home"
    with pytest.raises(DataError, match="does not match its SHA-256"):
        fetch_omniglot(home, src, expected=expected)
    assert leftovers(omniglot_dir(home)) == []


def test_tiny_cache_build_and_rebuild(tmp_path):
    """The cache: sorted order, indices, LANCZOS pixels equal to load_image_file; a damaged
    manifest is rebuilt."""
    src = tmp_path / "src"
    expected = make_source(src, images=4)
    home = tmp_path / "home"
    fetch_omniglot(home, src, expected=expected)
    cache = load_image_cache(16, home=home)
    assert cache.images.shape == (32, 16, 16) and cache.images.dtype == np.uint8
    assert cache.counts() == expected
    assert cache.character_names[0] == "Background_Alphabet_0/character01"
    assert list(cache.drawer_index[:4]) == [0, 1, 2, 3]
    assert list(cache.char_index[::4]) == list(range(8))
    assert cache.background.sum() == 16
    png = omniglot_dir(home) / "images_evaluation" / "Evaluation_Alphabet_1" / "character02" / "0504_03.png"
    row = int(np.flatnonzero((cache.char_index == 7) & (cache.drawer_index == 2))[0])
    assert np.array_equal(load_image_file(png, 16), cache.images[row])
    (cache.path / "manifest.json").write_text("{not json")
    again = load_image_cache(16, home=home)
    assert np.array_equal(again.images, cache.images)


def test_cache_not_fetched_without_fetch(tmp_path):
    with pytest.raises(DataError, match="not fetched"):
        load_image_cache(32, home=tmp_path, fetch=False)
