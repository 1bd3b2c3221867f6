"""Crash-safe persistence of the client's bootstrap information (Security /0, Server /1,
Access Control /2, OSCORE /21 — the objects Core 1.1.1 §6.1 calls Bootstrap Information).

Every save writes a temporary file in the same directory, flushes and fsyncs it, renames it over
the old file with :func:`os.replace` (atomic on POSIX) and fsyncs the directory. A process killed
at any instant therefore leaves either the complete old state or the complete new state, never a
mix; a half-written temporary file is ignored (and cleaned up) on the next start.
"""
from __future__ import annotations

import json
import os
from pathlib import Path as FsPath
from typing import Any

from reference.client.store import TreeData, tree_from_json, tree_to_json

STATE_FORMAT = "lwm2m-client-state/1"
STATE_FILE = "client-state.json"


class StateError(ValueError):
    """The state file exists but is unreadable or malformed."""


def atomic_write_bytes(path: FsPath, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (temp file + fsync + os.replace + dir fsync)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(dfd)


class StateStore:
    """The state of one client in ``state_dir`` (one JSON document)."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = FsPath(state_dir)
        self.path = self.dir / STATE_FILE

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self) -> tuple[str, TreeData, dict[str, Any]] | None:
        """``(endpoint, bootstrap-object data, meta)`` or None when nothing was saved yet.
        Leftover temporary files from a killed writer are removed."""
        for leftover in self.dir.glob(f".{STATE_FILE}.tmp-*") if self.dir.is_dir() else []:
            try:
                leftover.unlink()
            except OSError:
                pass
        if not self.path.is_file():
            return None
        try:
            doc = json.loads(self.path.read_text())
            if doc.get("format") != STATE_FORMAT:
                raise StateError(f"{self.path}: format {doc.get('format')!r}, expected {STATE_FORMAT!r}")
            return str(doc["endpoint"]), tree_from_json(doc["objects"]), dict(doc.get("meta", {}))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            if isinstance(e, StateError):
                raise
            raise StateError(f"{self.path}: unreadable state: {e}") from None

    def save(self, endpoint: str, objects: TreeData, meta: dict[str, Any] | None = None) -> None:
        doc = {"format": STATE_FORMAT, "endpoint": endpoint, "objects": tree_to_json(objects),
               "meta": meta or {}}
        atomic_write_bytes(self.path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())

    def clear(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
