"""DDF loader and object registry (reference.model.ddf / registry)."""
from __future__ import annotations

from pathlib import Path as FsPath

import pytest

from reference.model import (DdfError, ObjectRegistry, Operations, Path, ResourceType, is_object_definition,
                             load_ddf_file)

REGISTRY_DIR = FsPath(__file__).resolve().parents[2] / "shared" / "lwm2m-registry"
needs_registry = pytest.mark.skipif(not REGISTRY_DIR.is_dir(),
                                    reason=f"OMA registry snapshot not present at {REGISTRY_DIR}")

SHIPPED = {0: "1.1", 1: "1.1", 2: "1.1", 3: "1.1", 4: "1.1", 5: "1.0", 7: "1.0", 21: "1.1", 504: "1.0", 10243: "2.0"}

MINIMAL = """<?xml version="1.0" encoding="UTF-8"?>
<LWM2M><Object ObjectType="MODefinition">
  <Name>{name}</Name><Description1/><ObjectID>{oid}</ObjectID><ObjectURN>urn:oma:lwm2m:x:{oid}</ObjectURN>
  <MultipleInstances>Multiple</MultipleInstances><Mandatory>Optional</Mandatory>
  <Resources>
    <Item ID="0"><Name>Value</Name><Operations>RW</Operations><MultipleInstances>Single</MultipleInstances>
      <Mandatory>Mandatory</Mandatory><Type>{type}</Type><RangeEnumeration/><Units>V</Units><Description/></Item>
  </Resources><Description2/>
</Object></LWM2M>
"""


def write(tmp: FsPath, name: str, text: str) -> FsPath:
    p = tmp / name
    p.write_text(text)
    return p


# ---- shipped objects ------------------------------------------------------------------------------

def test_default_registry_has_the_shipped_objects():
    reg = ObjectRegistry.default()
    assert reg.ids() == sorted(SHIPPED)
    for oid, ver in SHIPPED.items():
        assert reg.get(oid).version == ver, oid
        assert oid in reg
    assert [o.id for o in reg] == sorted(SHIPPED)
    assert 6 not in reg and reg.get(6) is None


def test_device_object_resources():
    dev = ObjectRegistry.default().get(3)
    assert dev.name == "Device" and not dev.multiple and dev.mandatory
    for rid in (0, 1, 2, 3, 4, 5, 6, 7, 9, 11, 13, 14, 15, 16, 17, 18, 19):
        assert rid in dev.resources, rid
    assert dev.resource(4).operations == Operations.E and dev.resource(4).mandatory
    assert dev.resource(4).type is ResourceType.NONE
    assert dev.resource(6).multiple and dev.resource(7).multiple and dev.resource(11).multiple
    assert dev.resource(11).mandatory and dev.resource(16).mandatory
    assert dev.resource(13).type is ResourceType.TIME and dev.resource(13).operations == Operations.RW
    assert dev.resource(9).units == "%"


def test_server_object_resources():
    srv = ObjectRegistry.default().get(1)
    assert srv.multiple and srv.mandatory and srv.version == "1.1"
    assert set(range(10)) <= set(srv.resources)
    for rid in (4, 8, 9):
        assert srv.resource(rid).operations == Operations.E, rid
    assert srv.resource(8).mandatory and not srv.resource(9).mandatory
    assert srv.resource(5).name == "Disable Timeout" and srv.resource(5).operations == Operations.RW
    assert srv.resource(0).operations == Operations.R


def test_resource_def_lookup():
    reg = ObjectRegistry.default()
    assert reg.resource_def(Path(3, 0, 0)).name == "Manufacturer"
    assert reg.resource_def(Path(3, 0, 6, 1)).name == "Available Power Sources"
    assert reg.resource_def(Path(3, 0)) is None
    assert reg.resource_def(Path(3, 0, 999)) is None
    assert reg.resource_def(Path(9999, 0, 0)) is None


@needs_registry
def test_shipped_objects_agree_with_the_oma_registry():
    """Our hand-written definitions must match the registry's definition of the same version."""
    by_urn = {}
    for f in list(REGISTRY_DIR.glob("*.xml")) + list((REGISTRY_DIR / "version_history").glob("*.xml")):
        if is_object_definition(f):
            for o in load_ddf_file(f):
                by_urn.setdefault((o.id, o.version), o)
    for ours in ObjectRegistry.default():
        theirs = by_urn[(ours.id, ours.version)]
        assert (ours.multiple, ours.mandatory) == (theirs.multiple, theirs.mandatory), ours.id
        for rid, r in ours.resources.items():
            t = theirs.resources[rid]
            assert (r.operations, r.multiple, r.mandatory, r.type) == (t.operations, t.multiple, t.mandatory, t.type), \
                (ours.id, rid)


# ---- the OMA registry corpus ----------------------------------------------------------------------

@needs_registry
def test_every_registry_object_file_parses():
    files = sorted(REGISTRY_DIR.glob("*.xml")) + sorted((REGISTRY_DIR / "version_history").glob("*.xml"))
    objects = [f for f in files if is_object_definition(f)]
    others = sorted(f.name for f in files if f not in objects)
    # decided by content: the index, the reusable-resource list and the SenML unit list
    assert others == ["Common.xml", "DDF.xml", "LWM2M_senml_units.xml"]
    parsed = [o for f in objects for o in load_ddf_file(f)]
    assert len(parsed) == len(objects) == 751  # snapshot b62ffc2c (see SOURCE.md)
    assert all(o.source for o in parsed)
    ids = {o.id for o in parsed}
    assert {0, 1, 2, 3, 4, 5, 6, 7, 21, 3303, 10243} <= ids
    for name in others:
        with pytest.raises(DdfError, match=name):
            load_ddf_file(REGISTRY_DIR / name)


# ---- user folders ---------------------------------------------------------------------------------

def test_user_folder_overrides_shipped_definition(tmp_path):
    write(tmp_path, "a.xml", MINIMAL.format(name="Custom Device", oid=3, type="Float"))
    write(tmp_path, "b.xml", MINIMAL.format(name="Vendor", oid=33000, type="String"))
    reg = ObjectRegistry.default()
    loaded = reg.add_folder(tmp_path)
    assert {o.id for o in loaded} == {3, 33000}
    assert reg.get(3).name == "Custom Device" and reg.get(3).multiple
    assert reg.resource_def(Path(3, 0, 0)).type is ResourceType.FLOAT
    assert reg.resource_def(Path(3, 0, 1)) is None  # replaced whole, not merged
    assert reg.get(33000).resource(0).units == "V"
    assert reg.get(1).name == "LwM2M Server"  # untouched
    assert ObjectRegistry.default().get(3).name == "Device"  # default() is a fresh copy


def test_later_file_in_folder_wins(tmp_path):
    write(tmp_path, "1.xml", MINIMAL.format(name="First", oid=40000, type="String"))
    write(tmp_path, "2.xml", MINIMAL.format(name="Second", oid=40000, type="Integer"))
    reg = ObjectRegistry()
    reg.add_folder(tmp_path)
    assert reg.get(40000).name == "Second"


def test_bad_file_in_folder_leaves_registry_unchanged(tmp_path):
    write(tmp_path, "1.xml", MINIMAL.format(name="Good", oid=3, type="String"))
    write(tmp_path, "2.xml", "<LWM2M><Object>")
    reg = ObjectRegistry.default()
    with pytest.raises(DdfError, match="2.xml"):
        reg.add_folder(tmp_path)
    assert reg.get(3).name == "Device"


def test_add_folder_rejects_a_non_directory(tmp_path):
    with pytest.raises(DdfError, match="not a directory"):
        ObjectRegistry().add_folder(tmp_path / "nope")


# ---- malformed files ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message, line", [
    ("<LWM2M><Object>\n<Name>x</Name>\n", "malformed XML", 3),
    ("", "malformed XML", 1),
    ("not xml at all", "malformed XML", 1),
    ("<DDFList/>", "expected <LWM2M>", 1),
    ("<LWM2M>\n</LWM2M>", "holds no <Object>", 1),
    (MINIMAL.format(name="x", oid=5, type="Float").replace("<ObjectID>5</ObjectID>", ""), "<ObjectID>", 2),
    (MINIMAL.format(name="x", oid=5, type="Float").replace("<Name>x</Name>", ""), "<Name>", 2),
    (MINIMAL.format(name="x", oid=5, type="Float").replace("<Type>Float</Type>", ""), "<Type>", 6),
    (MINIMAL.format(name="x", oid=5, type="Float").replace("<Operations>RW</Operations>", ""), "<Operations>", 6),
    (MINIMAL.format(name="x", oid=5, type="Float").replace('<Item ID="0">', "<Item>"), "attribute ID", 6),
    (MINIMAL.format(name="x", oid=5, type="Float").replace("<Resources>", "").replace("</Resources>", "")
     .replace("<Item", "<X").replace("</Item>", "</X>"), "<Resources>", 2),
    (MINIMAL.format(name="x", oid=5, type="Quaternion"), "unknown resource type", 7),
    (MINIMAL.format(name="x", oid=5, type="Float").replace(">RW<", ">RX<"), "operation", 6),
    (MINIMAL.format(name="x", oid=70000, type="Float"), "ObjectID", 3),
    (MINIMAL.format(name="x", oid=5, type="Float").replace(">Multiple<", ">Many<"), "MultipleInstances", 4),
    (MINIMAL.format(name="x", oid=5, type="Float").replace("</Resources>", '<Item ID="0"><Name>y</Name>'
     "<Operations>R</Operations><MultipleInstances>Single</MultipleInstances><Mandatory>Optional</Mandatory>"
     "<Type>String</Type></Item></Resources>"), "defined twice", 8),
    ('<!DOCTYPE x [<!ENTITY a "aaaa">]><LWM2M/>', "entity", 1),
])
def test_malformed_ddf_names_file_and_line(tmp_path, text, message, line):
    f = write(tmp_path, "broken.xml", text)
    with pytest.raises(DdfError, match=message) as exc:
        load_ddf_file(f)
    assert str(exc.value).startswith(f"{f}:{line}:"), str(exc.value)
    assert exc.value.source == str(f) and exc.value.line == line


def test_unreadable_file_is_a_ddf_error(tmp_path):
    with pytest.raises(DdfError, match="cannot read"):
        load_ddf_file(tmp_path / "missing.xml")


def test_optional_elements_default(tmp_path):
    text = MINIMAL.format(name="x", oid=5, type="").replace("<RangeEnumeration/><Units>V</Units><Description/>", "")
    (obj,) = load_ddf_file(write(tmp_path, "ok.xml", text))
    r = obj.resource(0)
    assert r.type is ResourceType.NONE and r.units == "" and r.range == ""
    assert obj.version == "1.0" and obj.lwm2m_version == "1.0"  # Core 1.1.1 §7.2.2 default
