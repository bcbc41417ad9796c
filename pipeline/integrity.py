"""Files that carry the digest of their own content: every checkpoint and saved model.

A file that still parses can be damaged: bytes overwritten inside a tensor's data load without a word
(torch's zip reader checks no CRC), and a run then resumes from, or a student learns from, weights nobody
trained (issue 32: 16 KiB of plausible floats in a student's `last.pt`). So each payload is written with
the SHA-256 of its tensors and structure, in the same atomic write, and checked when it is read back: a
mismatch is a one-line `DamagedFileError` naming the file. Writes go to a temporary file renamed into
place; a full disk or an unwritable folder is one line naming the path, and the temporary file is removed.
JSON outputs (metrics, curves) are written atomically too (`write_json`).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

# torch is imported where it is used: the stages' error mapping imports this module's errors, and the report
# stage must not pay torch's import (tests/test_pipeline_dvc.py guards it).
DIGEST_KEY = "content_sha256"
# PyTorch's advice on a refused file ("... weights_only=False will likely succeed") is advice to run
# whatever code the file holds: never repeated to the user.
_UNSAFE_HINTS = ("weights_only", "WeightsUnpickler", "Re-running `torch.load`")


class DamagedFileError(ValueError):
    """A checkpoint or model file that cannot be read, or whose content is not what was written."""


class WriteError(OSError):
    """A file could not be written (full disk, no permission): one line naming the path."""


def content_digest(payload: Any) -> str:
    """SHA-256 over the payload's structure and every tensor's dtype, shape and bytes (the digest key left out)."""
    import torch

    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"T{value.dtype}{tuple(value.shape)}".encode())
            if flat.numel():
                digest.update(flat.view(torch.uint8).numpy())  # the buffer itself, not a bytes copy
        elif isinstance(value, dict):
            digest.update(f"D{len(value)}".encode())
            for key in sorted(value, key=repr):
                if key != DIGEST_KEY:
                    feed(key)
                    feed(value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(f"L{len(value)}".encode())
            for item in value:
                feed(item)
        else:
            digest.update(f"V{type(value).__name__}:{value!r}".encode())

    feed(payload)
    return digest.hexdigest()


def save_sealed(path: str | Path, payload: dict[str, Any], what: str,
                before_rename: Callable[[], None] | None = None) -> None:
    """Write `payload` with its digest to a temporary file beside `path`, then rename it into place."""
    import torch

    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({**payload, DIGEST_KEY: content_digest(payload)}, tmp)
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        tmp.unlink(missing_ok=True)
        raise WriteError(f"cannot write {what} {path}: {_write_reason(err)}") from None


def load_sealed(path: str | Path, what: str, map_location: Any = "cpu") -> dict[str, Any]:
    """The payload at `path`, its digest checked; a one-line DamagedFileError naming the file otherwise."""
    import torch

    path = Path(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, random bytes, a pickle with code: torch raises many types
        raise DamagedFileError(f"{what} {path} cannot be loaded ({type(err).__name__}: {first_safe_line(err)})"
                               ) from None
    if not isinstance(payload, dict) or DIGEST_KEY not in payload:
        raise DamagedFileError(f"{what} {path} carries no content digest (a foreign file, or one written before "
                               "digests): re-run the stage that writes it")
    written = payload.pop(DIGEST_KEY)
    if content_digest(payload) != written:
        raise DamagedFileError(f"{what} {path} is damaged: its content does not match the digest written with it")
    return payload


def set_aside(path: Path) -> Path:
    """Rename a damaged file or folder to `NAME.damaged-TIME` beside it (never deleted); the new path."""
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, aside)
    return aside


def first_safe_line(err: Exception) -> str:
    """The first line of an error's message, without PyTorch's advice to load an untrusted file anyway."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    safe = [line for line in lines if not any(hint in line for hint in _UNSAFE_HINTS)]
    return (safe or ["unreadable"])[0][:200]


def _write_reason(err: BaseException) -> str:
    """ENOSPC and EACCES by name; torch's zip writer reports a full disk only as a position mismatch."""
    number = getattr(err, "errno", None)
    if number in (errno.ENOSPC, errno.EDQUOT) or "unexpected pos" in str(err) or "No space left" in str(err):
        return "no space left on the device (ENOSPC)"
    if number in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied ({errno.errorcode[number]})"
    return f"{type(err).__name__}: {first_safe_line(err)}"


def write_json(path: Path, payload: Any) -> None:
    """Atomic write, so a metrics file that exists is always complete; under torchrun rank 0 writes."""
    from pipeline.infra import is_main_process

    if not is_main_process():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
