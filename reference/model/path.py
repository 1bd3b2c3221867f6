"""LwM2M paths: /{object}/{instance}/{resource}/{resource instance} (Core 1.1.1 §6.1, §7.1)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

MAX_ID = 65534  # 65535 is reserved (MAX_ID) by Core §7.1 / TLV; IDs are 16-bit unsigned


class PathError(ValueError):
    """A string or URI-Path sequence is not a valid LwM2M path."""


@dataclass(frozen=True, order=True)
class Path:
    """A path at any depth. Unset trailing levels are ``None``; ``Path()`` is the root ``/``."""

    object_id: int | None = None
    instance_id: int | None = None
    resource_id: int | None = None
    resource_instance_id: int | None = None

    def __post_init__(self) -> None:
        seen_none = False
        for part in self.parts_all():
            if part is None:
                seen_none = True
            elif seen_none:
                raise PathError(f"path level set after an unset level: {self.parts_all()}")
            elif not (0 <= part <= MAX_ID):
                raise PathError(f"path component {part} outside 0..{MAX_ID}")

    def parts_all(self) -> tuple[int | None, ...]:
        return (self.object_id, self.instance_id, self.resource_id, self.resource_instance_id)

    @property
    def parts(self) -> tuple[int, ...]:
        return tuple(p for p in self.parts_all() if p is not None)

    @property
    def depth(self) -> int:
        """0 root, 1 object, 2 object instance, 3 resource, 4 resource instance."""
        return len(self.parts)

    @classmethod
    def of(cls, *parts: int) -> "Path":
        if len(parts) > 4:
            raise PathError(f"too many path components: {parts}")
        return cls(*parts)

    @classmethod
    def parse(cls, text: str | Iterable[str]) -> "Path":
        """Parse ``"/3/0/1"`` or a URI-Path segment sequence such as ``("3", "0", "1")``."""
        segments = [s for s in text.strip().split("/") if s != ""] if isinstance(text, str) else list(text)
        if len(segments) > 4:
            raise PathError(f"too many path components in {text!r}")
        parts: list[int] = []
        for s in segments:
            if not s.isdigit() or (len(s) > 1 and s[0] == "0"):
                raise PathError(f"path component {s!r} is not a decimal ID in {text!r}")
            parts.append(int(s))
        return cls.of(*parts)

    def child(self, part: int) -> "Path":
        return Path.of(*self.parts, part)

    @property
    def parent(self) -> "Path":
        return Path.of(*self.parts[:-1])

    def contains(self, other: "Path") -> bool:
        """True if ``other`` is this path or below it."""
        return other.parts[: self.depth] == self.parts

    def uri_path(self) -> tuple[str, ...]:
        return tuple(str(p) for p in self.parts)

    def __str__(self) -> str:
        return "/" + "/".join(str(p) for p in self.parts)

    def __repr__(self) -> str:
        return f"Path({str(self)!r})"
