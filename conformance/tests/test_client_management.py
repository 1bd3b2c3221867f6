"""Device Management & Service Enablement Interface (Core 1.1.1 §5.4 / §6.3, Transport 1.1.1 §6.3)
of a client DUT: Read in every claimed content format, Write, Execute, Discover, Write-Attributes,
Create/Delete, access to the Security object, error codes.

Values the suite provisioned itself (lifetime 30, binding U) are the known-good references the reads
are compared with, so a client that encodes a wrong value fails, not only one that errs.
"""
from __future__ import annotations

from typing import Any

import cbor2
import pytest

from conformance.evidence import step
from conformance.peers.client_lab import RESPONSE_WITHIN, ClientLab, require
from conformance.peers.server_peer import RequestKind, ServerPeer, code_str
from conformance.verdicts import check, fail, unsupported
from reference.formats import FormatError, linkformat
from reference.model.path import Path
from reference.model.types import ContentFormat

pytestmark = [pytest.mark.role("client")]

LIFETIME = 30
TEXT, TLV, JSON, SENML_JSON, SENML_CBOR, CBOR = (int(ContentFormat.TEXT), int(ContentFormat.LWM2M_TLV),
                                                 int(ContentFormat.LWM2M_JSON), int(ContentFormat.SENML_JSON),
                                                 int(ContentFormat.SENML_CBOR), 60)


async def _read_values(srv: ServerPeer, path: str, fmt: int | None, requirement: str = "LightweightM2M-HLF-00X1.4") -> dict:
    """Read ``path`` with Accept ``fmt``; check 2.05 and the Content-Format; decode (project codecs)."""
    resp = await srv.read(path, accept=fmt, timeout=RESPONSE_WITHIN)
    require(resp, "2.05", requirement=requirement, what=f"Read {path} accept={fmt}", exchange=srv.exchange())
    cf = resp.opt.content_format
    if fmt is not None:
        check(cf is not None and int(cf) == fmt, requirement=requirement, expected=f"Content-Format {fmt}",
              actual=f"Content-Format {None if cf is None else int(cf)}", exchange=srv.exchange())
    try:
        if cf is not None and int(cf) == CBOR:
            return {Path.parse(path): cbor2.loads(bytes(resp.payload))}
        return srv.decode(resp, path)
    except (FormatError, ValueError, cbor2.CBORDecodeError) as exc:
        fail(f"the {path} payload does not decode as Content-Format {cf}", requirement=requirement,
             expected="a payload valid in its Content-Format", actual=f"{exc}: {bytes(resp.payload)[:120]!r}",
             exchange=srv.exchange())


def _instances(values: dict, rid_path: str) -> list[Any]:
    base = Path.parse(rid_path)
    return [v for p, v in values.items() if p.depth == 4 and p.parent == base]


async def _query_basic(lab: ClientLab, fmt: int) -> None:
    """Read the Server instance and the Device instance in ``fmt``; compare with provisioned values."""
    srv, _ = await lab.factory_registered(lifetime=LIFETIME)
    with step(f"Read /1/0 in Content-Format {fmt}"):
        vals = await _read_values(srv, "/1/0", fmt)
        lt = vals.get(Path(1, 0, 1))
        check(lt == LIFETIME, expected=f"/1/0/1 Lifetime = {LIFETIME} (provisioned)", actual=f"{lt!r}",
              exchange=srv.exchange())
        check(Path(1, 0, 0) in vals, expected="/1/0/0 Short Server ID present (mandatory)",
              actual=sorted(map(str, vals)))
        check(Path(1, 0, 7) in vals and "U" in str(vals[Path(1, 0, 7)]), expected="/1/0/7 Binding containing U",
              actual=repr(vals.get(Path(1, 0, 7))))
    with step(f"Read /3/0 in Content-Format {fmt}"):
        vals = await _read_values(srv, "/3/0", fmt)
        check("U" in str(vals.get(Path(3, 0, 16), "")), expected="/3/0/16 Supported Binding and Modes containing U",
              actual=repr(vals.get(Path(3, 0, 16))), exchange=srv.exchange())
        errs = _instances(vals, "/3/0/11")
        check(errs and all(isinstance(e, int) for e in errs), expected="/3/0/11 Error Code instances (integers)",
              actual=repr(errs), exchange=srv.exchange())


async def _read_single_cbor(lab: ClientLab) -> None:
    srv, _ = await lab.factory_registered(lifetime=LIFETIME)
    vals = await _read_values(srv, "/1/0/1", CBOR)
    check(vals.get(Path(1, 0, 1)) == LIFETIME, expected=f"CBOR unsigned integer {LIFETIME}",
          actual=repr(vals.get(Path(1, 0, 1))), exchange=srv.exchange())


# ---- reads in each content format ---------------------------------------------------------------

@pytest.mark.requirement("LightweightM2M-HLF-00X1.4")
@pytest.mark.case("LightweightM2M-1.1-int-201")
@pytest.mark.ics("content_format:text")
async def test_read_plain_text_int_201(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-201 Querying basic information in Plain Text format.

    Core 1.1.1 §7.4.1 (Plain Text) / §6.3.1 (Read): a single resource read with Accept 0 returns
    2.05 with Content-Format 0 and the value as text: Lifetime /1/0/1 is the provisioned 30, Supported
    Binding /3/0/16 contains U.
    """
    srv, _ = await client_lab.factory_registered(lifetime=LIFETIME)
    resp = await srv.read("/1/0/1", accept=TEXT, timeout=RESPONSE_WITHIN)
    require(resp, "2.05", what="Read /1/0/1 as text", exchange=srv.exchange())
    check(bytes(resp.payload) == str(LIFETIME).encode(), expected=f"text {LIFETIME!r}",
          actual=repr(bytes(resp.payload)), exchange=srv.exchange())
    resp = await srv.read("/3/0/16", accept=TEXT, timeout=RESPONSE_WITHIN)
    require(resp, "2.05", what="Read /3/0/16 as text", exchange=srv.exchange())
    check(b"U" in bytes(resp.payload), expected="a binding string containing U", actual=repr(bytes(resp.payload)))
    cf = resp.opt.content_format
    check(cf is not None and int(cf) == TEXT, expected="Content-Format 0", actual=str(cf))


@pytest.mark.requirement("LightweightM2M-HLF-00X1.4")
@pytest.mark.case("LightweightM2M-1.1-int-203")
@pytest.mark.ics("content_format:tlv")
async def test_read_tlv_int_203(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-203 Querying basic information in TLV format.

    Core 1.1.1 §7.4.3 (TLV, Content-Format 11542): object-instance reads of /1/0 and /3/0 decode to
    the provisioned values and the mandatory resources.
    """
    await _query_basic(client_lab, TLV)


@pytest.mark.requirement("LightweightM2M-HLF-00X1.4")
@pytest.mark.case("LightweightM2M-1.1-int-204")
@pytest.mark.ics("content_format:lwm2m-json")
async def test_read_json_int_204(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-204 Querying basic information in JSON format.

    Core 1.1.1 §7.4.5 (LwM2M JSON, Content-Format 11543): as int-203 in JSON.
    """
    await _query_basic(client_lab, JSON)


@pytest.mark.requirement("LightweightM2M-HLF-00X1.4")
@pytest.mark.case("LightweightM2M-1.1-int-211")
@pytest.mark.ics("content_format:cbor")
async def test_read_cbor_int_211(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-211 Querying basic information in CBOR format.

    Core 1.1.1 §7.4.6 (CBOR, Content-Format 60): a single resource read returns the value as a CBOR
    data item (Lifetime: unsigned integer 30).
    """
    await _read_single_cbor(client_lab)


@pytest.mark.requirement("LightweightM2M-HLF-00X1.4")
@pytest.mark.case("LightweightM2M-1.1-int-231")
@pytest.mark.ics("content_format:senml-json")
async def test_read_senml_json_int_231(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-231 Querying basic information in SenML JSON format.

    Core 1.1.1 §7.4.4 (SenML JSON, Content-Format 110, RFC 8428): as int-203 in SenML JSON.
    """
    await _query_basic(client_lab, SENML_JSON)


@pytest.mark.requirement("LightweightM2M-HLF-00X1.4")
@pytest.mark.case("LightweightM2M-1.1-int-232")
@pytest.mark.ics("content_format:senml-cbor")
async def test_read_senml_cbor_int_232(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-232 Querying basic information in SenML CBOR format.

    Core 1.1.1 §7.4.4 (SenML CBOR, Content-Format 112, RFC 8428): as int-203 in SenML CBOR.
    """
    await _query_basic(client_lab, SENML_CBOR)


# ---- writes --------------------------------------------------------------------------------------

async def _write_and_read_back(lab: ClientLab, fmt: int, *, partial_instance: bool) -> None:
    srv, _ = await lab.factory_registered(lifetime=LIFETIME)
    new = {Path(1, 0, 2): 101, Path(1, 0, 3): 1010}
    if partial_instance:
        with step(f"partial update (POST /1/0) in Content-Format {fmt}"):
            resp = await srv.write_values("/1/0", new, fmt, replace=False, timeout=RESPONSE_WITHIN)
            require(resp, "2.04", requirement="DM-CP-5", what="Write (partial update) /1/0",
                    exchange=srv.exchange())
    else:
        for p, v in new.items():
            with step(f"replace {p} in Content-Format {fmt}"):
                resp = await srv.write_values(str(p), {p: v}, fmt, timeout=RESPONSE_WITHIN)
                require(resp, "2.04", requirement="DM-CP-5", what=f"Write {p}", exchange=srv.exchange())
    with step("read back"):
        for p, v in new.items():
            got = await _read_values(srv, str(p), fmt)
            check(got.get(p) == v, requirement="DM-CP-5", expected=f"{p} = {v} after the Write",
                  actual=repr(got.get(p)), exchange=srv.exchange())


@pytest.mark.requirement("DM-CP-5", "DM-SC-GEN-X.2", "LightweightM2M-HLF-SG2")
@pytest.mark.case("LightweightM2M-1.1-int-205")
@pytest.mark.ics("content_format:text")
async def test_write_plain_text_int_205(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-205 Setting basic information in Plain Text format.

    Core 1.1.1 §6.3.3 (Write, replace) / §7.4.1: PUT /1/0/2 (Default Minimum Period) and /1/0/3
    (Default Maximum Period) as text -> 2.04 Changed; a Read returns the written values.
    """
    await _write_and_read_back(client_lab, TEXT, partial_instance=False)


@pytest.mark.requirement("DM-CP-5", "DM-SC-GEN-X.2", "LightweightM2M-HLF-SG2")
@pytest.mark.case("LightweightM2M-1.1-int-212")
@pytest.mark.ics("content_format:cbor")
async def test_write_cbor_int_212(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-212 Setting basic information in CBOR format.

    Core 1.1.1 §6.3.3 / §7.4.6: PUT /1/0/2 with a CBOR unsigned integer -> 2.04; read back equal.
    """
    srv, _ = await client_lab.factory_registered(lifetime=LIFETIME)
    resp = await srv.write("/1/0/2", cbor2.dumps(101), CBOR, timeout=RESPONSE_WITHIN)
    require(resp, "2.04", requirement="DM-CP-5", what="Write /1/0/2 (CBOR)", exchange=srv.exchange())
    got = await _read_values(srv, "/1/0/2", CBOR)
    check(got.get(Path(1, 0, 2)) == 101, expected="101", actual=repr(got), exchange=srv.exchange())


@pytest.mark.requirement("DM-CP-5", "DM-SC-GEN-X.2", "LightweightM2M-HLF-SG2")
@pytest.mark.case("LightweightM2M-1.1-int-215")
@pytest.mark.ics("content_format:tlv")
async def test_write_tlv_int_215(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-215 Setting basic information in TLV format.

    Core 1.1.1 §6.3.3 (Write, partial update = POST on the object instance) / §7.4.3: /1/0/2 and
    /1/0/3 written in one TLV -> 2.04; a Read returns them.
    """
    await _write_and_read_back(client_lab, TLV, partial_instance=True)


@pytest.mark.requirement("DM-CP-5", "DM-SC-GEN-X.2", "LightweightM2M-HLF-SG2")
@pytest.mark.case("LightweightM2M-1.1-int-220")
@pytest.mark.ics("content_format:lwm2m-json")
async def test_write_json_int_220(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-220 Setting basic information in JSON format.

    Core 1.1.1 §6.3.3 / §7.4.5: as int-215 in LwM2M JSON.
    """
    await _write_and_read_back(client_lab, JSON, partial_instance=True)


@pytest.mark.requirement("DM-CP-5", "DM-SC-GEN-X.2", "LightweightM2M-HLF-SG2")
@pytest.mark.case("LightweightM2M-1.1-int-233")
@pytest.mark.ics("content_format:senml-cbor")
async def test_write_senml_cbor_int_233(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-233 Setting basic information in SenML CBOR format.

    Core 1.1.1 §6.3.3 / §7.4.4: as int-215 in SenML CBOR.
    """
    await _write_and_read_back(client_lab, SENML_CBOR, partial_instance=True)


@pytest.mark.requirement("DM-CP-5", "DM-SC-GEN-X.2", "LightweightM2M-HLF-SG2")
@pytest.mark.case("LightweightM2M-1.1-int-234")
@pytest.mark.ics("content_format:senml-json")
async def test_write_senml_json_int_234(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-234 Setting basic information in SenML JSON format.

    Core 1.1.1 §6.3.3 / §7.4.4: as int-215 in SenML JSON.
    """
    await _write_and_read_back(client_lab, SENML_JSON, partial_instance=True)


def _multi_format(profile) -> int:
    """A multi-value content format the DUT claims (TLV, SenML CBOR, SenML JSON, JSON in that order)."""
    for f in (TLV, SENML_CBOR, SENML_JSON, JSON):
        if f in profile.ics.content_formats:
            return f
    unsupported("no multi-value content format (TLV, SenML, JSON) claimed")


@pytest.mark.requirement("DM-CP-5", "DM-SC-GEN-X.2")
@pytest.mark.case("LightweightM2M-1.1-int-226")
async def test_write_partial_update_int_226(client_lab: ClientLab, dut_profile) -> None:
    """LightweightM2M-1.1-int-226 Write (Partial Update) on Object Instance.

    Core 1.1.1 §6.3.3: POST /1/0 with Lifetime and Notification Storing -> 2.04; the written
    resources change, the others (Short Server ID, Binding) keep their values.
    """
    fmt = _multi_format(dut_profile)
    srv, _ = await client_lab.factory_registered(lifetime=LIFETIME)
    before = await _read_values(srv, "/1/0", fmt)
    resp = await srv.write_values("/1/0", {Path(1, 0, 1): 45, Path(1, 0, 6): True}, fmt, replace=False,
                                  timeout=RESPONSE_WITHIN)
    require(resp, "2.04", what="partial update /1/0", exchange=srv.exchange())
    after = await _read_values(srv, "/1/0", fmt)
    check(after.get(Path(1, 0, 1)) == 45 and after.get(Path(1, 0, 6)) is True,
          expected="/1/0/1 = 45 and /1/0/6 = true", actual=f"{after.get(Path(1, 0, 1))!r}, {after.get(Path(1, 0, 6))!r}",
          exchange=srv.exchange())
    for rid in (0, 7):
        check(after.get(Path(1, 0, rid)) == before.get(Path(1, 0, rid)),
              expected=f"/1/0/{rid} unchanged by a partial update", actual=f"{before.get(Path(1, 0, rid))!r} -> "
              f"{after.get(Path(1, 0, rid))!r}")


@pytest.mark.requirement("DM-CP-5", "DM-SC-GEN-X.2")
@pytest.mark.case("LightweightM2M-1.1-int-227")
async def test_write_replace_resource_int_227(client_lab: ClientLab, dut_profile) -> None:
    """LightweightM2M-1.1-int-227 Write (replace) on Resource.

    Core 1.1.1 §6.3.3: PUT /1/0/1 = 63 -> 2.04; Read returns 63 and, the lifetime having changed,
    the client reports it in an Update with lt=63 (§6.2.2).
    """
    srv, _ = await client_lab.factory_registered(lifetime=LIFETIME)
    mark = srv.mark()
    fmt = TEXT if TEXT in dut_profile.ics.content_formats else _multi_format(dut_profile)
    resp = await srv.write_values("/1/0/1", {Path(1, 0, 1): 63}, fmt, timeout=RESPONSE_WITHIN)
    require(resp, "2.04", what="Write /1/0/1", exchange=srv.exchange())
    got = await _read_values(srv, "/1/0/1", fmt)
    check(got.get(Path(1, 0, 1)) == 63, expected="63", actual=repr(got))
    upd = await srv.wait_request(RequestKind.UPDATE, timeout=RESPONSE_WITHIN, after=mark)
    check(upd is not None and upd.query.get("lt") == "63", expected="an Update with lt=63",
          actual=upd.summary() if upd else "no Update", exchange=srv.exchange())


@pytest.mark.requirement("DM-CP-6", "LightweightM2M-HLF-SG3")
@pytest.mark.case("LightweightM2M-1.1-int-221")
async def test_security_object_protected_int_221(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-221 Attempt to perform operations on Security.

    Core 1.1.1 §E.1 (Security object: "MUST NOT be accessible by any other LwM2M Server" than the
    Bootstrap-Server) and §7.3: Read /0, Write /0/0/0 and Write-Attributes /0 by the LwM2M Server are
    answered 4.01 Unauthorized and reveal nothing.
    """
    srv, _ = await client_lab.factory_registered(lifetime=LIFETIME)
    resp = await srv.read("/0", timeout=RESPONSE_WITHIN)
    require(resp, "4.01", what="Read /0", exchange=srv.exchange())
    check(b"coap" not in bytes(resp.payload), expected="no Security data in the error payload",
          actual=repr(bytes(resp.payload)[:80]))
    resp = await srv.write("/0/0/0", b"coap://127.0.0.1:1", TEXT, timeout=RESPONSE_WITHIN)
    require(resp, "4.01", what="Write /0/0/0", exchange=srv.exchange())
    resp = await srv.write_attributes("/0", {"pmin": 10}, timeout=RESPONSE_WITHIN)
    require(resp, "4.01", what="Write-Attributes /0?pmin=10", exchange=srv.exchange())


# ---- reads at each level -------------------------------------------------------------------------

@pytest.mark.requirement("LightweightM2M-HLF-00X1.4")
@pytest.mark.case("LightweightM2M-1.1-int-222")
async def test_read_object_int_222(client_lab: ClientLab, dut_profile) -> None:
    """LightweightM2M-1.1-int-222 Read on Object.

    Core 1.1.1 §6.3.1: Read /1 returns every Server instance (here /1/0 with Lifetime 30).
    """
    fmt = _multi_format(dut_profile)
    srv, _ = await client_lab.factory_registered(lifetime=LIFETIME)
    vals = await _read_values(srv, "/1", fmt)
    check(vals.get(Path(1, 0, 1)) == LIFETIME, expected="/1/0/1 = 30 in the object read",
          actual=sorted((str(p), v) for p, v in vals.items()), exchange=srv.exchange())


@pytest.mark.requirement("LightweightM2M-HLF-00X1.4")
@pytest.mark.case("LightweightM2M-1.1-int-223")
async def test_read_object_instance_int_223(client_lab: ClientLab, dut_profile) -> None:
    """LightweightM2M-1.1-int-223 Read on Object Instance.

    Core 1.1.1 §6.3.1: Read /3/0 returns the readable resources of the Device instance, including
    the mandatory Error Code (/3/0/11) and Supported Binding (/3/0/16), and no executable one (/3/0/4).
    """
    fmt = _multi_format(dut_profile)
    srv, _ = await client_lab.factory_registered(lifetime=LIFETIME)
    vals = await _read_values(srv, "/3/0", fmt)
    check(_instances(vals, "/3/0/11") and Path(3, 0, 16) in vals, expected="/3/0/11/x and /3/0/16",
          actual=sorted(map(str, vals)), exchange=srv.exchange())
    check(Path(3, 0, 4) not in vals, expected="no value for the executable Reboot /3/0/4", actual="present")


@pytest.mark.requirement("LightweightM2M-HLF-00X1.4")
@pytest.mark.case("LightweightM2M-1.1-int-224")
async def test_read_resource_int_224(client_lab: ClientLab, dut_profile) -> None:
    """LightweightM2M-1.1-int-224 Read on Resource.

    Core 1.1.1 §6.3.1: Read /1/0/1 returns exactly that resource (Lifetime = 30).
    """
    fmt = _multi_format(dut_profile)
    srv, _ = await client_lab.factory_registered(lifetime=LIFETIME)
    vals = await _read_values(srv, "/1/0/1", fmt)
    check(vals == {Path(1, 0, 1): LIFETIME}, expected="{/1/0/1: 30}", actual=repr(vals), exchange=srv.exchange())


@pytest.mark.requirement("LightweightM2M-HLF-00X1.4")
@pytest.mark.case("LightweightM2M-1.1-int-225")
async def test_read_resource_instance_int_225(client_lab: ClientLab, dut_profile) -> None:
    """LightweightM2M-1.1-int-225 Read on Resource Instance.

    Core 1.1.1 §6.3.1 (LwM2M 1.1 allows a Resource Instance as Read target): Read /3/0/11/0 returns
    that one instance, equal to the value in the resource read.
    """
    fmt = _multi_format(dut_profile)
    srv, _ = await client_lab.factory_registered(lifetime=LIFETIME)
    whole = await _read_values(srv, "/3/0/11", fmt)
    one = await _read_values(srv, "/3/0/11/0", fmt)
    check(one == {Path(3, 0, 11, 0): whole.get(Path(3, 0, 11, 0))} and Path(3, 0, 11, 0) in whole,
          expected=f"{{/3/0/11/0: {whole.get(Path(3, 0, 11, 0))!r}}}", actual=repr(one), exchange=srv.exchange())


@pytest.mark.requirement("LightweightM2M-HLF-00X1.4")
@pytest.mark.case("LightweightM2M-1.1-int-237")
async def test_read_without_accept_int_237(client_lab: ClientLab, dut_profile) -> None:
    """LightweightM2M-1.1-int-237 Read on Object without specifying Content-Type.

    Core 1.1.1 §7.4 / RFC 7252 §5.10.4: without Accept the client picks a format; the response is
    2.05 with a Content-Format the client claims and a payload that decodes to the right values.
    """
    srv, _ = await client_lab.factory_registered(lifetime=LIFETIME)
    resp = await srv.read("/1", timeout=RESPONSE_WITHIN)
    require(resp, "2.05", what="Read /1 without Accept", exchange=srv.exchange())
    cf = resp.opt.content_format
    check(cf is not None and int(cf) in dut_profile.ics.content_formats,
          expected=f"a claimed Content-Format {list(dut_profile.ics.content_formats)}", actual=str(cf))
    vals = await _read_values(srv, "/1", None)
    check(vals.get(Path(1, 0, 1)) == LIFETIME, expected="/1/0/1 = 30", actual=repr(vals))


# ---- execute, errors -----------------------------------------------------------------------------

@pytest.mark.requirement("LightweightM2M-HLF-00X1.6", "DM-CP-5")
@pytest.mark.case("LightweightM2M-1.1-int-241")
async def test_execute_reboot_int_241(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-241 Executable Resource: Rebooting the device.

    Core 1.1.1 §6.3.5 (Execute) and §E.4 (Device /3/0/4 Reboot): Execute answers 2.04 Changed, the
    device reboots and registers again (a new Register).
    """
    lab = client_lab
    srv, _ = await lab.factory_registered(lifetime=LIFETIME)
    mark = srv.mark()
    require(await srv.execute("/3/0/4", timeout=RESPONSE_WITHIN), "2.04", what="Execute /3/0/4",
            exchange=srv.exchange())
    await lab.registered(srv, after=mark, timeout=20.0)


@pytest.mark.requirement("DM-CP-5", "DM-SC-GEN-X.2")
@pytest.mark.case("LightweightM2M-1.1-int-256")
async def test_write_read_only_int_256(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-256 Write Operation Failure.

    Core 1.1.1 §6.3.3 (Write response codes): a Write to a read-only resource (Short Server ID
    /1/0/0) is answered 4.05 Method Not Allowed and the value is unchanged.
    """
    srv, _ = await client_lab.factory_registered(lifetime=LIFETIME)
    before = await srv.read("/1/0/0", accept=TEXT, timeout=RESPONSE_WITHIN)
    require(before, "2.05", what="Read /1/0/0", exchange=srv.exchange())
    new = b"123" if bytes(before.payload) != b"123" else b"124"
    resp = await srv.write("/1/0/0", new, TEXT, timeout=RESPONSE_WITHIN)
    require(resp, "4.05", what="Write to the read-only /1/0/0", exchange=srv.exchange())
    after = await srv.read("/1/0/0", accept=TEXT, timeout=RESPONSE_WITHIN)
    check(bytes(after.payload) == bytes(before.payload), expected=f"/1/0/0 still {bytes(before.payload)!r}",
          actual=repr(bytes(after.payload)), exchange=srv.exchange())


@pytest.mark.requirement("LightweightM2M-HLF-00X1.4")
@pytest.mark.case("LWM2M-CDM-001")
async def test_unsupported_accept_cdm_001(client_lab: ClientLab) -> None:
    """LWM2M-CDM-001 Read with an Accept the client cannot produce.

    Core 1.1.1 §6.3.1 (Read response codes) / RFC 7252 §5.10.4: Accept application/xml (41), not an
    LwM2M format, is answered 4.06 Not Acceptable.
    """
    srv, _ = await client_lab.factory_registered(lifetime=LIFETIME)
    resp = await srv.read("/3/0", accept=41, timeout=RESPONSE_WITHIN)
    require(resp, "4.06", what="Read /3/0 with Accept 41", exchange=srv.exchange())


@pytest.mark.requirement("LightweightM2M-HLF-00X1.4", "DM-CP-5")
@pytest.mark.case("LWM2M-CDM-002")
async def test_execute_not_executable_cdm_002(client_lab: ClientLab) -> None:
    """LWM2M-CDM-002 Execute on a resource that is not executable, Read of an absent instance.

    Core 1.1.1 §6.3.5 (Execute: 4.05 Method Not Allowed when the target is not executable; 4.00 is
    tolerated, see the comment) -- the resource keeps its value -- and §6.3.1 (Read: 4.04 Not Found
    for an absent Object Instance).
    """
    srv, _ = await client_lab.factory_registered(lifetime=LIFETIME)
    resp = await srv.execute("/1/0/1", timeout=RESPONSE_WITHIN)
    # 4.05 is the code §6.3.5 lists; a POST on a resource is also the form of a partial-update Write
    # of a multiple-instance resource in 1.1, so a client that reads it as a Write without a
    # Content-Format may answer 4.00. What must never happen is success.
    check(code_str(resp.code) in ("4.05", "4.00"), expected="4.05 Method Not Allowed (or 4.00)",
          actual=code_str(resp.code), exchange=srv.exchange())
    got = await srv.read("/1/0/1", accept=TEXT, timeout=RESPONSE_WITHIN)
    check(bytes(got.payload) == str(LIFETIME).encode(), expected="Lifetime unchanged", actual=repr(bytes(got.payload)))
    require(await srv.read("/3/9", timeout=RESPONSE_WITHIN), "4.04", what="Read /3/9", exchange=srv.exchange())


# ---- discover, attributes ---------------------------------------------------------------------------

def _parse_links(resp: Any) -> list[linkformat.Link]:
    try:
        return linkformat.parse(bytes(resp.payload), strict=False)
    except FormatError as exc:
        fail("Discover payload is not CoRE Link Format", expected="RFC 6690", actual=f"{exc}")


@pytest.mark.requirement("LightweightM2M-HLF-00X1.4", "LightweightM2M-HLF-SG2")
@pytest.mark.case("LightweightM2M-1.1-int-260")
async def test_discover_int_260(client_lab: ClientLab, dut_profile) -> None:
    """LightweightM2M-1.1-int-260 Discover Command.

    Core 1.1.1 §6.3.2 / §5.4.2 (Discover): Discover /3 lists </3/0> and its resources (including the
    mandatory /3/0/11 and /3/0/16) with Content-Format 40; a multiple-instance resource carries
    ``dim`` = its number of instances; attributes written with Write-Attributes (§6.3.4) on a
    resource (pmin=2, pmax=20, gt=50) are reported by a Discover of that resource.
    """
    srv, _ = await client_lab.factory_registered(lifetime=LIFETIME)
    with step("Discover /3"):
        resp = await srv.discover("/3", timeout=RESPONSE_WITHIN)
        require(resp, "2.05", what="Discover /3", exchange=srv.exchange())
        cf = resp.opt.content_format
        check(cf is not None and int(cf) == 40, expected="Content-Format 40", actual=str(cf))
        links = _parse_links(resp)
        targets = [lk.target for lk in links]
        for t in ("/3/0", "/3/0/11", "/3/0/16"):
            check(t in targets, expected=f"<{t}> listed", actual=str(targets), exchange=srv.exchange())
    with step("dim of the multiple-instance Error Code /3/0/11"):
        dim = next((lk.get("dim") for lk in links if lk.target == "/3/0/11"), None)
        vals = await _read_values(srv, "/3/0/11", _multi_format(dut_profile))
        n = len(_instances(vals, "/3/0/11"))
        check(dim is not None and str(dim) == str(n), expected=f"dim={n} (instances read)", actual=f"dim={dim}",
              exchange=srv.exchange())
    target = "/3/0/9" if "/3/0/9" in targets else "/1/0/1"
    with step(f"Write-Attributes {target}?pmin=2&pmax=20&gt=50, then Discover {target}"):
        require(await srv.write_attributes(target, {"pmin": 2, "pmax": 20, "gt": 50}, timeout=RESPONSE_WITHIN),
                "2.04", what="Write-Attributes", exchange=srv.exchange())
        resp = await srv.discover(target, timeout=RESPONSE_WITHIN)
        require(resp, "2.05", what=f"Discover {target}", exchange=srv.exchange())
        link = next((lk for lk in _parse_links(resp) if lk.target == target), None)
        check(link is not None, expected=f"<{target}> in the Discover", actual=bytes(resp.payload).decode(errors="replace"))
        assert link is not None
        for name, want in (("pmin", 2), ("pmax", 20), ("gt", 50)):
            got = link.get(name)
            ok = got is not None and float(got) == want
            check(ok, requirement="LightweightM2M-HLF-SG2", expected=f"{name}={want}", actual=f"{name}={got}",
                  exchange=srv.exchange())


@pytest.mark.requirement("LightweightM2M-HLF-00X1.4", "DM-CP-5")
@pytest.mark.case("LWM2M-CDM-003")
@pytest.mark.ics("object:10243")
async def test_create_delete_instance_cdm_003(client_lab: ClientLab, dut_profile) -> None:
    """LWM2M-CDM-003 Create and Delete an Object Instance.

    Core 1.1.1 §6.3.6 (Create: POST on the object, 2.01 Created) and §6.3.7 (Delete: 2.02 Deleted);
    the instance is readable after Create and 4.04 after Delete; the client reports the changed
    object list in an Update (§6.2.2). Object 10243 (Single-Phase Power Meter, multiple instances,
    no writable mandatory resource) with a new instance ID chosen from a Discover.
    """
    fmt = _multi_format(dut_profile)
    srv, _ = await client_lab.factory_registered(lifetime=LIFETIME)
    resp = await srv.discover("/10243", timeout=RESPONSE_WITHIN)
    require(resp, "2.05", what="Discover /10243", exchange=srv.exchange())
    taken = {int(lk.target.split("/")[2]) for lk in _parse_links(resp) if lk.target.count("/") == 2}
    iid = next(i for i in range(1, 1000) if i not in taken)
    mark = srv.mark()
    with step(f"Create /10243/{iid}"):
        payload = bytes([0x00, iid]) if fmt == TLV else None
        if payload is None:
            unsupported("Create test needs TLV (empty instance payload)")
        resp = await srv.create("/10243", payload, fmt, timeout=RESPONSE_WITHIN)
        require(resp, "2.01", what=f"Create /10243/{iid}", exchange=srv.exchange())
        require(await srv.read(f"/10243/{iid}", accept=fmt, timeout=RESPONSE_WITHIN), "2.05",
                what="Read of the new instance", exchange=srv.exchange())
        upd = await srv.wait_request(RequestKind.UPDATE, timeout=RESPONSE_WITHIN, after=mark)
        check(upd is not None and f"</10243/{iid}>".encode() in upd.payload,
              requirement="LightweightM2M-HLF-00X1.4", expected=f"an Update listing </10243/{iid}>",
              actual=upd.summary() if upd else "no Update", exchange=srv.exchange())
    with step(f"Delete /10243/{iid}"):
        require(await srv.delete(f"/10243/{iid}", timeout=RESPONSE_WITHIN), "2.02", what="Delete",
                exchange=srv.exchange())
        resp = await srv.read(f"/10243/{iid}", accept=fmt, timeout=RESPONSE_WITHIN)
        require(resp, "4.04", what="Read after Delete", exchange=srv.exchange())
