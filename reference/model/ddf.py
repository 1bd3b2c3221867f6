"""OMA DDF (LwM2M object definition XML) loader.

The format is the ``LWM2M`` document of the OMA schemas ``LWM2M.xsd`` / ``LWM2M-v1_1.xsd``
(Core 1.1.1 §7.2 "Object Versioning" and Appendix E "LwM2M Object Definitions"):

.. code-block:: xml

    <LWM2M><Object ObjectType="MODefinition">
      <Name/> <Description1/> <ObjectID/> <ObjectURN/> [<LWM2MVersion/>] [<ObjectVersion/>]
      <MultipleInstances>Multiple|Single</MultipleInstances> <Mandatory>Mandatory|Optional</Mandatory>
      <Resources><Item ID="n"> <Name/> <Operations/> <MultipleInstances/> <Mandatory/> <Type/>
                 <RangeEnumeration/> <Units/> <Description/> </Item>...</Resources>
      <Description2/>
    </Object></LWM2M>

Contract: :func:`load_ddf_file` returns every ``<Object>`` of a file as an
:class:`~reference.model.types.ObjectDef`, or raises :class:`DdfError` whose message starts with the
file name (and ``:line`` when the problem has a position). Elements without which a definition is
meaningless are required (object: Name, ObjectID, MultipleInstances, Mandatory, Resources; item: ID,
Name, Operations, MultipleInstances, Mandatory, Type); purely descriptive ones (descriptions, URN,
RangeEnumeration, Units) default to ``""``. An absent ``ObjectVersion`` / ``LWM2MVersion`` means
"1.0" (Core 1.1.1 §7.2.2).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
import xml.parsers.expat
from dataclasses import dataclass
from pathlib import Path as FsPath

from reference.model.path import MAX_ID
from reference.model.types import ObjectDef, Operations, ResourceDef, ResourceType

__all__ = ["DdfError", "load_ddf_file", "parse_ddf", "is_object_definition"]

#: DDF <Object ObjectType=...> value of an object definition; the registry's Common.xml
#: (reusable resources) uses "CommonResources" and is not an object definition.
OBJECT_TYPE_DEFINITION = "MODefinition"


class DdfError(ValueError):
    """A DDF file is unreadable, not well-formed XML, or lacks/garbles a required element.

    The message is ``"<file>[:<line>]: <what is wrong>"``. ``source`` and ``line`` are also attributes.
    """

    def __init__(self, source: str, message: str, line: int | None = None) -> None:
        self.source = source
        self.line = line
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {message}")


@dataclass
class _Doc:
    root: ET.Element
    lines: dict[int, int]  # id(element) -> line of its start tag

    def line(self, el: ET.Element | None) -> int | None:
        return None if el is None else self.lines.get(id(el))


def _parse_xml(data: bytes, source: str) -> _Doc:
    """Build an ElementTree recording each element's line (ElementTree itself keeps none)."""
    parser = xml.parsers.expat.ParserCreate()
    builder = ET.TreeBuilder()
    lines: dict[int, int] = {}

    def start(tag: str, attrs: dict[str, str]) -> None:
        el = builder.start(tag, attrs)
        lines[id(el)] = parser.CurrentLineNumber

    def entity_decl(*_args: object) -> None:
        # DDF never declares entities; refusing them rules out entity-expansion bombs.
        raise DdfError(source, "XML entity declarations are not allowed in a DDF file",
                       parser.CurrentLineNumber)

    parser.StartElementHandler = start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.EntityDeclHandler = entity_decl
    try:
        parser.Parse(data, True)
        root = builder.close()
    except xml.parsers.expat.ExpatError as e:
        raise DdfError(source, f"malformed XML: {xml.parsers.expat.errors.messages[e.code]} "
                               f"(column {e.offset})", e.lineno) from None
    except AssertionError:  # TreeBuilder.close() on an empty document
        raise DdfError(source, "malformed XML: no root element") from None
    # keep the elements alive so that id() keys stay unique for the life of the document
    return _Doc(root, lines)


def _text(doc: _Doc, parent: ET.Element, tag: str, source: str, *, required: bool) -> str:
    el = parent.find(tag)
    if el is None:
        if required:
            raise DdfError(source, f"<{parent.tag}> lacks required element <{tag}>", doc.line(parent))
        return ""
    return (el.text or "").strip()


def _flag(doc: _Doc, parent: ET.Element, tag: str, source: str, true: str, false: str) -> bool:
    value = _text(doc, parent, tag, source, required=True)
    if value == true:
        return True
    if value == false:
        return False
    raise DdfError(source, f"<{tag}> is {value!r}, expected {true!r} or {false!r}", doc.line(parent.find(tag)))


def _id(doc: _Doc, el: ET.Element, text: str, what: str, source: str) -> int:
    if not text.isdigit() or not (0 <= int(text) <= MAX_ID):
        raise DdfError(source, f"{what} {text!r} is not an ID in 0..{MAX_ID}", doc.line(el))
    return int(text)


def _resource(doc: _Doc, item: ET.Element, source: str) -> ResourceDef:
    rid_text = item.get("ID")
    if rid_text is None:
        raise DdfError(source, "<Item> lacks required attribute ID", doc.line(item))
    rid = _id(doc, item, rid_text.strip(), "resource ID", source)
    ops_text = _text(doc, item, "Operations", source, required=True)
    type_text = _text(doc, item, "Type", source, required=True)
    try:
        ops = Operations.from_ddf(ops_text)
    except ValueError as e:
        raise DdfError(source, f"resource {rid}: {e}", doc.line(item.find("Operations"))) from None
    try:
        rtype = ResourceType.from_ddf(type_text)
    except ValueError as e:
        raise DdfError(source, f"resource {rid}: {e}", doc.line(item.find("Type"))) from None
    return ResourceDef(
        id=rid,
        name=_text(doc, item, "Name", source, required=True),
        operations=ops,
        multiple=_flag(doc, item, "MultipleInstances", source, "Multiple", "Single"),
        mandatory=_flag(doc, item, "Mandatory", source, "Mandatory", "Optional"),
        type=rtype,
        range=_text(doc, item, "RangeEnumeration", source, required=False),
        units=_text(doc, item, "Units", source, required=False),
        description=_text(doc, item, "Description", source, required=False),
    )


def _object(doc: _Doc, obj: ET.Element, source: str) -> ObjectDef:
    oid = _id(doc, obj.find("ObjectID"), _text(doc, obj, "ObjectID", source, required=True), "ObjectID", source)
    resources_el = obj.find("Resources")
    if resources_el is None:
        raise DdfError(source, f"object {oid}: <Object> lacks required element <Resources>", doc.line(obj))
    resources: dict[int, ResourceDef] = {}
    for item in resources_el.findall("Item"):
        r = _resource(doc, item, source)
        if r.id in resources:
            raise DdfError(source, f"object {oid}: resource ID {r.id} defined twice", doc.line(item))
        resources[r.id] = r
    description = "\n".join(t for t in (_text(doc, obj, "Description1", source, required=False),
                                        _text(doc, obj, "Description2", source, required=False)) if t)
    return ObjectDef(
        id=oid,
        name=_text(doc, obj, "Name", source, required=True),
        multiple=_flag(doc, obj, "MultipleInstances", source, "Multiple", "Single"),
        mandatory=_flag(doc, obj, "Mandatory", source, "Mandatory", "Optional"),
        version=_text(doc, obj, "ObjectVersion", source, required=False) or "1.0",
        urn=_text(doc, obj, "ObjectURN", source, required=False),
        lwm2m_version=_text(doc, obj, "LWM2MVersion", source, required=False) or "1.0",
        resources=dict(sorted(resources.items())),
        description=description,
        source=source,
    )


def parse_ddf(data: bytes, source: str = "<ddf>") -> list[ObjectDef]:
    """Parse DDF XML ``data``; ``source`` names it in error messages and in ``ObjectDef.source``."""
    doc = _parse_xml(data, source)
    if doc.root.tag != "LWM2M":
        raise DdfError(source, f"root element is <{doc.root.tag}>, expected <LWM2M>: "
                               "not an object definition file", doc.line(doc.root))
    objects = doc.root.findall("Object")
    if not objects:
        raise DdfError(source, "<LWM2M> holds no <Object>", doc.line(doc.root))
    out: list[ObjectDef] = []
    for obj in objects:
        kind = obj.get("ObjectType", OBJECT_TYPE_DEFINITION)
        if kind != OBJECT_TYPE_DEFINITION:
            raise DdfError(source, f"<Object ObjectType={kind!r}> is not an object definition "
                                   f"(expected {OBJECT_TYPE_DEFINITION!r})", doc.line(obj))
        out.append(_object(doc, obj, source))
    return out


def load_ddf_file(path: str | FsPath) -> list[ObjectDef]:
    """Load every object definition in the DDF file at ``path`` (raises :class:`DdfError`)."""
    p = FsPath(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DdfError(str(p), f"cannot read: {e.strerror or e}") from None
    return parse_ddf(data, str(p))


def is_object_definition(path: str | FsPath) -> bool:
    """Decide by content whether ``path`` is meant as an object definition file: its root is
    ``<LWM2M>`` and it has an ``<Object>`` of type MODefinition. Registry side files (the ``DDF.xml``
    index, ``Common.xml`` reusable resources, the SenML units list) are not. Malformed XML is
    reported as ``False``; call :func:`load_ddf_file` to get the error."""
    try:
        doc = _parse_xml(FsPath(path).read_bytes(), str(path))
    except (OSError, DdfError):
        return False
    return doc.root.tag == "LWM2M" and any(
        o.get("ObjectType", OBJECT_TYPE_DEFINITION) == OBJECT_TYPE_DEFINITION for o in doc.root.findall("Object"))
