"""Corrupted segmenter weights give a clear error naming the file and the fix; cache writes are atomic."""

import threading

import pytest

from gfss_bench.errors import GFSSError
from gfss_bench.models import zoo
from gfss_bench.paths import atomic_write_bytes, cache_dir


def test_corrupted_cached_segmenter_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", tmp_path / "no-shipped-weights")  # force the cache path
    cached = cache_dir() / "segmenters" / f"{zoo.config_hash('synthetic5i', 0, 'practical')}.pt"
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"PK\x03\x04 not a torch checkpoint")
    try:
        with pytest.raises(GFSSError) as error:
            zoo.builtin_segmenter("synthetic5i", 0, "practical", progress=False)
    finally:
        cached.unlink()
    assert str(cached) in str(error.value) and "delete the file to retrain" in str(error.value)


def test_truncated_shipped_weights_are_a_clear_error(tmp_path):
    shipped = zoo.WEIGHTS_DIR / f"{zoo.weights_name('synthetic5i', 0, 'practical')}.pt"
    broken = tmp_path / "broken.pt"
    broken.write_bytes(shipped.read_bytes()[:1000])
    with pytest.raises(GFSSError, match="cannot be loaded"):
        zoo.load_weights_file(broken)


def test_concurrent_atomic_writes_leave_one_whole_file(tmp_path):
    path = tmp_path / "cache" / "segmenter.pt"
    payloads = [bytes([i]) * 200_000 for i in range(8)]
    threads = [threading.Thread(target=atomic_write_bytes, args=(path, p)) for p in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert path.read_bytes() in payloads
    assert [p.name for p in path.parent.iterdir()] == ["segmenter.pt"]  # no temporaries left
