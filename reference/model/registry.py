"""A set of object definitions: the project's shipped objects plus any user-supplied DDF folders.

Later definitions of an object ID replace earlier ones (a user's folder overrides the shipped
objects). Lookups are by object ID; the registry holds one definition (one version) per ID.
"""
from __future__ import annotations

from pathlib import Path as FsPath
from typing import Iterable, Iterator

from reference.model.ddf import DdfError, load_ddf_file
from reference.model.path import Path
from reference.model.types import ObjectDef, ResourceDef

#: Where the project's own DDF files live (package data, see pyproject.toml).
OBJECTS_DIR = FsPath(__file__).resolve().parent.parent / "objects"


class ObjectRegistry:
    """Object definitions keyed by object ID."""

    def __init__(self, objects: Iterable[ObjectDef] = ()) -> None:
        self._objects: dict[int, ObjectDef] = {}
        for o in objects:
            self.add(o)

    @classmethod
    def default(cls) -> "ObjectRegistry":
        """A fresh registry holding the project's shipped objects (reference/objects/*.xml)."""
        reg = cls()
        reg.add_folder(OBJECTS_DIR)
        return reg

    def add(self, obj: ObjectDef) -> None:
        """Add or replace the definition of ``obj.id``."""
        self._objects[obj.id] = obj

    def add_file(self, path: str | FsPath) -> list[ObjectDef]:
        """Load one DDF file (raises :class:`DdfError`); its objects override earlier ones."""
        objs = load_ddf_file(path)
        for o in objs:
            self.add(o)
        return objs

    def add_folder(self, path: str | FsPath) -> list[ObjectDef]:
        """Load every ``*.xml`` directly in ``path``, in file-name order, all or nothing: if any file
        is malformed, :class:`DdfError` is raised and the registry is left unchanged."""
        folder = FsPath(path)
        if not folder.is_dir():
            raise DdfError(str(folder), "not a directory")
        loaded: list[ObjectDef] = []
        for f in sorted(folder.glob("*.xml")):
            loaded.extend(load_ddf_file(f))
        for o in loaded:
            self.add(o)
        return loaded

    def get(self, oid: int) -> ObjectDef | None:
        return self._objects.get(oid)

    def resource_def(self, path: Path) -> ResourceDef | None:
        """The definition of the resource ``path`` names (depth 3 or 4), or ``None``."""
        if path.resource_id is None:
            return None
        obj = self._objects.get(path.object_id)  # type: ignore[arg-type]
        return None if obj is None else obj.resource(path.resource_id)

    def __contains__(self, oid: object) -> bool:
        return oid in self._objects

    def __iter__(self) -> Iterator[ObjectDef]:
        """Definitions in ascending object-ID order."""
        return iter([self._objects[k] for k in sorted(self._objects)])

    def __len__(self) -> int:
        return len(self._objects)

    def ids(self) -> list[int]:
        return sorted(self._objects)
