"""trainer.storage on local paths, file://, a /gcs-like FUSE path and gs:// on a real emulator.

Fault injection goes through tests/fixtures/faultproxy.py (fixture ``gcs_proxy``).
"""

from __future__ import annotations

import dataclasses
import errno
import filecmp
import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from trainer import storage

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["local", "file", "gs"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A folder URI on each backend."""
    if request.param == "local":
        return str(tmp_path / "root")
    if request.param == "file":
        return "file://" + str(tmp_path / "root")
    return f"gs://{request.getfixturevalue('gcs_bucket')}/root"


def _make_tree(root: Path) -> dict[str, bytes]:
    """A nested tree with empty, text and binary files; returns {relative path: bytes}."""
    files = {
        "config.json": b'{"a": 1}\n',
        "empty.txt": b"",
        "weights/adapter.bin": os.urandom(200_000),
        "weights/deep/er/still.txt": "ünïcode\n".encode(),
    }
    for i in range(12):
        files[f"shards/part-{i:02d}.txt"] = f"shard {i}\n".encode() * (i + 1)
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


# ----------------------------------------------------------------------------- paths


def test_uri_helpers() -> None:
    assert storage.is_gcs("gs://b/x")
    assert not storage.is_gcs("/gcs/b/x")
    assert not storage.is_gcs("file:///tmp/x")
    assert storage.local_path("gs://b/x") is None
    assert storage.local_path("/gcs/bucket/obj") == "/gcs/bucket/obj"  # Cloud Storage FUSE
    assert storage.local_path("file:///tmp/a%20b") == "/tmp/a b"
    assert storage.local_path("file://localhost/tmp/x") == "/tmp/x"
    assert storage.local_path(Path("rel/x")) == "rel/x"
    with pytest.raises(ValueError, match="file://otherhost/x"):
        storage.local_path("file://otherhost/x")

    assert storage.join("gs://b", "a", "/c/", "d.txt") == "gs://b/a/c/d.txt"
    assert storage.join("gs://b/run/", "x") == "gs://b/run/x"
    assert storage.join("/tmp/r", "a/b", "/c") == "/tmp/r/a/b/c"
    assert storage.join("file:///tmp/r", "x") == "file:///tmp/r/x"
    with pytest.raises(ValueError, match="no bucket"):
        storage.join("gs://", "x")


def test_gcs_fuse_like_path_is_plain_local(tmp_path: Path) -> None:
    # /gcs/<bucket>/... on Vertex is a FUSE mount: it must take the local code path.
    fuse_root = tmp_path / "gcs" / "bucket"
    uri = str(fuse_root / "runs" / "a.txt")
    storage.write_text(uri, "fuse")
    assert storage.read_text(uri) == "fuse"
    assert storage.list_files(str(fuse_root) + "/") == [uri]


# ----------------------------------------------------------------------------- every backend


def test_round_trip_bytes_text_and_streaming(base: str) -> None:
    uri = storage.join(base, "sub", "data.bin")
    payload = os.urandom(70_000) + b"\nline two\n"
    storage.write_bytes(uri, payload)
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == payload
    assert storage.sha256(uri) == hashlib.sha256(payload).hexdigest()
    with storage.open_read(uri) as fh:
        head = fh.read(10)
        rest = fh.read()
    assert head + rest == payload
    with storage.open_read(uri) as fh:
        lines = list(fh)  # line iteration streams too
    assert lines == [part + b"\n" for part in payload.split(b"\n")[:-1]]

    text_uri = storage.join(base, "notes.md")
    storage.write_text(text_uri, "héllo\nwörld\n")
    assert storage.read_text(text_uri) == "héllo\nwörld\n"
    storage.write_text(text_uri, "replaced")  # plain writes overwrite
    assert storage.read_text(text_uri) == "replaced"

    empty = storage.join(base, "empty")
    storage.write_bytes(empty, b"")
    assert storage.read_bytes(empty) == b""
    assert storage.sha256(empty) == hashlib.sha256(b"").hexdigest()


def test_list_files_by_prefix(base: str) -> None:
    for rel in ["a/x.txt", "a/y/z.txt", "ab/w.txt", "b/q.txt"]:
        storage.write_text(storage.join(base, rel), rel)
    a, ab, az, q = (storage.join(base, r) for r in ["a/x.txt", "ab/w.txt", "a/y/z.txt", "b/q.txt"])
    # A string prefix, like GCS: "a" also matches "ab/...", "a/" means the folder.
    assert storage.list_files(storage.join(base, "a")) == sorted([a, az, ab])
    assert storage.list_files(storage.join(base, "a") + "/") == sorted([a, az])
    assert storage.list_files(base + "/") == sorted([a, az, ab, q])
    assert storage.list_files(storage.join(base, "nothing")) == []
    assert all(u.startswith(base) for u in storage.list_files(base))


def test_exists_delete_and_delete_prefix(base: str) -> None:
    keep = storage.join(base, "keep.txt")
    storage.write_text(keep, "k")
    for rel in ["run1/a.txt", "run1/deep/b.txt", "run10/c.txt"]:
        storage.write_text(storage.join(base, rel), rel)

    assert storage.exists(storage.join(base, "run1"))  # a folder counts
    assert not storage.exists(storage.join(base, "missing.txt"))

    storage.delete(keep)
    assert not storage.exists(keep)
    with pytest.raises(FileNotFoundError, match=r"keep\.txt"):
        storage.delete(keep)
    storage.delete(keep, missing_ok=True)

    assert storage.delete_prefix(storage.join(base, "run1") + "/") == 2
    assert storage.list_files(base + "/") == [storage.join(base, "run10/c.txt")]
    assert not storage.exists(storage.join(base, "run1"))
    assert storage.delete_prefix(storage.join(base, "nothing")) == 0


def test_tree_upload_and_download_parallel(base: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = _make_tree(src)
    dest_uri = storage.join(base, "tree")
    written = storage.upload_dir(str(src), dest_uri, workers=4)
    assert written == sorted(storage.join(dest_uri, rel) for rel in files)
    assert storage.list_files(dest_uri + "/") == written

    out = tmp_path / "out"
    local = storage.download_dir(dest_uri, str(out), workers=4)
    assert len(local) == len(files)
    for rel, data in files.items():
        assert (out / rel).read_bytes() == data, rel
    cmp = filecmp.dircmp(src, out)
    assert not cmp.left_only and not cmp.right_only
    assert not [p for p in out.rglob("*.tmp")]  # no temp files left behind


def test_download_dir_of_nothing_is_an_error(base: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tree"):
        storage.download_dir(storage.join(base, "tree"), str(tmp_path / "out"))


# ----------------------------------------------------------------------------- gs:// specifics


def test_copy_every_combination(gcs_bucket: str, tmp_path: Path) -> None:
    data = os.urandom(50_000)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    gs1, gs2 = f"gs://{gcs_bucket}/c/one.bin", f"gs://{gcs_bucket}/c/two.bin"
    storage.copy(str(src), gs1)  # local -> gs
    storage.copy(gs1, gs2)  # gs -> gs (server side)
    storage.copy(gs2, str(tmp_path / "back" / "x.bin"))  # gs -> local
    storage.copy(str(tmp_path / "back" / "x.bin"), "file://" + str(tmp_path / "y.bin"))
    assert storage.read_bytes(gs2) == data
    assert (tmp_path / "back" / "x.bin").read_bytes() == data
    assert (tmp_path / "y.bin").read_bytes() == data


def test_missing_object_errors_name_the_uri(gcs_bucket: str, tmp_path: Path) -> None:
    uri = f"gs://{gcs_bucket}/no/such.txt"
    for call in [
        lambda: storage.read_bytes(uri),
        lambda: storage.download_file(uri, str(tmp_path / "x")),
        lambda: storage.sha256(uri),
        lambda: storage.copy(uri, f"gs://{gcs_bucket}/other"),
        lambda: storage.delete(uri),
    ]:
        with pytest.raises(FileNotFoundError) as err:
            call()
        assert str(err.value) == f"{uri}: no such object"
    assert not (tmp_path / "x").exists()
    with pytest.raises(FileNotFoundError, match="no such bucket"):
        storage.list_files("gs://no-such-bucket-llmft/x")
    with pytest.raises(FileNotFoundError, match="no-such-bucket-llmft/x: no such bucket"):
        storage.write_text("gs://no-such-bucket-llmft/x", "x")
    with pytest.raises(ValueError, match="not an object"):
        storage.read_bytes(f"gs://{gcs_bucket}/folder/")


def test_download_dir_refuses_names_escaping_the_destination(
    gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GCS accepts any object name, "../" included (the emulator cannot store one, so the
    # listing is faked here); such a name must never write outside the destination.
    names = [f"gs://{gcs_bucket}/t/ok.txt", f"gs://{gcs_bucket}/t/../../evil.txt"]
    monkeypatch.setattr(storage, "list_files", lambda prefix: names)
    with pytest.raises(ValueError, match="escapes the destination"):
        storage.download_dir(f"gs://{gcs_bucket}/t", str(tmp_path / "out"))
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "out" / "ok.txt").exists()  # checked before anything is written


def test_client_uses_emulator_anonymously_and_is_cached(
    gcs_emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.auth.credentials import AnonymousCredentials

    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "proj-x")
    client = storage.get_client()
    assert client is storage.get_client()
    assert isinstance(client._credentials, AnonymousCredentials)
    assert client.project == "proj-x"
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT")
    other = storage.get_client()
    assert other is not client and other.project == "local"
    storage.reset_client()
    assert storage.get_client() is not other


def test_bucket_exists(gcs_bucket: str) -> None:
    assert storage.exists(f"gs://{gcs_bucket}")
    assert not storage.exists("gs://no-such-bucket-llmft")
    assert not storage.exists("gs://no-such-bucket-llmft/x")


def test_subprocesses_inherit_the_emulator(gcs_bucket: str) -> None:
    # kfp.local runs every task in a subprocess: STORAGE_EMULATOR_HOST must carry over.
    uri = f"gs://{gcs_bucket}/from-child.txt"
    code = f"from trainer import storage; storage.write_text({uri!r}, 'child')"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert storage.read_text(uri) == "child"


def test_retry_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMFT_STORAGE_RETRY_ATTEMPTS", "3")
    monkeypatch.setenv("LLMFT_STORAGE_RETRY_INITIAL_S", "0.25")
    settings = storage.RetrySettings()
    assert (settings.attempts, settings.initial_s) == (3, 0.25)
    monkeypatch.setenv("LLMFT_STORAGE_RETRY_ATTEMPTS", "three")
    with pytest.raises(ValueError, match="LLMFT_STORAGE_RETRY_ATTEMPTS='three'"):
        storage.RetrySettings()
    with pytest.raises(ValueError, match="attempts must be >= 1"):
        storage.RetrySettings(attempts=0)


# ----------------------------------------------------------------------------- create_only


def test_create_only_local_is_exclusive_and_atomic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "d" / "status.txt")
    storage.write_text(path, "first", create_only=True)
    with pytest.raises(storage.PreconditionFailed, match=r"status\.txt: already exists"):
        storage.write_text(path, "second", create_only=True)
    assert Path(path).read_text() == "first"
    assert isinstance(storage.PreconditionFailed("x"), FileExistsError)

    # Another writer creating the file after our early existence check must still win.
    with monkeypatch.context() as m:
        m.setattr(os.path, "lexists", lambda p: False)
        with pytest.raises(storage.PreconditionFailed):
            storage.write_text(path, "late", create_only=True)
    assert Path(path).read_text() == "first"

    # Racing writers: exactly one wins and its content is complete.
    race = str(tmp_path / "race.txt")
    wins, losses = [], []
    barrier = threading.Barrier(8)

    def writer(i: int) -> None:
        barrier.wait()
        try:
            storage.write_bytes(race, f"writer {i} ".encode() * 5000, create_only=True)
            wins.append(i)
        except storage.PreconditionFailed:
            losses.append(i)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 7
    assert Path(race).read_bytes() == f"writer {wins[0]} ".encode() * 5000
    assert sorted(os.listdir(tmp_path)) == ["d", "race.txt"]  # no temp files left


def test_create_only_local_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cloud Storage FUSE has no hard links: the O_EXCL fallback must still be exclusive.
    def no_link(src: str, dst: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    path = str(tmp_path / "x.txt")
    storage.write_text(path, "one", create_only=True)
    monkeypatch.setattr(os.path, "lexists", lambda p: False)  # skip the early check
    with pytest.raises(storage.PreconditionFailed):
        storage.write_text(path, "two", create_only=True)
    assert Path(path).read_text() == "one"


def test_failed_local_write_keeps_old_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.bin"
    storage.write_bytes(str(path), b"old")

    def boom(src: str, dst: str) -> None:
        raise OSError(errno.EIO, "disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        storage.write_bytes(str(path), b"new" * 1000)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.bin"]


def test_create_only_gs_sends_if_generation_match_zero(gcs_bucket: str, gcs_proxy) -> None:
    uri = f"gs://{gcs_bucket}/once.txt"
    storage.write_text(uri, "v1", create_only=True)
    storage.write_text(uri, "v2")
    sent = gcs_proxy.requests(uploads=True)
    assert [s.query.get("ifGenerationMatch") for s in sent] == [["0"], None]


def test_create_only_gs_conflict_is_not_retried(gcs_bucket: str, gcs_proxy) -> None:
    gcs_proxy.enforce_create_only = True  # GCS semantics (the emulator ignores preconditions)
    uri = f"gs://{gcs_bucket}/once.txt"
    storage.write_text(uri, "first", create_only=True)
    gcs_proxy.clear()
    with pytest.raises(storage.PreconditionFailed) as err:
        storage.write_text(uri, "second", create_only=True)
    assert str(err.value) == f"{uri}: already exists (create_only)"
    assert len(gcs_proxy.requests(uploads=True)) == 1  # a 412 is final
    assert storage.read_text(uri) == "first"


def test_create_only_gs_resumable_upload(
    gcs_bucket: str, gcs_proxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.cloud.storage import blob as gcs_blob

    monkeypatch.setattr(gcs_blob, "_MAX_MULTIPART_SIZE", 256 * 1024)  # force resumable
    gcs_proxy.enforce_create_only = True
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(400_000))
    uri = f"gs://{gcs_bucket}/big.bin"
    storage.upload_file(str(src), uri, create_only=True)
    with pytest.raises(storage.PreconditionFailed):
        storage.upload_file(str(src), uri, create_only=True)
    starts = gcs_proxy.requests(method="POST", uploads=True)
    assert [s.query.get("uploadType") for s in starts] == [["resumable"], ["resumable"]]
    assert all(s.query.get("ifGenerationMatch") == ["0"] for s in starts)
    assert storage.read_bytes(uri) == src.read_bytes()


def test_create_only_gs_lost_reply_is_success(gcs_bucket: str, gcs_proxy) -> None:
    # The first upload lands but its reply is lost; the retry gets 412. Same bytes -> success.
    gcs_proxy.enforce_create_only = True
    uri = f"gs://{gcs_bucket}/lost-reply.bin"
    data = os.urandom(30_000)
    gcs_proxy.drop_next_response(1, method="POST", path_contains="/upload/")
    storage.write_bytes(uri, data, create_only=True)
    uploads = gcs_proxy.requests(uploads=True)
    assert [u.outcome for u in uploads] == ["dropped response", "precondition failed"]
    assert storage.read_bytes(uri) == data


def test_create_only_gs_retry_never_clobbers_other_content(gcs_bucket: str, gcs_proxy) -> None:
    # A retried create-only write that finds DIFFERENT bytes must fail, not overwrite.
    gcs_proxy.enforce_create_only = True
    uri = f"gs://{gcs_bucket}/theirs.txt"
    storage.write_text(uri, "theirs")
    gcs_proxy.fail_next(1, 503, path_contains="/upload/")
    with pytest.raises(storage.PreconditionFailed):
        storage.write_text(uri, "mine", create_only=True)
    assert [u.outcome for u in gcs_proxy.requests(uploads=True)][-2:] == [
        "status 503",
        "precondition failed",
    ]
    assert storage.read_text(uri) == "theirs"


# ----------------------------------------------------------------------------- faults


def test_reads_and_listing_survive_503s_and_resets(gcs_bucket: str, gcs_proxy) -> None:
    uri = f"gs://{gcs_bucket}/f/data.bin"
    data = os.urandom(100_000)
    storage.write_bytes(uri, data)

    gcs_proxy.fail_next(2, 503)
    gcs_proxy.drop_next_response(1, path_contains="alt=media")
    assert storage.read_bytes(uri) == data

    gcs_proxy.fail_next(2, 429, method="GET")
    assert storage.list_files(f"gs://{gcs_bucket}/f/") == [uri]

    gcs_proxy.fail_next(1, 500)
    gcs_proxy.drop_next_response(1, path_contains="alt=media")
    with storage.open_read(uri) as fh:
        assert fh.read() == data
    assert gcs_proxy.pending() == 0  # every injection was hit


def test_uploads_survive_503s_and_a_dropped_connection(
    gcs_bucket: str, gcs_proxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"gs://{gcs_bucket}/up/small.bin"
    data = os.urandom(64_000)
    gcs_proxy.fail_next(2, 503, path_contains="/upload/")
    gcs_proxy.drop_next_upload(1)
    storage.write_bytes(uri, data)
    outcomes = [u.outcome for u in gcs_proxy.requests(uploads=True)]
    assert outcomes == ["status 503", "status 503", "dropped request", "forwarded"]
    assert storage.read_bytes(uri) == data

    # Above the multipart limit the client switches to a resumable upload; make that small.
    from google.cloud.storage import blob as gcs_blob

    monkeypatch.setattr(gcs_blob, "_MAX_MULTIPART_SIZE", 256 * 1024)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(600_000))
    gcs_proxy.clear()
    gcs_proxy.drop_next_upload(1, path_contains="upload_id=")  # dies mid-PUT of the data
    storage.upload_file(str(big), f"gs://{gcs_bucket}/up/big.bin")
    seen = gcs_proxy.requests(uploads=True)
    assert any(s.outcome == "dropped request" and "upload_id=" in s.path for s in seen)
    assert storage.read_bytes(f"gs://{gcs_bucket}/up/big.bin") == big.read_bytes()


def test_tree_transfers_survive_faults_and_run_in_parallel(
    gcs_bucket: str, gcs_proxy, tmp_path: Path
) -> None:
    files = _make_tree(tmp_path / "src")
    root = f"gs://{gcs_bucket}/tree"
    gcs_proxy.fail_next(3, 503, path_contains="/upload/")
    gcs_proxy.drop_next_upload(1)
    storage.upload_dir(str(tmp_path / "src"), root, workers=8)
    assert gcs_proxy.max_in_flight > 1  # requests overlapped: the pool really ran in parallel

    gcs_proxy.fail_next(3, 503, method="GET")
    gcs_proxy.drop_next_response(2, path_contains="alt=media")
    out = tmp_path / "out"
    storage.download_dir(root, str(out), workers=8)
    for rel, data in files.items():
        assert (out / rel).read_bytes() == data, rel
    assert gcs_proxy.pending() == 0


def test_delete_survives_a_lost_reply(gcs_bucket: str, gcs_proxy) -> None:
    uri = f"gs://{gcs_bucket}/gone.txt"
    storage.write_text(uri, "x")
    gcs_proxy.drop_next_response(1, method="DELETE")
    storage.delete(uri)  # the retry's 404 means our first attempt landed
    assert not storage.exists(uri)


def test_timeouts_are_retried(gcs_bucket: str, gcs_proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"gs://{gcs_bucket}/slow.txt"
    storage.write_text(uri, "slow")
    monkeypatch.setattr(storage, "RETRY", dataclasses.replace(storage.RETRY, timeout_s=0.3))
    gcs_proxy.stall_next(1, 1.5, path_contains="alt=media")
    started = time.monotonic()
    assert storage.read_text(uri) == "slow"
    assert time.monotonic() - started < 1.4  # gave up on the stalled request, did not wait it out
    assert any(s.outcome.startswith("stalled") for s in gcs_proxy.requests())


def test_permanent_errors_are_not_retried(gcs_bucket: str, gcs_proxy) -> None:
    uri = f"gs://{gcs_bucket}/p.txt"
    storage.write_text(uri, "x")
    gcs_proxy.clear()
    gcs_proxy.fail_next(1, 403)
    with pytest.raises(PermissionError, match=f"{uri}: permission denied"):
        storage.read_bytes(uri)
    gcs_proxy.fail_next(1, 400, path_contains="/upload/")
    with pytest.raises(storage.StorageError, match=f"{uri}: HTTP 400"):
        storage.write_text(uri, "y")
    assert len(gcs_proxy.requests()) == 2  # one request each, no retry


def test_retries_are_bounded(gcs_bucket: str, gcs_proxy) -> None:
    uri = f"gs://{gcs_bucket}/r.txt"
    storage.write_text(uri, "x")
    gcs_proxy.clear()
    gcs_proxy.fail_next(100, 503)
    started = time.monotonic()
    with pytest.raises(storage.StorageError) as err:
        storage.read_bytes(uri)
    assert str(err.value).startswith(f"{uri}: download failed after 5 attempts against http")
    assert "HTTP 503" in str(err.value)
    assert "\n" not in str(err.value)
    assert len(gcs_proxy.requests()) == 5
    assert time.monotonic() - started < 5


# ----------------------------------------------------------------------------- integrity


def test_corrupt_download_is_detected(gcs_bucket: str, gcs_proxy, tmp_path: Path) -> None:
    uri = f"gs://{gcs_bucket}/c.bin"
    data = os.urandom(20_000)
    storage.write_bytes(uri, data)

    gcs_proxy.corrupt_next_download(1)  # one bad transfer: retried, right bytes
    assert storage.read_bytes(uri) == data

    gcs_proxy.corrupt_next_download(100)  # always bad: a clear error, no file left behind
    dest = tmp_path / "c.bin"
    with pytest.raises(storage.ChecksumMismatch) as err:
        storage.download_file(uri, str(dest))
    assert str(err.value).startswith(f"{uri}: crc32c mismatch")
    assert not dest.exists() and os.listdir(tmp_path) == []

    with pytest.raises(storage.ChecksumMismatch, match="crc32c"), storage.open_read(uri) as fh:
        fh.read()


def test_size_mismatch_is_detected(
    gcs_bucket: str, gcs_proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"gs://{gcs_bucket}/s.bin"
    storage.write_bytes(uri, b"12345")
    real_verify = storage._verify

    def lying_size(uri_: str, meta, size: int, crc: bytes) -> None:
        meta._properties["size"] = "6"  # metadata says 6 bytes, 5 arrive
        real_verify(uri_, meta, size, crc)

    monkeypatch.setattr(storage, "_verify", lying_size)
    with pytest.raises(storage.ChecksumMismatch, match=r"size mismatch \(object has 6 bytes"):
        storage.read_bytes(uri)


def test_open_read_streams_in_bounded_ranges(
    gcs_bucket: str, gcs_proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "CHUNK_SIZE", 64 * 1024)
    uri = f"gs://{gcs_bucket}/stream.bin"
    data = os.urandom(1_000_000)
    storage.write_bytes(uri, data)
    gcs_proxy.clear()
    gcs_proxy.fail_next(1, 503, path_contains="alt=media")
    got = bytearray()
    with storage.open_read(uri) as fh:
        while chunk := fh.read(10_000):
            got += chunk
    assert bytes(got) == data
    ranges = [s.headers["range"] for s in gcs_proxy.requests(method="GET") if "range" in s.headers]
    sizes = [int(b) - int(a) + 1 for a, b in (r.split("=")[1].split("-") for r in ranges)]
    assert len(sizes) >= 16 and max(sizes) <= 64 * 1024
    assert storage.sha256(uri) == hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- deadlines


def test_a_wedged_endpoint_gives_notices_within_seconds_and_a_deadline(
    gcs_bucket: str, gcs_proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endpoint that accepts connections and never answers: a notice after a few seconds,
    every retry announced, one line at the deadline naming the endpoint and what timed out."""
    uri = f"gs://{gcs_bucket}/wedged.txt"
    storage.write_text(uri, "x")
    notices: list[tuple[float, str]] = []
    started = time.monotonic()
    monkeypatch.setattr(storage, "NOTICE", lambda m: notices.append((time.monotonic(), m)))
    monkeypatch.setattr(storage, "NOTICE_AFTER_S", 0.3)
    monkeypatch.setattr(
        storage,
        "RETRY",
        dataclasses.replace(storage.RETRY, timeout_s=1.0, deadline_s=3.0, attempts=50),
    )
    gcs_proxy.clear()
    gcs_proxy.stall_next(1000, 30.0)
    with pytest.raises(storage.StorageError) as err:
        storage.exists(uri)
    took = time.monotonic() - started
    msg = str(err.value)
    assert took < 3.0 + 1.5, took  # the deadline holds, whatever the attempt count
    assert msg.startswith(f"{uri}: ") and "timed out" in msg and "\n" not in msg
    assert gcs_proxy.url.removeprefix("http://") in msg and "LLMFT_GCS_DEADLINE" in msg
    assert notices and notices[0][0] - started < 1.0, notices  # told within a second here
    assert any("no answer from" in m for _, m in notices)
    assert any("retrying in" in m for _, m in notices)
    gcs_proxy.clear()


def test_deadline_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMFT_GCS_DEADLINE", "45")
    assert storage.RetrySettings().deadline_s == 45.0
    monkeypatch.setenv("LLMFT_GCS_DEADLINE", "0")
    with pytest.raises(ValueError, match="deadline"):
        storage.RetrySettings()
