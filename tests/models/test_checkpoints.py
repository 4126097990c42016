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


def test_wrong_shape_user_checkpoint_is_not_told_to_delete_it(tmp_path):
    """A `gfss-bench train` file passed with --checkpoint is the user's own: no "delete the file to retrain"."""
    import torch

    from gfss_bench.models.checkpoints import load_checkpoint_segmenter
    from gfss_bench.models.small_pspnet import SmallPSPNet, SmallPSPNetConfig

    path = tmp_path / "fold0.pt"
    zoo.save_weights_file(SmallPSPNet(SmallPSPNetConfig(num_outputs=16)), path, "0" * 16)
    payload = torch.load(path, weights_only=True)
    payload["arch"]["feature_channels"] = 48  # the tensors no longer fit the architecture the file names
    torch.save(payload, path)
    with pytest.raises(GFSSError) as error:
        load_checkpoint_segmenter(path, expected_outputs=16)
    message = str(error.value)
    assert str(path) in message and "`gfss-bench train` file" in message and "size mismatch" in message
    assert "delete" not in message and "\n" not in message and len(message) < 600
