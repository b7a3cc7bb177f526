"""One small API over local paths, ``file://``, ``/gcs/...`` and ``gs://bucket/object``.

``/gcs/...`` is Cloud Storage FUSE on Vertex AI: it is a local path here, like any other.
``gs://`` goes through google-cloud-storage; the client honours ``STORAGE_EMULATOR_HOST``
(anonymous credentials), so tests run against a real emulator on loopback.

Guarantees:
- Local writes are atomic: a temporary file in the same folder, then a rename. Readers see
  the old file or the new one, never a partial one.
- ``create_only=True`` never replaces anything: ``if_generation_match=0`` on GCS, a hard
  link (or ``O_EXCL`` where the file system has no hard links) locally. Both raise
  :class:`PreconditionFailed`.
- Every download of a ``gs://`` object is checked against the object's size and crc32c
  (:class:`ChecksumMismatch` otherwise).
- Transient GCS errors (408, 429, 5xx, connection resets, timeouts) are retried with
  exponential backoff, only where repeating the request is safe (see ``_with_retry``),
  within a total deadline per operation (``LLMFT_GCS_DEADLINE``, default 120 s). A request
  that has had no answer for ``NOTICE_AFTER_S`` seconds, and every retry, prints a notice to
  stderr naming the object, the endpoint and the deadline, so a wedged endpoint is visible
  within seconds rather than after minutes of silence.
- Errors are one line naming the URI, e.g. ``FileNotFoundError("gs://b/x: no such object")``.

``google.cloud`` is imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import mimetypes
import os
import random
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TypeVar
from urllib.parse import unquote, urlparse

T = TypeVar("T")

GS = "gs://"
FILE = "file:"

CHUNK_SIZE = 8 * 1024 * 1024
"""Size of one ranged GET in ``open_read`` on ``gs://`` (the reader's memory bound)."""

_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Our own temporary files (".<name>.<12 hex>.tmp"): never listed, never uploaded.
_TMP_RE = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")


def _env_number(name: str, default: float, cast: Callable[[str], Any] = float) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return cast(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: not a number") from None


@dataclass(frozen=True)
class RetrySettings:
    """Backoff for transient GCS errors.

    The defaults can be overridden by environment variables (read when this module is imported,
    so subprocesses such as kfp.local tasks inherit them): ``LLMFT_STORAGE_RETRY_ATTEMPTS``,
    ``LLMFT_STORAGE_RETRY_INITIAL_S``, ``LLMFT_STORAGE_RETRY_MAX_S``, ``LLMFT_STORAGE_TIMEOUT_S``.
    Tests replace the module-level :data:`RETRY` with small delays.
    """

    attempts: int = field(
        default_factory=lambda: _env_number("LLMFT_STORAGE_RETRY_ATTEMPTS", 6, int)
    )
    initial_s: float = field(
        default_factory=lambda: _env_number("LLMFT_STORAGE_RETRY_INITIAL_S", 0.5)
    )
    max_s: float = field(default_factory=lambda: _env_number("LLMFT_STORAGE_RETRY_MAX_S", 16.0))
    multiplier: float = 2.0
    timeout_s: float = field(default_factory=lambda: _env_number("LLMFT_STORAGE_TIMEOUT_S", 20.0))
    """Per request: seconds without an answer (connect, or between bytes) before it is retried."""
    deadline_s: float = field(default_factory=lambda: _env_number("LLMFT_GCS_DEADLINE", 120.0))
    """Per operation: all attempts and waits together."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"retry attempts must be >= 1, got {self.attempts}")
        if self.initial_s < 0 or self.max_s < 0 or self.timeout_s <= 0 or self.deadline_s <= 0:
            raise ValueError("retry delays must be >= 0, the timeout and deadline > 0")


RETRY = RetrySettings()
"""The retry policy every ``gs://`` operation uses; replace it (e.g. in tests) to change it."""

NOTICE_AFTER_S = 5.0
"""A request without an answer for this long prints a notice (it is not cancelled)."""


def _notice(message: str) -> None:
    """Progress notices about slow or retried requests (stderr: the step's log in KFP)."""
    import sys

    print(f"storage: {message}", file=sys.stderr, flush=True)


NOTICE: Callable[[str], None] = _notice
"""Where notices go; tests replace it."""

_deadline = threading.local()


def _request_timeout() -> float:
    """The timeout for the next request: the per-request one, cut to the operation's deadline."""
    end = getattr(_deadline, "end", None)
    if end is None:
        return RETRY.timeout_s
    return max(0.5, min(RETRY.timeout_s, end - time.monotonic()))


def endpoint() -> str:
    """The Cloud Storage endpoint requests go to (the emulator's in tests)."""
    return os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com"


class StorageError(OSError):
    """A storage operation failed; the message is one line naming the URI."""


class PreconditionFailed(FileExistsError):
    """A ``create_only`` write found the object or file already there."""


class ChecksumMismatch(StorageError):
    """Downloaded bytes do not match the object's size or crc32c."""


# --------------------------------------------------------------------------------------------
# URIs


def is_gcs(uri: str | os.PathLike[str]) -> bool:
    """Whether ``uri`` is a ``gs://`` URI (``/gcs/...`` FUSE paths are local, so False)."""
    return os.fspath(uri).startswith(GS)


def local_path(uri: str | os.PathLike[str]) -> str | None:
    """The local path behind ``uri``; None for ``gs://``.

    Args:
        uri: A plain path, ``/gcs/...`` (Cloud Storage FUSE), ``file:///abs/path``
            (or ``file://localhost/abs/path``), or ``gs://bucket/object``.

    Returns:
        The local path, or None for a ``gs://`` URI.

    Raises:
        ValueError: a ``file://`` URI naming another host.
    """
    uri = os.fspath(uri)
    if uri.startswith(GS):
        return None
    if uri.startswith(FILE):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"{uri}: file URIs must name a local path (file:///path)")
        return unquote(parsed.path)
    return uri


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """Join path parts onto a local path, ``file://`` URI or ``gs://`` URI.

    Args:
        base: Where to start.
        *parts: Relative parts; leading slashes are ignored (parts never restart the path).

    Returns:
        The joined path or URI, in the same form as ``base``.
    """
    base = os.fspath(base)
    clean = [p.lstrip("/") for p in parts if p.lstrip("/")]
    if base.startswith(GS):
        _split_gs(base)  # validates the bucket
        out = base
        for part in clean:
            out = out.rstrip("/") + "/" + part
        return out
    if base.startswith(FILE):
        return "file://" + os.path.join(local_path(base) or "/", *clean)
    return os.path.join(base, *clean)


def _split_gs(uri: str) -> tuple[str, str]:
    bucket, _, name = uri[len(GS) :].partition("/")
    if not bucket:
        raise ValueError(f"{uri}: no bucket name in gs:// URI")
    return bucket, name


def _object(uri: str) -> tuple[str, str]:
    bucket, name = _split_gs(uri)
    if not name or name.endswith("/"):
        raise ValueError(f"{uri}: not an object URI (the object name is empty or ends with '/')")
    return bucket, name


def _to_uri_form(path: str, like: str) -> str:
    """Present a local path in the same form (plain or ``file://``) as the caller's ``like``."""
    return "file://" + os.path.abspath(path) if like.startswith(FILE) else path


# --------------------------------------------------------------------------------------------
# The client


_client_lock = threading.Lock()
_client_state: tuple[tuple[Any, ...], Any] | None = None


def get_client() -> Any:
    """The cached ``google.cloud.storage.Client``, created on first use.

    With ``STORAGE_EMULATOR_HOST`` set it uses anonymous credentials and the project from
    ``GOOGLE_CLOUD_PROJECT`` (default ``local``); otherwise Application Default Credentials.
    The cache is keyed by those variables and the process id, so changing the emulator (or
    forking) yields a fresh client.

    Returns:
        A ``google.cloud.storage.Client``.
    """
    global _client_state
    emulator = os.environ.get("STORAGE_EMULATOR_HOST") or None
    project = os.environ.get("GOOGLE_CLOUD_PROJECT") or None
    key = (emulator, project, os.getpid())
    with _client_lock:
        if _client_state is None or _client_state[0] != key:
            _client_state = (key, _make_client(emulator, project))
        return _client_state[1]


def reset_client() -> None:
    """Forget the cached client (the next ``gs://`` call creates a new one)."""
    global _client_state
    with _client_lock:
        _client_state = None


def _make_client(emulator: str | None, project: str | None) -> Any:
    import requests
    from google.cloud import storage as gcs

    if emulator:
        from google.auth.credentials import AnonymousCredentials

        client = gcs.Client(project=project or "local", credentials=AnonymousCredentials())
    else:
        client = gcs.Client(project=project) if project else gcs.Client()
    # Tree transfers share this client across `workers` threads; the default pool of 10
    # connections would be discarded and reopened (with a warning) above that.
    # google-cloud-storage 3.x starts a background thread per bucket that GETs the bucket's
    # metadata for OpenTelemetry attributes: an extra, unretried request that needs
    # storage.buckets.get (object-only service accounts lack it). We do not trace; turn it off.
    if getattr(client, "_bucket_metadata_cache", None) is not None:
        client._bucket_metadata_cache = None
    adapter = requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=64)
    client._http.mount("https://", adapter)
    client._http.mount("http://", adapter)
    return client


# --------------------------------------------------------------------------------------------
# Retries and errors


def _is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is worth another attempt (the request may succeed unchanged)."""
    import http.client

    import requests
    import urllib3
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc
    from google.cloud.storage import exceptions as sexc

    if isinstance(exc, ChecksumMismatch):
        return True  # bytes damaged in transit: a fresh download is the remedy
    if isinstance(exc, gexc.GoogleAPICallError):
        return exc.code in _TRANSIENT_STATUS
    if isinstance(exc, sexc.InvalidResponse):
        return getattr(getattr(exc, "response", None), "status_code", None) in _TRANSIENT_STATUS
    if isinstance(exc, sexc.DataCorruption):
        return True  # a resumable upload whose result did not match; the library deleted it
    return isinstance(
        exc,
        (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError,
            auth_exc.TransportError,
            urllib3.exceptions.HTTPError,
            http.client.HTTPException,
            ConnectionError,
            TimeoutError,
        ),
    )


def _describe(exc: BaseException) -> str:
    """One short line for an exception (first line, bounded length)."""
    from google.api_core import exceptions as gexc

    if isinstance(exc, gexc.GoogleAPICallError):
        text = f"HTTP {exc.code} {exc.message}"
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def _translate(uri: str, exc: BaseException, missing: str) -> BaseException:
    """A one-line exception naming ``uri`` for a google-cloud error; others unchanged."""
    from google.api_core import exceptions as gexc
    from google.cloud.storage import exceptions as sexc

    if isinstance(exc, gexc.NotFound):
        return FileNotFoundError(f"{uri}: {missing}")
    if isinstance(exc, gexc.PreconditionFailed):
        return PreconditionFailed(f"{uri}: already exists (create_only)")
    if isinstance(exc, (gexc.Forbidden, gexc.Unauthorized)):
        return PermissionError(f"{uri}: permission denied ({_describe(exc)})")
    if isinstance(exc, gexc.GoogleAPICallError):
        return StorageError(f"{uri}: {_describe(exc)}")
    if isinstance(exc, sexc.InvalidResponse):
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        return StorageError(f"{uri}: unexpected HTTP {status} from Cloud Storage")
    return exc


def _with_retry(
    uri: str, what: str, attempt: Callable[[int], T], *, missing: str = "no such object"
) -> T:
    """Run ``attempt(n)`` (n = 1, 2, ...) retrying transient errors with exponential backoff.

    Call this ONLY for operations that are safe to repeat. Our reasoning, per operation:
    - reads, metadata, listings, exists: no side effects.
    - downloads: each attempt starts over into a truncated temp file / buffer.
    - deletes: the end state (object gone) is the same however often it runs; a retry that
      gets 404 after an earlier attempt was sent treats it as done (that attempt landed).
    - create-only uploads (``ifGenerationMatch=0``): the server refuses a second creation, so
      a retry can never clobber anything. A 412 on a RETRY is ambiguous (our lost-reply first
      attempt landed, or someone else created it): the caller compares size and crc32c and
      only calls it success when the stored bytes are exactly ours (``_upload``).
    - overwrite uploads and server-side copies: whole-object puts of the same bytes to the same
      name; running one twice leaves the same object as running it once. GCS's own library
      does not retry them because it cannot know the caller's intent; here every write is a
      whole-object put of content the caller still holds, so the only difference a retry makes
      is ordering against a concurrent writer, which is last-writer-wins with or without it.
    A 412 or any other 4xx is never retried (repeating cannot change the answer).

    Args:
        uri: Named in every error.
        what: The operation, for the "failed after N attempts" message.
        attempt: One try; receives the attempt number.
        missing: Message for a 404 (``no such object``, ``no such bucket``...).

    Returns:
        What ``attempt`` returned.
    """
    settings = RETRY
    delay = settings.initial_s
    start = time.monotonic()
    end = start + settings.deadline_s
    outer = getattr(_deadline, "end", None)  # a nested operation keeps the outer deadline
    _deadline.end = end if outer is None else min(outer, end)
    where = f"{uri}: {what}"
    try:
        for n in range(1, settings.attempts + 1):
            timer = threading.Timer(
                NOTICE_AFTER_S,
                NOTICE,
                (
                    f"{where}: no answer from {endpoint()} for {NOTICE_AFTER_S:g}s, still "
                    f"waiting (attempt {n}/{settings.attempts}; gives up after "
                    f"{settings.deadline_s:g}s, LLMFT_GCS_DEADLINE)",
                ),
            )
            timer.daemon = True
            timer.start()
            try:
                return attempt(n)
            except Exception as exc:
                if not _is_transient(exc):
                    translated = _translate(uri, exc, missing)
                    if translated is exc:
                        raise
                    raise translated from exc
                elapsed = time.monotonic() - start
                wait = min(delay, settings.max_s) * random.uniform(0.5, 1.0)
                out_of_time = elapsed + wait >= settings.deadline_s
                if n == settings.attempts or out_of_time:
                    if isinstance(exc, ChecksumMismatch):
                        raise
                    if out_of_time:
                        raise StorageError(
                            f"{where} timed out: no success from {endpoint()} within the "
                            f"{settings.deadline_s:g}s deadline (LLMFT_GCS_DEADLINE) after {n} "
                            f"attempt(s); last error: {_describe(exc)}"
                        ) from exc
                    raise StorageError(
                        f"{where} failed after {n} attempts against {endpoint()}: {_describe(exc)}"
                    ) from exc
                NOTICE(
                    f"{where}: {_describe(exc)} (attempt {n}/{settings.attempts}); retrying in "
                    f"{wait:.1f}s (gives up after {settings.deadline_s:g}s)"
                )
                # Jitter (50-100 % of the delay) keeps parallel workers from retrying in lockstep.
                time.sleep(wait)
                delay *= settings.multiplier
            finally:
                timer.cancel()
    finally:
        _deadline.end = outer
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Local files


def _require_local(uri: str) -> str:
    path = local_path(uri)
    if path is None:
        raise ValueError(f"{uri}: expected a local path, got a gs:// URI")
    return path


@contextlib.contextmanager
def _atomic_local_write(path: str, *, create_only: bool = False) -> Iterator[BinaryIO]:
    """Yield a temp file next to ``path``; on success it becomes ``path`` in one step."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    if create_only and os.path.lexists(path):
        raise PreconditionFailed(f"{path}: already exists (create_only)")
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    # os.open with 0o666 lets the umask decide permissions (mkstemp would force 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
        # No fsync: the goal is that readers never see a partial file, not crash durability.
        if create_only:
            _publish_exclusive(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _publish_exclusive(tmp: str, path: str) -> None:
    """Make ``tmp`` appear as ``path`` only if ``path`` does not exist yet."""
    try:
        # link() fails if `path` exists and is atomic: the file appears complete or not at all.
        os.link(tmp, path)
        return
    except FileExistsError:
        raise PreconditionFailed(f"{path}: already exists (create_only)") from None
    except OSError as exc:
        if exc.errno not in (
            errno.EPERM,
            errno.ENOTSUP,
            errno.EOPNOTSUPP,
            errno.EXDEV,
            errno.ENOSYS,
        ):
            raise
    # No hard links (e.g. Cloud Storage FUSE): claim the name with O_EXCL, then move the
    # content over it. Readers may briefly see an empty file, never a partial one.
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except FileExistsError:
        raise PreconditionFailed(f"{path}: already exists (create_only)") from None
    os.replace(tmp, path)


def _local_matches(prefix: str) -> tuple[list[str], list[str]]:
    """Files under a local string prefix (recursive) and the top directories that matched."""
    parent, base = os.path.split(prefix)
    scan = parent or "."
    files: list[str] = []
    dirs: list[str] = []
    if not os.path.isdir(scan):
        return files, dirs
    for entry in os.scandir(scan):
        if not entry.name.startswith(base) or _TMP_RE.match(entry.name):
            continue
        full = os.path.join(parent, entry.name)
        if entry.is_dir():
            dirs.append(full)
            for root, subdirs, names in os.walk(full):
                subdirs.sort()
                files.extend(os.path.join(root, n) for n in names if not _TMP_RE.match(n))
        elif entry.is_file():
            files.append(full)
    return sorted(files), dirs


def _copy_local(src: str, dst: str, *, create_only: bool = False) -> None:
    with open(src, "rb") as fin, _atomic_local_write(dst, create_only=create_only) as fout:
        shutil.copyfileobj(fin, fout, 1024 * 1024)


# --------------------------------------------------------------------------------------------
# GCS primitives


def _stat(uri: str) -> Any:
    """Object metadata (size, crc32c, generation); FileNotFoundError when missing."""
    bucket, name = _object(uri)

    def attempt(_: int) -> Any:
        blob = get_client().bucket(bucket).get_blob(name, retry=None, timeout=_request_timeout())
        if blob is None:
            raise FileNotFoundError(f"{uri}: no such object")
        return blob

    return _with_retry(uri, "stat", attempt)


class _ChecksumSink:
    """A write-only stream that forwards to ``fh`` and keeps a running crc32c and size."""

    def __init__(self, fh: BinaryIO) -> None:
        import google_crc32c

        self._fh = fh
        self.crc = google_crc32c.Checksum()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._fh.write(data)
        self.crc.update(data)
        self.size += len(data)
        return len(data)


def _b64_crc(digest: bytes) -> str:
    import base64

    return base64.b64encode(digest).decode("ascii")


def _verify(uri: str, meta: Any, size: int, crc_digest: bytes) -> None:
    if meta.size is not None and size != int(meta.size):
        raise ChecksumMismatch(
            f"{uri}: size mismatch (object has {meta.size} bytes, received {size})"
        )
    got = _b64_crc(crc_digest)
    if meta.crc32c and got != meta.crc32c:
        raise ChecksumMismatch(
            f"{uri}: crc32c mismatch (object {meta.crc32c}, received {got}): corrupt download"
        )


def _download_to(uri: str, fh: BinaryIO) -> int:
    """Download ``uri`` into the seekable ``fh`` (rewritten from the start on each attempt)."""
    bucket, name = _object(uri)

    def attempt(_: int) -> int:
        client = get_client()
        meta = client.bucket(bucket).get_blob(name, retry=None, timeout=_request_timeout())
        if meta is None:
            raise FileNotFoundError(f"{uri}: no such object")
        fh.seek(0)
        fh.truncate()
        sink = _ChecksumSink(fh)
        # A fresh Blob (no mediaLink), pinned to the generation whose checksum we hold; raw
        # so that stored bytes (what crc32c describes) arrive without transcoding.
        blob = client.bucket(bucket).blob(name, generation=meta.generation)
        blob.download_to_file(
            sink, raw_download=True, checksum=None, retry=None, timeout=_request_timeout()
        )
        _verify(uri, meta, sink.size, sink.crc.digest())
        return sink.size

    return _with_retry(uri, "download", attempt)


def _same_content(uri: str, data: bytes | None, filename: str | None) -> bool:
    import google_crc32c

    meta = _stat(uri)
    if data is not None:
        size, crc = len(data), google_crc32c.Checksum(data).digest()
    else:
        assert filename is not None
        checksum = google_crc32c.Checksum()
        with open(filename, "rb") as fh:
            for block in iter(lambda: fh.read(1024 * 1024), b""):
                checksum.update(block)
        size, crc = os.path.getsize(filename), checksum.digest()
    return int(meta.size or 0) == size and meta.crc32c == _b64_crc(crc)


def _upload(
    uri: str,
    *,
    data: bytes | None = None,
    filename: str | None = None,
    create_only: bool = False,
    content_type: str | None = None,
) -> None:
    from google.api_core import exceptions as gexc

    bucket, name = _object(uri)
    content_type = content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
    kwargs = {
        "content_type": content_type,
        "if_generation_match": 0 if create_only else None,
        "checksum": "crc32c",  # the server (or, for resumable uploads, the client) verifies
        "retry": None,  # our loop decides; see _with_retry
        "timeout": _request_timeout(),
    }

    def attempt(n: int) -> None:
        blob = get_client().bucket(bucket).blob(name)
        try:
            if data is not None:
                blob.upload_from_string(data, **kwargs)
            else:
                blob.upload_from_filename(filename, **kwargs)
        except gexc.PreconditionFailed:
            # On a retry, a 412 may be our own earlier attempt whose reply was lost. Only the
            # exact same bytes count as success; anything else is a real conflict.
            if n > 1 and _same_content(uri, data, filename):
                return
            raise

    _with_retry(uri, "upload", attempt, missing="no such bucket")


class _GcsRangeReader(io.RawIOBase):
    """Reads a ``gs://`` object by ranged GETs of at most CHUNK_SIZE (bounded memory).

    A read from the first byte to the end is checked against the object's crc32c at EOF.
    """

    def __init__(self, uri: str, meta: Any) -> None:
        import google_crc32c

        super().__init__()
        bucket, name = _object(uri)
        self._uri = uri
        self._meta = meta
        self._size = int(meta.size or 0)
        self._blob = get_client().bucket(bucket).blob(name, generation=meta.generation)
        self._pos = 0
        self._crc = google_crc32c.Checksum()
        self._crc_pos = 0  # bytes hashed contiguously from offset 0
        self._verified = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"{self._uri}: negative seek position")
        self._pos = base + offset
        return self._pos

    def _fetch(self, limit: int) -> bytes:
        if self._pos >= self._size:
            self._check_complete()
            return b""
        start = self._pos
        n = min(limit, CHUNK_SIZE, self._size - start)

        def attempt(_: int) -> bytes:
            data = self._blob.download_as_bytes(
                start=start,
                end=start + n - 1,
                raw_download=True,
                checksum=None,
                retry=None,
                timeout=_request_timeout(),
            )
            if len(data) != n:
                raise ChecksumMismatch(
                    f"{self._uri}: short read at offset {start} ({len(data)} of {n} bytes)"
                )
            return data

        data = _with_retry(self._uri, "read", attempt)
        if start == self._crc_pos:
            self._crc.update(data)
            self._crc_pos += n
        self._pos = start + n
        return data

    def _check_complete(self) -> None:
        if not self._verified and self._crc_pos == self._size:
            self._verified = True
            _verify(self._uri, self._meta, self._crc_pos, self._crc.digest())

    def readinto(self, buffer: Any) -> int:
        data = self._fetch(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        # RawIOBase.readall would issue one request per 8 KiB.
        return b"".join(iter(lambda: self._fetch(CHUNK_SIZE), b""))


# --------------------------------------------------------------------------------------------
# Public API


def read_bytes(uri: str | os.PathLike[str]) -> bytes:
    """Read a whole file or object.

    Args:
        uri: Local path, ``file://``, ``/gcs/...`` or ``gs://bucket/object``.

    Returns:
        The content (checked against size and crc32c for ``gs://``).
    """
    uri = os.fspath(uri)
    path = local_path(uri)
    if path is not None:
        with open(path, "rb") as fh:
            return fh.read()
    buf = io.BytesIO()
    _download_to(uri, buf)
    return buf.getvalue()


def read_text(uri: str | os.PathLike[str], encoding: str = "utf-8") -> str:
    """Read a whole file or object as text.

    Args:
        uri: Local path, ``file://``, ``/gcs/...`` or ``gs://bucket/object``.
        encoding: Text encoding.

    Returns:
        The decoded content.
    """
    return read_bytes(uri).decode(encoding)


def write_bytes(uri: str | os.PathLike[str], data: bytes, *, create_only: bool = False) -> None:
    """Write a whole file or object (local: atomically, parent folders created).

    Args:
        uri: Destination: local path, ``file://``, ``/gcs/...`` or ``gs://bucket/object``.
        data: The content.
        create_only: Refuse to replace an existing file/object (:class:`PreconditionFailed`).
    """
    uri = os.fspath(uri)
    path = local_path(uri)
    if path is not None:
        with _atomic_local_write(path, create_only=create_only) as fh:
            fh.write(data)
        return
    _upload(uri, data=bytes(data), create_only=create_only)


def write_text(
    uri: str | os.PathLike[str], text: str, *, create_only: bool = False, encoding: str = "utf-8"
) -> None:
    """Write text to a file or object (see :func:`write_bytes`).

    Args:
        uri: Destination.
        text: The content.
        create_only: Refuse to replace an existing file/object.
        encoding: Text encoding.
    """
    uri = os.fspath(uri)
    data = text.encode(encoding)
    if is_gcs(uri):
        _, name = _object(uri)
        ctype = mimetypes.guess_type(name)[0] or "text/plain"
        if ctype.startswith("text/"):
            ctype += f"; charset={encoding}"
        _upload(uri, data=data, create_only=create_only, content_type=ctype)
        return
    write_bytes(uri, data, create_only=create_only)


@contextlib.contextmanager
def open_read(uri: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a file or object for streaming binary reads (memory bounded by CHUNK_SIZE).

    For ``gs://`` the stream issues ranged GETs pinned to one object generation; a read to
    EOF from the start is verified against the object's crc32c (:class:`ChecksumMismatch`).

    Args:
        uri: Local path, ``file://``, ``/gcs/...`` or ``gs://bucket/object``.

    Yields:
        A readable, seekable binary stream.
    """
    uri = os.fspath(uri)
    path = local_path(uri)
    if path is not None:
        with open(path, "rb") as fh:
            yield fh
        return
    meta = _stat(uri)
    with io.BufferedReader(_GcsRangeReader(uri, meta), buffer_size=CHUNK_SIZE) as fh:
        yield fh  # type: ignore[misc]


def exists(uri: str | os.PathLike[str]) -> bool:
    """Whether a file/folder or object/"folder" exists.

    Args:
        uri: Local path (file or directory), ``file://``, ``/gcs/...``; ``gs://bucket``
            (the bucket), ``gs://bucket/name`` (an object, or any object under ``name/``).

    Returns:
        True if it exists.
    """
    uri = os.fspath(uri)
    path = local_path(uri)
    if path is not None:
        return os.path.exists(path)
    bucket, name = _split_gs(uri)
    client = get_client()
    if not name:
        return _with_retry(
            uri,
            "exists",
            lambda _: client.bucket(bucket).exists(retry=None, timeout=_request_timeout()),
        )

    def attempt(_: int) -> bool:
        b = client.bucket(bucket)
        if not name.endswith("/") and b.blob(name).exists(retry=None, timeout=_request_timeout()):
            return True
        folder = name if name.endswith("/") else name + "/"
        found = client.list_blobs(
            bucket, prefix=folder, max_results=1, retry=None, timeout=_request_timeout()
        )
        return any(True for _ in found)

    try:
        return _with_retry(uri, "exists", attempt, missing="no such bucket")
    except FileNotFoundError:
        return False


def list_files(prefix: str | os.PathLike[str]) -> list[str]:
    """All files/objects whose path starts with ``prefix`` (recursive), sorted.

    A plain string prefix, as in GCS: ``gs://b/run1`` also matches ``gs://b/run10/x``; end
    the prefix with ``/`` to mean a folder. Zero-byte folder markers (names ending in ``/``)
    and this module's temporary files are left out.

    Args:
        prefix: Local path prefix, ``file://`` prefix or ``gs://bucket/prefix``.

    Returns:
        Full paths/URIs in the same form as ``prefix``; empty if nothing matches.
    """
    prefix = os.fspath(prefix)
    path = local_path(prefix)
    if path is not None:
        return [_to_uri_form(p, prefix) for p in _local_matches(path)[0]]
    bucket, name = _split_gs(prefix)

    def attempt(_: int) -> list[str]:
        blobs = get_client().list_blobs(
            bucket, prefix=name or None, retry=None, timeout=_request_timeout()
        )
        return sorted(f"gs://{bucket}/{b.name}" for b in blobs if not b.name.endswith("/"))

    return _with_retry(prefix, "list", attempt, missing="no such bucket")


def delete(uri: str | os.PathLike[str], *, missing_ok: bool = False) -> None:
    """Delete one file or object.

    Args:
        uri: Local path, ``file://``, ``/gcs/...`` or ``gs://bucket/object``.
        missing_ok: Do not raise when it does not exist.

    Raises:
        FileNotFoundError: it does not exist (unless ``missing_ok``).
    """
    from google.api_core import exceptions as gexc

    uri = os.fspath(uri)
    path = local_path(uri)
    if path is not None:
        try:
            os.remove(path)
        except FileNotFoundError:
            if not missing_ok:
                raise FileNotFoundError(f"{uri}: no such file") from None
        return
    bucket, name = _object(uri)

    def attempt(n: int) -> None:
        try:
            get_client().bucket(bucket).blob(name).delete(retry=None, timeout=_request_timeout())
        except gexc.NotFound:
            if n > 1 or missing_ok:  # on a retry: our earlier attempt deleted it
                return
            raise

    _with_retry(uri, "delete", attempt)


def delete_prefix(prefix: str | os.PathLike[str], *, workers: int = 8) -> int:
    """Delete everything :func:`list_files` returns for ``prefix`` (end it with ``/`` for a folder).

    Locally, directories left empty under the prefix are removed too.

    Args:
        prefix: Local path prefix, ``file://`` prefix or ``gs://bucket/prefix``.
        workers: Parallel deletions.

    Returns:
        The number of files/objects deleted.
    """
    prefix = os.fspath(prefix)
    path = local_path(prefix)
    if path is not None:
        files, dirs = _local_matches(path)
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                os.remove(f)
        for top in [*dirs, *([path] if path.endswith("/") else [])]:
            for root, _, _ in os.walk(top, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(root)
        return len(files)
    uris = list_files(prefix)
    _parallel(lambda u: delete(u, missing_ok=True), [(u,) for u in uris], workers)
    return len(uris)


def upload_file(
    local: str | os.PathLike[str], uri: str | os.PathLike[str], *, create_only: bool = False
) -> None:
    """Copy a local file to ``uri`` (a ``gs://`` object, or a local path: atomic copy).

    Args:
        local: Source file (plain path, ``file://`` or ``/gcs/...``).
        uri: Destination.
        create_only: Refuse to replace an existing destination.
    """
    src = _require_local(os.fspath(local))
    uri = os.fspath(uri)
    if not os.path.isfile(src):
        raise FileNotFoundError(f"{local}: no such file")
    dst = local_path(uri)
    if dst is not None:
        _copy_local(src, dst, create_only=create_only)
        return
    _upload(uri, filename=src, create_only=create_only)


def download_file(uri: str | os.PathLike[str], local: str | os.PathLike[str]) -> None:
    """Copy ``uri`` to a local file, atomically; ``gs://`` objects are size- and crc32c-checked.

    Args:
        uri: Source (``gs://bucket/object`` or a local path).
        local: Destination file; parent folders are created.
    """
    uri = os.fspath(uri)
    dst = _require_local(os.fspath(local))
    src = local_path(uri)
    if src is not None:
        _copy_local(src, dst)
        return
    with _atomic_local_write(dst) as fh:
        _download_to(uri, fh)


def _parallel(fn: Callable[..., Any], items: list[tuple[Any, ...]], workers: int) -> None:
    """Run ``fn(*item)`` for every item on a thread pool; the first error wins and is raised."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not items:
        return
    if workers == 1 or len(items) == 1:
        for item in items:
            fn(*item)
        return
    with ThreadPoolExecutor(min(workers, len(items)), thread_name_prefix="storage") as pool:
        futures = [pool.submit(fn, *item) for item in items]
        try:
            for fut in as_completed(futures):
                fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def upload_dir(
    local_dir: str | os.PathLike[str], uri: str | os.PathLike[str], workers: int = 8
) -> list[str]:
    """Copy a local directory tree under ``uri`` (relative paths kept), in parallel.

    Args:
        local_dir: Source directory.
        uri: Destination folder (``gs://bucket/prefix`` or a local path).
        workers: Files transferred at once.

    Returns:
        The destination URIs written, sorted.
    """
    src = _require_local(os.fspath(local_dir))
    uri = os.fspath(uri)
    if not os.path.isdir(src):
        raise NotADirectoryError(f"{local_dir}: not a directory")
    rels: list[str] = []
    for root, subdirs, names in os.walk(src):
        subdirs.sort()
        rels.extend(
            os.path.relpath(os.path.join(root, n), src) for n in names if not _TMP_RE.match(n)
        )
    pairs = [(os.path.join(src, r), join(uri, r.replace(os.sep, "/"))) for r in sorted(rels)]
    _parallel(upload_file, pairs, workers)
    return [d for _, d in pairs]


def download_dir(
    uri: str | os.PathLike[str], local_dir: str | os.PathLike[str], workers: int = 8
) -> list[str]:
    """Copy every file/object under the folder ``uri`` into ``local_dir``, in parallel.

    Args:
        uri: Source folder (``gs://bucket/prefix`` or a local directory); a trailing ``/`` is
            implied, so ``gs://b/run1`` never pulls in ``gs://b/run10``.
        local_dir: Destination directory (created).
        workers: Files transferred at once.

    Returns:
        The local paths written, sorted.

    Raises:
        FileNotFoundError: nothing under ``uri``.
        ValueError: an object name would escape ``local_dir`` (``..``).
    """
    uri = os.fspath(uri)
    dest_root = os.path.abspath(_require_local(os.fspath(local_dir)))
    src_local = local_path(uri)
    if src_local is not None:
        if not os.path.isdir(src_local):
            raise FileNotFoundError(f"{uri}: no such directory")
        sources = _local_matches(os.path.join(src_local, ""))[0]
        rels = [os.path.relpath(s, src_local) for s in sources]
    else:
        folder = uri if uri.endswith("/") else uri + "/"
        sources = list_files(folder)
        rels = [s[len(folder) :] for s in sources]
    if not sources:
        raise FileNotFoundError(f"{uri}: no files under this prefix")
    pairs = []
    for src, rel in zip(sources, rels, strict=True):
        dst = os.path.normpath(os.path.join(dest_root, *rel.split("/")))
        if not dst.startswith(dest_root + os.sep):
            raise ValueError(f"{src}: name escapes the destination directory {local_dir}")
        pairs.append((src, dst))
    os.makedirs(dest_root, exist_ok=True)
    _parallel(download_file, pairs, workers)
    return sorted(d for _, d in pairs)


def copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy one file/object; any combination of local and ``gs://`` (gs→gs is server-side).

    Args:
        src: Source file or object.
        dst: Destination file or object (replaced if present).
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if not is_gcs(src):
        upload_file(src, dst)
        return
    if not is_gcs(dst):
        download_file(src, dst)
        return
    sb, sn = _object(src)
    db, dn = _object(dst)

    def attempt(_: int) -> None:
        client = get_client()
        source, target = client.bucket(sb).blob(sn), client.bucket(db).blob(dn)
        token, _, _ = target.rewrite(source, retry=None, timeout=_request_timeout())
        while token is not None:  # large or cross-location copies take several calls
            token, _, _ = target.rewrite(
                source, token=token, retry=None, timeout=_request_timeout()
            )

    _with_retry(src, f"copy to {dst}", attempt)


def sha256(uri: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of a file or object, streamed (bounded memory).

    Args:
        uri: Local path, ``file://``, ``/gcs/...`` or ``gs://bucket/object``.

    Returns:
        64 hex characters.
    """
    with open_read(uri) as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


__all__ = [
    "CHUNK_SIZE",
    "RETRY",
    "ChecksumMismatch",
    "PreconditionFailed",
    "RetrySettings",
    "StorageError",
    "copy",
    "delete",
    "delete_prefix",
    "download_dir",
    "download_file",
    "exists",
    "get_client",
    "is_gcs",
    "join",
    "list_files",
    "local_path",
    "open_read",
    "read_bytes",
    "read_text",
    "reset_client",
    "sha256",
    "upload_dir",
    "upload_file",
    "write_bytes",
    "write_text",
]
