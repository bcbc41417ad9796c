"""Checkpoint folders resume only the run whose settings wrote them."""
from pipeline.train.fingerprint import claim_checkpoint_dir, file_sha256


def test_same_settings_resume_other_settings_start_fresh(tmp_path):
    folder = tmp_path / "checkpoints"
    settings = {"lr": 0.1, "nested": {"steps": 5}}
    assert claim_checkpoint_dir(folder, settings) is False  # nothing to resume yet
    (folder / "last.pt").write_bytes(b"state")
    assert claim_checkpoint_dir(folder, {"nested": {"steps": 5}, "lr": 0.1}) is True  # key order is irrelevant
    assert (folder / "last.pt").exists()
    assert claim_checkpoint_dir(folder, {"lr": 0.2, "nested": {"steps": 5}}) is False
    assert not (folder / "last.pt").exists(), "a checkpoint of other settings must not survive"


def test_file_sha256_matches_hashlib(tmp_path):
    import hashlib

    path = tmp_path / "blob"
    payload = bytes(range(256)) * 5000
    path.write_bytes(payload)
    assert file_sha256(path) == hashlib.sha256(payload).hexdigest()
