"""Where gfss-bench keeps generated data, trained segmenters and features, and atomic file writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from gfss_bench.errors import GFSSError


def cache_dir() -> Path:
    """`$GFSS_BENCH_CACHE`, default `~/.cache/gfss-bench`; created on first use, must be writable."""
    path = Path(os.environ.get("GFSS_BENCH_CACHE") or Path.home() / ".cache" / "gfss-bench").expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        raise GFSSError(
            f"cache folder {path} cannot be written ({error.strerror or error}); "
            "set GFSS_BENCH_CACHE to a writable folder"
        ) from None
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
