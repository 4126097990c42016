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


def current_umask() -> int:
    """The process umask, read from /proc where possible (setting and restoring it would briefly change it for
    every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def usual_mode(folder: bool = False) -> int:
    """The mode `open()` or `mkdir()` would give a new file or folder under the umask (0644 / 0755 under 022);
    `tempfile` creates them private (0600 / 0700), which a shared results folder or cache must not inherit."""
    return (0o777 if folder else 0o666) & ~current_umask()


def make_temporary_file(folder: Path, name: str) -> tuple[int, str]:
    """(fd, path) of a new temporary file in `folder` for a later rename onto `folder / name`, with the usual
    mode (not mkstemp's 0600)."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        os.fchmod(fd, usual_mode())
    except OSError:  # e.g. a file system without permissions; the file stays as mkstemp made it
        pass
    return fd, tmp


def check_writable_folder(path: Path, what: str, fix: str) -> None:
    """Create and remove a probe file in `path`, or, while it does not exist, in the nearest folder above it (where
    it would be created; nothing is left behind): a GFSSError naming `what` and the folder when that fails. Called
    before long work whose output could not be stored otherwise."""
    path = Path(path).expanduser()
    existing = path
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, f"{existing} is not a folder")
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise GFSSError(f"{what} {path} cannot be written ({error.strerror or error}); {fix}") from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: readers never see half a file. The file
    gets the usual mode under the umask (`usual_mode`), new folders too."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = make_temporary_file(path.parent, path.name)
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
