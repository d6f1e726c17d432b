"""A real small disk that fills: a tmpfs of a few MiB, mounted for a test or a chaos drill.

``SmallDisk`` mounts ``tmpfs -o size=3m`` on a folder (root only: the development and CI
machines run as root), ``fill()`` writes a filler file until the kernel answers ENOSPC and
``free()`` deletes it, so the disk is full or not at the moment a test chooses. Never imported
by edge/.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

FILL_CHUNK = 64 * 1024


def can_mount() -> str | None:
    """None when a tmpfs can be mounted here, else why not (the reason a test skips with)."""
    if os.geteuid() != 0:
        return "mounting a small tmpfs needs root (CI and the development machine run as root)"
    return None


class SmallDisk:
    """A mounted tmpfs of ``size_mib`` MiB at ``path``; fill and free it at will."""

    def __init__(self, path: Path, *, size_mib: int = 3) -> None:
        self.path = Path(path)
        self.size_mib = size_mib
        self.filler = self.path / "filler.bin"
        self.mounted = False

    def mount(self) -> SmallDisk:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mib}m", "tmpfs", str(self.path)],
                       check=True, capture_output=True)
        self.mounted = True
        return self

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True)
            self.mounted = False

    def fill(self, *, leave: int = 0) -> int:
        """Write the filler until ENOSPC (appending to it when it exists), then give back ``leave`` bytes;
        returns bytes added."""
        added = 0
        chunk = b"\0" * FILL_CHUNK
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (FILL_CHUNK, 4096, 1):  # big steps first, then the last bytes
                while True:
                    try:
                        added += os.write(fd, chunk[:size])
                    except OSError as e:
                        if e.errno != errno.ENOSPC:
                            raise
                        break
            if leave:
                os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
        finally:
            os.close(fd)
        return added - leave

    def free(self) -> None:
        """Give the space back (delete the filler)."""
        self.filler.unlink(missing_ok=True)

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize


@contextlib.contextmanager
def small_disk(path: Path, *, size_mib: int = 3) -> Iterator[SmallDisk]:
    """A mounted :class:`SmallDisk`, unmounted on the way out (also after a failure)."""
    disk = SmallDisk(path, size_mib=size_mib).mount()
    try:
        yield disk
    finally:
        disk.unmount()
