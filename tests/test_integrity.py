"""Files that carry the digest of their content (pipeline/integrity.py): what the digest sees, the refusal of
a damaged file, and one line naming the path when a write fails (full disk, no permission), with no
temporary file left behind."""
from __future__ import annotations

import errno
import hashlib
import pickle
import subprocess
from pathlib import Path

import pytest
import torch

from faults_support import overwrite_tensor_data
from pipeline.integrity import DIGEST_KEY, DamagedFileError, WriteError, content_digest, load_sealed, save_sealed


def payload() -> dict:
    generator = torch.Generator().manual_seed(0)
    return {"spec": {"backbone": "small_resnet", "widths": [8, 16]},
            "state_dict": {"w": torch.randn(64, 32, generator=generator), "b": torch.zeros(3, dtype=torch.bfloat16),
                           "step": torch.tensor(7)}, "step": 3}


def test_the_digest_sees_every_byte_dtype_shape_and_value_but_not_key_order():
    reference = content_digest(payload())
    assert reference == content_digest(payload())  # deterministic
    flipped = payload()
    flipped["state_dict"]["w"].view(torch.int32)[10, 3] ^= 1  # one bit of one float
    reordered = payload()
    reordered["state_dict"] = dict(reversed(list(reordered["state_dict"].items())))
    retyped = payload()
    retyped["state_dict"]["b"] = retyped["state_dict"]["b"].half()
    reshaped = payload()
    reshaped["state_dict"]["w"] = reshaped["state_dict"]["w"].reshape(32, 64)
    renumbered = {**payload(), "step": 4}
    assert content_digest(reordered) == reference
    assert len({reference, *(content_digest(p) for p in (flipped, retyped, reshaped, renumbered))}) == 5
    assert len(reference) == len(hashlib.sha256().hexdigest())


def test_a_sealed_file_round_trips_and_damage_inside_it_is_refused_naming_it(tmp_path):
    path = tmp_path / "model.pt"
    save_sealed(path, payload(), "model")
    loaded = load_sealed(path, "model")
    assert DIGEST_KEY not in loaded and torch.equal(loaded["state_dict"]["w"], payload()["state_dict"]["w"])
    assert overwrite_tensor_data(path) > 0
    assert DIGEST_KEY in torch.load(path, weights_only=True)  # still parses: only the digest tells
    with pytest.raises(DamagedFileError, match=f"model {path} is damaged"):
        load_sealed(path, "model")


def test_a_file_without_a_digest_or_with_code_is_refused_without_the_unsafe_hint(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save(payload(), plain)
    with pytest.raises(DamagedFileError, match="carries no content digest"):
        load_sealed(plain, "checkpoint")
    coded = tmp_path / "coded.pt"
    with open(coded, "wb") as handle:
        pickle.dump({"x": Path("anything")}, handle)  # a class torch's safe loader refuses
    with pytest.raises(DamagedFileError) as refused:
        load_sealed(coded, "checkpoint")
    message = str(refused.value)
    assert str(coded) in message and "cannot be loaded" in message and "\n" not in message
    assert "weights_only" not in message  # PyTorch's advice to load it anyway is not repeated


@pytest.mark.parametrize("error, named", [
    (RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 519360 vs 519252"), "ENOSPC"),
    (OSError(errno.ENOSPC, "No space left on device"), "ENOSPC"),
    (PermissionError(errno.EACCES, "Permission denied"), "EACCES"),
])
def test_a_failed_write_is_one_line_naming_the_path_and_leaves_no_temporary_file(tmp_path, monkeypatch, error,
                                                                                   named):
    """As torch reports them: a full disk surfaces from its zip writer as a position mismatch."""
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # the bytes reach the disk, then the write fails
        raise error

    monkeypatch.setattr(torch, "save", failing_save)
    path = tmp_path / "checkpoints" / "last.pt"
    with pytest.raises(WriteError) as refused:
        save_sealed(path, payload(), "checkpoint")
    message = str(refused.value)
    assert message.startswith(f"cannot write checkpoint {path}: ") and named in message and "\n" not in message
    assert not list(path.parent.iterdir())  # neither the file nor a temporary one


def test_a_full_filesystem_is_named_with_enospc(tmp_path):
    """A real 64 KiB tmpfs (skipped where this process may not mount one)."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        big = {"w": torch.zeros(256, 1024)}  # 1 MiB
        with pytest.raises(WriteError, match=f"cannot write checkpoint {folder / 'last.pt'}: .*ENOSPC"):
            save_sealed(folder / "last.pt", big, "checkpoint")
        assert not list(folder.iterdir())
    finally:
        subprocess.run(["umount", str(folder)], check=True)
