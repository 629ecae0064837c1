"""Small real file systems for disk-full tests: a tmpfs of a few MiB, or ext4 with 1 KiB blocks
on a loop device (where SQLite's WAL index can end up with holes).

Both need root (mount); where mounting is refused the test is skipped with the reason.

Examples:
    with small_disk(tmp_path / "disk", 4 * 1024 * 1024) as disk:
        fill(disk / "filler", leave=512 * 1024)   # leave 512 KiB free
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

#: Bytes written at a time while filling a disk.
FILL_CHUNK = 64 * 1024


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@contextlib.contextmanager
def small_disk(
    directory: Path, size_bytes: int, kind: Literal["tmpfs", "ext4-1k"] = "tmpfs"
) -> Iterator[Path]:
    """A file system of `size_bytes` mounted at `directory`, unmounted on exit."""
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    if kind == "tmpfs":
        mounted = _run("mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(directory))
    else:
        if shutil.which("mkfs.ext4") is None:
            pytest.skip("mkfs.ext4 is not installed")
        image = directory.with_suffix(".img")
        with image.open("wb") as f:
            f.truncate(size_bytes)
        made = _run("mkfs.ext4", "-q", "-F", "-b", "1024", "-m", "0", str(image))
        if made.returncode != 0:
            pytest.skip(f"mkfs.ext4 failed: {made.stderr.strip()}")
        mounted = _run("mount", "-o", "loop", str(image), str(directory))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a {kind} here: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        unmounted = _run("umount", "-l", str(directory))
        assert unmounted.returncode == 0, unmounted.stderr


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def fill(path: Path, leave: int) -> int:
    """Write zeros to `path` until about `leave` bytes are free (or the disk is full);
    returns the bytes written."""
    written = 0
    chunk = b"\0" * FILL_CHUNK
    with path.open("ab") as f:
        while (room := free_bytes(path.parent) - leave) > 0:
            try:
                f.write(chunk[: min(FILL_CHUNK, room)])
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                break
            written += min(FILL_CHUNK, room)
    return written
