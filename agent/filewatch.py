"""Noticing that a set of files changed on disk (a Kubernetes Secret rotated in place), for the
certificates the agent reloads without a restart: the REST API's (agent/api/tls.py) and
PostgreSQL's (agent/postgres/tls.py).

A change is seen by `stat` alone (mtime, size, inode per file: a Secret volume swaps a symlink,
which changes the inode), never by reading the files, so checking is cheap enough for every
TLS handshake. A new set is either accepted (loaded) or refused (it did not load): a refused
set is not tried again until the files change once more, so its error is logged once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

# What the files looked like: (path, mtime_ns, size, inode) per file; a missing file is all
# zeros, so that its return counts as a change.
FileSignature = tuple[tuple[str, int, int, int], ...]


def file_signature(paths: Sequence[str]) -> FileSignature:
    found = []
    for path in paths:
        try:
            st = os.stat(path)
            found.append((path, st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            found.append((path, 0, 0, 0))
    return tuple(found)


class FileSetWatch:
    """The signature of `paths` when they were last accepted, and the last one refused."""

    def __init__(self, paths: Sequence[str], *, accepted: bool = True) -> None:
        """`accepted`: the files as they are now count as accepted (the caller has just
        loaded them); otherwise the first `pending` reports them."""
        self.paths = tuple(paths)
        self._accepted: FileSignature | None = file_signature(self.paths) if accepted else None
        self._refused: FileSignature | None = None

    def pending(self) -> FileSignature | None:
        """The files' signature when it is neither the accepted nor the refused one (they
        changed and should be loaded now), else None."""
        now = file_signature(self.paths)
        if now in (self._accepted, self._refused):
            return None
        return now

    def accept(self, signature: FileSignature) -> None:
        self._accepted = signature
        self._refused = None

    def refuse(self, signature: FileSignature) -> None:
        self._refused = signature
