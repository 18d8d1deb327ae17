"""Provenance recorded with every run: versions, git commit, device, host and date."""

from __future__ import annotations

import functools
import platform
import socket
import subprocess
from datetime import UTC, datetime
from typing import Any


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the qscale checkout (with ``+dirty`` when it has local changes), or None."""
    from qscale.paths import checkout_root

    root = checkout_root()
    if root is None or not (root / ".git").exists():
        return None
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", "qscale"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "") if sha else None


def device_name(device: str = "cpu") -> str:
    """``"NVIDIA H100 80GB HBM3"`` for a CUDA device, ``"cpu: x86_64 (2 threads)"`` otherwise."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu: {platform.machine()} ({torch.get_num_threads()} threads)"


def provenance(device: str = "cpu") -> dict[str, Any]:
    """The provenance dict stored with each run."""
    import torch
    import transformers

    from qscale import __version__

    return {
        "qscale_version": __version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python_version": platform.python_version(),
        "device": device_name(device),
        "hostname": socket.gethostname(),
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
