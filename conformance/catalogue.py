"""The requirement catalogue (fixtures/requirements.toml): loading, validation, selection.

Every conformance test names the requirement(s) it checks with ``@pytest.mark.requirement``;
the catalogue is the closed list of valid labels. Its format is documented at the top of the
data file itself. :func:`load_catalogue` either returns a fully validated :class:`Catalogue` or
raises :class:`~conformance.tomlsource.DataFileError` whose message is ``file:line: problem``.

Selection patterns (``--requirement``): a pattern selects a requirement when it is

* the requirement's label (case-insensitive), which also selects every requirement derived from
  it (``DM-SC-USE-X`` selects ``DM-SC-USE-X``, ``DM-SC-USE-X.1``, ``DM-SC-USE-X.2``), or
* a *family*: a run of whole dash-separated tokens of the label (``HLF`` selects every
  ``LightweightM2M-HLF-…`` label, ``DM-SC`` every smart-card one, ``DM`` all ``DM-…`` labels).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from conformance.tomlsource import DataFileError, TomlSource

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CATALOGUE = ROOT / "fixtures" / "requirements.toml"

KINDS = ("stated", "derived")
STRENGTHS = ("SHALL", "SHOULD", "MAY")
ROLES = ("client", "server", "bootstrap-server")

_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)+(?:\.[0-9]+)*$")
_REQUIRED = {"label": str, "text": str, "kind": str, "strength": str, "roles": list, "source": dict}
_OPTIONAL = {"parent": str, "spec": list}
_SOURCE_KEYS = {"seed": str, "passage": str}
_SPEC_KEYS = {"title": str, "url": str}


@dataclass(frozen=True)
class SpecRef:
    """A specification clause the requirement maps to (shown as a link in reports)."""

    title: str
    url: str


@dataclass(frozen=True)
class Requirement:
    """One catalogue entry (see the header of fixtures/requirements.toml for the fields)."""

    label: str
    text: str
    kind: str
    strength: str
    roles: tuple[str, ...]
    seed: str
    passage: str
    parent: str | None = None
    spec: tuple[SpecRef, ...] = ()
    line: int = 0

    @property
    def tokens(self) -> list[str]:
        return self.label.upper().split("-")


def normalize_text(s: str) -> str:
    """Whitespace- and quote-insensitive form used to check that passages are verbatim."""
    s = unicodedata.normalize("NFKC", s)
    s = s.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    return " ".join(s.split())


@dataclass
class Catalogue:
    """Validated requirements in file order, addressable by label."""

    path: Path
    requirements: dict[str, Requirement] = field(default_factory=dict)

    def __contains__(self, label: object) -> bool:
        return isinstance(label, str) and label in self.requirements

    def __iter__(self) -> Iterator[Requirement]:
        return iter(self.requirements.values())

    def __len__(self) -> int:
        return len(self.requirements)

    def get(self, label: str) -> Requirement | None:
        return self.requirements.get(label)

    def ancestors(self, label: str) -> list[str]:
        """Parents of ``label``, nearest first."""
        out: list[str] = []
        req = self.requirements.get(label)
        while req is not None and req.parent:
            out.append(req.parent)
            req = self.requirements.get(req.parent)
        return out

    def matches(self, pattern: str, label: str) -> bool:
        """True when selection ``pattern`` selects requirement ``label`` (see module docstring)."""
        p = pattern.strip().upper()
        if not p:
            return False
        lineage = [label, *self.ancestors(label)]
        if any(p == x.upper() for x in lineage):
            return True
        ptoks = p.split("-")
        n = len(ptoks)
        for x in lineage:  # a family of the label or of an ancestor (HLF-00X1 selects 00X1.3)
            ltoks = x.upper().split("-")
            if any(ltoks[i:i + n] == ptoks for i in range(len(ltoks) - n + 1)):
                return True
        return False

    def select(self, patterns: Iterable[str]) -> set[str]:
        """Labels selected by any of ``patterns``; ValueError names a pattern matching nothing."""
        chosen: set[str] = set()
        for pat in patterns:
            hit = {label for label in self.requirements if self.matches(pat, label)}
            if not hit:
                raise ValueError(
                    f"--requirement {pat!r} matches no requirement label or family of {self.path}")
            chosen |= hit
        return chosen


def load_catalogue(path: Path | str = DEFAULT_CATALOGUE, seeds_dir: Path | str | None = None) -> Catalogue:
    """Load and validate the catalogue; raise DataFileError (``file:line: problem``) if malformed.

    With ``seeds_dir``, also check that every ``source.seed`` exists there and that its
    ``source.passage`` occurs in it verbatim (modulo whitespace and typographic quotes).
    """
    src = TomlSource.load(path)
    cat = Catalogue(src.path)
    data = src.data

    def err(line: int, msg: str) -> DataFileError:
        return DataFileError(src.path, line, msg)

    for key in data:
        if key not in ("format", "requirement"):
            raise err(src.key_line("", key), f"unknown top-level key {key!r} (expected 'format' and [[requirement]] tables)")
    if data.get("format") != 1:
        raise err(src.key_line("", "format"), f"'format' must be 1, got {data.get('format')!r}")
    entries = data.get("requirement")
    if not isinstance(entries, list) or not entries:
        raise err(0, "no [[requirement]] entries")

    seeds: dict[str, str] = {}
    for i, entry in enumerate(entries):
        header = src.table_line("requirement", i)

        def line_of(key: str) -> int:
            return src.key_line("requirement", key, i) or header

        where = f"requirement #{i + 1}"
        if isinstance(entry.get("label"), str):
            where = f"requirement {entry['label']!r}"
        for key in entry:
            if key not in _REQUIRED and key not in _OPTIONAL:
                raise err(line_of(key), f"{where}: unknown key {key!r} (allowed: {', '.join([*_REQUIRED, *_OPTIONAL])})")
        for key, typ in _REQUIRED.items():
            if key not in entry:
                raise err(header, f"{where}: missing required key {key!r}")
        for key, typ in {**_REQUIRED, **_OPTIONAL}.items():
            if key in entry and not isinstance(entry[key], typ):
                raise err(line_of(key), f"{where}: {key!r} must be a {typ.__name__}, got {type(entry[key]).__name__}")
        label: str = entry["label"]
        if not _LABEL.match(label):
            raise err(line_of("label"), f"{where}: malformed label (expected FAMILY-…-ID[.N], e.g. DM-SC-GEN-X.1)")
        if label in cat.requirements:
            raise err(line_of("label"), f"{where}: duplicate label (first defined at line {cat.requirements[label].line})")
        if not entry["text"].strip():
            raise err(line_of("text"), f"{where}: empty 'text'")
        if entry["kind"] not in KINDS:
            raise err(line_of("kind"), f"{where}: kind must be one of {KINDS}, got {entry['kind']!r}")
        if entry["strength"] not in STRENGTHS:
            raise err(line_of("strength"), f"{where}: strength must be one of {STRENGTHS}, got {entry['strength']!r}")
        roles = entry["roles"]
        if not roles or any(r not in ROLES for r in roles) or len(set(roles)) != len(roles):
            raise err(line_of("roles"), f"{where}: roles must be a non-empty list of distinct values from {ROLES}, got {roles!r}")
        source = entry["source"]
        for key in source:
            if key not in _SOURCE_KEYS:
                raise err(line_of("source"), f"{where}: unknown key source.{key}")
        for key, typ in _SOURCE_KEYS.items():
            if not isinstance(source.get(key), typ) or not source[key].strip():
                raise err(line_of(f"source.{key}"), f"{where}: source.{key} must be a non-empty string")
        spec = []
        for ref in entry.get("spec", []):
            if not isinstance(ref, dict) or set(ref) != set(_SPEC_KEYS) or not all(isinstance(ref[k], str) for k in _SPEC_KEYS):
                raise err(line_of("spec"), f"{where}: each spec entry must be {{ title = \"…\", url = \"…\" }}")
            if not ref["url"].startswith(("http://", "https://")):
                raise err(line_of("spec"), f"{where}: spec url must be http(s), got {ref['url']!r}")
            spec.append(SpecRef(ref["title"], ref["url"]))
        passage = source["passage"]
        if entry["kind"] == "stated":
            if "parent" in entry:
                raise err(line_of("parent"), f"{where}: a stated requirement has no parent")
            if label not in passage or normalize_text(entry["text"]) not in normalize_text(passage):
                raise err(line_of("source.passage"), f"{where}: a stated requirement's passage must quote its label and text verbatim")
            if entry["strength"] not in entry["text"]:
                raise err(line_of("strength"), f"{where}: strength {entry['strength']} does not occur in the stated text")
        parent = entry.get("parent")
        if parent is not None:
            if parent not in cat.requirements:
                raise err(line_of("parent"), f"{where}: parent {parent!r} is not defined above this entry")
            if not re.fullmatch(re.escape(parent) + r"\.[0-9]+", label):
                raise err(line_of("label"), f"{where}: a derived label must be '<parent>.<n>' (parent {parent!r})")
        if seeds_dir is not None:
            seed_path = Path(seeds_dir) / source["seed"]
            if source["seed"] not in seeds:
                try:
                    seeds[source["seed"]] = normalize_text(seed_path.read_text(encoding="utf-8", errors="replace"))
                except OSError:
                    raise err(line_of("source.seed"), f"{where}: seed file {seed_path} not found") from None
            if normalize_text(passage) not in seeds[source["seed"]]:
                raise err(line_of("source.passage"), f"{where}: source.passage is not a verbatim quote of {source['seed']}")
        cat.requirements[label] = Requirement(
            label=label, text=entry["text"], kind=entry["kind"], strength=entry["strength"],
            roles=tuple(roles), seed=source["seed"], passage=passage, parent=parent,
            spec=tuple(spec), line=header)
    return cat
