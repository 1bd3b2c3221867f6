"""TOML loading with error positions for the suite's data files (catalogue, profiles).

``tomllib`` reports ``(line N, column M)`` for syntax errors but knows nothing of line numbers
once a document has parsed, so semantic errors ("unknown key", "wrong type") are located by
scanning the source text for the table header and key. The scan is deliberately simple: it
understands ``[table]`` / ``[[array.of.tables]]`` headers, dotted keys on the left of ``=``, and
inline tables one level deep, which is all the suite's formats use. When a key cannot be found,
the line of the enclosing table header is given instead (never a wrong line number: line 0 means
"the file as a whole").
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*(\]\]?)\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.\-]+)\s*=""")


class DataFileError(Exception):
    """A data file is malformed. ``str()`` is ``"<file>:<line>: <what is wrong>"``."""

    def __init__(self, path: Path | str, line: int, message: str) -> None:
        self.path = Path(path)
        self.line = line
        self.message = message
        super().__init__(f"{self.path}:{line}: {message}" if line else f"{self.path}: {message}")


@dataclass
class TomlSource:
    """A parsed TOML document plus its text, able to point at a key's line."""

    path: Path
    text: str
    data: dict[str, Any]

    @classmethod
    def load(cls, path: Path | str) -> "TomlSource":
        """Read and parse ``path``; raise :class:`DataFileError` with line/column on bad TOML."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise DataFileError(p, 0, f"cannot read file: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise DataFileError(p, 0, f"not UTF-8 text: {exc}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            msg = str(exc)
            m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
            line = int(m.group(1)) if m else 0
            raise DataFileError(p, line, f"TOML syntax error: {msg}") from None
        return cls(p, text, data)

    # -- locating -------------------------------------------------------------------------
    def _headers(self) -> list[tuple[int, str, bool]]:
        """(line number, dotted table name, is_array) for every table header, in order."""
        out = []
        in_multiline = False
        for no, raw in enumerate(self.text.splitlines(), start=1):
            if raw.count('"""') % 2 == 1 or raw.count("'''") % 2 == 1:
                in_multiline = not in_multiline
                continue
            if in_multiline:
                continue
            m = _HEADER.match(raw)
            if m and not _KEY.match(raw):
                name = ".".join(part.strip().strip('"').strip("'") for part in m.group(2).split("."))
                out.append((no, name, m.group(1) == "[["))
        return out

    def table_line(self, table: str, index: int | None = None) -> int:
        """Line of the header ``[table]`` (or the ``index``-th ``[[table]]``); 0 if absent.

        A table defined implicitly by a sub-table header (``[start.factory]`` defines
        ``start``) resolves to the first such sub-table header.
        """
        seen = 0
        for no, name, is_array in self._headers():
            if name == table:
                if index is None or not is_array:
                    return no
                if seen == index:
                    return no
                seen += 1
        if index is None:
            for no, name, _ in self._headers():
                if name.startswith(table + "."):
                    return no
        return 0

    def key_line(self, table: str, key: str, index: int | None = None) -> int:
        """Line where ``key`` is assigned inside ``[table]`` (``""`` = top level).

        Falls back to an inline ``table = { key = ... }`` or dotted ``table.key =`` at an outer
        level, then to the table header line, then 0.
        """
        lines = self.text.splitlines()
        headers = self._headers()
        start = 0
        if table:
            start = self.table_line(table, index)
            if start == 0:
                # maybe defined as dotted key / inline table in the parent
                parent, _, leaf = table.rpartition(".")
                outer = self.key_line(parent, leaf) if leaf else 0
                return outer
        end = len(lines) + 1
        for no, _, _ in headers:
            if no > start:
                end = no
                break
        for no in range(start + 1, end):
            m = _KEY.match(lines[no - 1])
            if m:
                k = m.group(1).strip('"').strip("'")
                if k == key or k.startswith(key + "."):
                    return no
            # inline-table occurrence: `x = { key = 1 }`
            if re.search(r"[{,]\s*" + re.escape(key) + r"\s*=", lines[no - 1]):
                return no
        return start
