"""Smartcard card side without PC/SC: on-card byte layout (Core 1.1.1 Appendix G), card images and
descriptions, the APDU behaviour of the emulator, the reader's APDU path, and error reporting."""
from __future__ import annotations

import copy
import json
from pathlib import Path as FsPath

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reference.model.config import DeviceConfig, SecurityAccount, SecurityMode, ServerAccount
from reference.model.path import Path
from reference.smartcard import (
    CardDataError,
    CardDescription,
    CardDescriptionError,
    CardError,
    CardImage,
    CardImageError,
    ImageCardSource,
    UiccEmulator,
    build_image,
    layout,
)
from reference.smartcard.apdu import Sw, channel_of, cla_for
from reference.smartcard.cli import main as card_main
from reference.smartcard.image import CardFile
from reference.smartcard.layout import Fid
from reference.smartcard.reader import CardSession

CARDS = FsPath(__file__).resolve().parent.parent / "fixtures" / "cards"
AID = layout.PKCS15_AID


def basic_image() -> CardImage:
    return build_image(CardDescription.load(CARDS / "basic.yaml"))


def sw(resp: bytes) -> int:
    return int.from_bytes(resp[-2:], "big")


# ---- layout against bytes written by others ---------------------------------------------------------
# EF LwM2M_Bootstrap as produced by AVSystem's generator.py for its documented "basic" config
# (two objects, IMPLICIT_VERSION, G.3.3 framing): /0/1 PSK account and /1/1 server account.
ANJAY_EXAMPLE = bytes.fromhex(
    "0002007a000000005e08015bc8002263"
    "6f6170733a2f2f65752e696f742e6176"
    "73797374656d2e636c6f75643a353638"
    "34c10100c10200c803146578616d706c"
    "652d70736b2d6964656e74697479c805"
    "133378406d706c3350354b3533637233"
    "744b3379c10a0100010000120801 0fc1".replace(" ", "")
    + "0001c40100015180c10600c10755")
# Nordic's test card (nrf sdk uicc_lwm2m tests): one object, trailing FF padding after the size.
NORDIC_BOOTSTRAP = bytes.fromhex(
    "00010036000000003108002EC80025636F61703A2F2F6C657368616E2E65636C6970736570726F6A656374732E696F"
    "3A35373833C10101C10203FFFF")
# Nordic's DODF: oidDO [1] with the label in applicationName and the OID double-wrapped as in the TS example.
NORDIC_DODF = bytes.fromhex("A127300030110C0F4C774D324D20426F6F747374726170A110300E06060604672B0901300404026432")


def test_decodes_anjay_generated_bootstrap_file() -> None:
    values = layout.decode_bootstrap_values(ANJAY_EXAMPLE)
    cfg = DeviceConfig.from_values("ep", values)
    assert cfg.security == [SecurityAccount(
        instance_id=1, uri="coaps://eu.iot.avsystem.cloud:5684", bootstrap=False, mode=SecurityMode.PSK,
        psk_identity=b"example-psk-identity", psk_key=b"3x@mpl3P5K53cr3tK3y", short_server_id=1)]
    assert cfg.servers == [ServerAccount(instance_id=1, short_server_id=1, lifetime=86400,
                                         binding="U", notification_storing=False)]


def test_decodes_nordic_bootstrap_file_with_padding() -> None:
    values = layout.decode_bootstrap_values(NORDIC_BOOTSTRAP)
    assert values[Path(0, 0, 0)] == "coap://leshan.eclipseprojects.io:5783"
    assert values[Path(0, 0, 1)] is True and values[Path(0, 0, 2)] == 3


def test_bootstrap_file_header_and_object_framing() -> None:
    data = layout.encode_bootstrap_values({Path(1, 0, 0): 7, Path(1, 0, 7): "U"})
    count, size = int.from_bytes(data[0:2], "big"), int.from_bytes(data[2:4], "big")
    assert count == 1 and size == len(data) - 4
    assert data[4:6] == b"\x00\x01"          # object ID 1
    assert data[6] == 0x00                    # IMPLICIT_VERSION: object defined in the enabler
    assert int.from_bytes(data[7:9], "big") == len(data) - 9
    objs = layout.split_bootstrap_file(data + b"\xff" * 7)  # issuer padding is ignored
    assert [(o.object_id, o.version) for _, o in objs] == [(1, "")]


def test_explicit_object_version_takes_two_bytes() -> None:
    data = layout.encode_bootstrap_file([layout.StoredObject(0, "2.5", b"")])
    assert data == bytes.fromhex("0001 0006 0000 0205 0000".replace(" ", ""))
    [(off, obj)] = layout.split_bootstrap_file(data)
    assert obj.version == "2.5" and off == 10


def test_nordic_dodf_entry_is_found() -> None:
    [entry] = layout.decode_dodf(NORDIC_DODF)
    assert entry.named(layout.LWM2M_BOOTSTRAP_OID) and entry.path == b"\x64\x32"
    assert entry.label == "LwM2M Bootstrap"


def test_built_dodf_entry_bytes() -> None:
    e = layout.encode_dodf_entry(layout.DodfEntry.of("L", layout.LWM2M_BOOTSTRAP_OID, b"\x64\x32"))
    # oidDO [1] { CommonObjectAttributes { label }, { applicationOID }, [1] OidDO { id, Path } }
    assert e == bytes.fromhex("A1203006 0C014C 030100 3006 0604672B0901 A10E 300C 0604672B0901 3004 04026432"
                              .replace(" ", ""))


def test_odf_and_iccid_bytes() -> None:
    assert layout.encode_odf([b"\x64\x30"]) == bytes.fromhex("A706300404026430")  # as on Nordic's card
    assert layout.decode_odf(bytes.fromhex("A706300404026430") + b"\x00" * 8) == [b"\x64\x30"]
    assert layout.encode_iccid("89441234567890123456") == bytes.fromhex("98442143658709214365")
    assert layout.encode_iccid("8944123456789012345") == bytes.fromhex("984421436587092143F5")
    assert layout.decode_iccid(bytes.fromhex("984421436587092143F5")) == "8944123456789012345"


def test_indicators_encoding_and_defaults() -> None:
    assert layout.encode_indicators(True, False) == bytes.fromhex("30068001FF810100")
    assert layout.decode_indicators(bytes.fromhex("30038001FF")) == (True, False)   # absent = False
    assert layout.decode_indicators(bytes.fromhex("3006820100810101")) == (False, True)  # unknown tag skipped


# ---- description -> image -> dump -------------------------------------------------------------------
def test_fixture_cards_read_back(tmp_path: FsPath) -> None:
    for name, expect in (("basic.yaml", (True, False, True)), ("plain.yaml", (False, False, False))):
        desc = CardDescription.load(CARDS / name)
        img_file = tmp_path / "card.json"
        build_image(desc).save(img_file)
        contents = ImageCardSource(img_file, endpoint="dev-1").read_contents()
        assert (contents.autonomous_connect, contents.ask_user, contents.has_indicators) == expect
        assert contents.iccid == desc.iccid
        assert contents.config == DeviceConfig("dev-1", desc.config.security, desc.config.servers)


def test_plain_card_has_no_indicator_file() -> None:
    img = build_image(CardDescription.load(CARDS / "plain.yaml"))
    adf = img.find((Fid.MF, Fid.ADF_PKCS15))
    assert adf is not None and adf.child(Fid.EF_INDICATORS) is None
    assert [e.oids for e in layout.decode_dodf(adf.child(Fid.EF_DODF).data)] == [
        frozenset({layout.LWM2M_BOOTSTRAP_OID})]


def test_cli_build_dump_round_trip(tmp_path: FsPath, capsys: pytest.CaptureFixture[str]) -> None:
    img1, img2, dumped = tmp_path / "1.json", tmp_path / "2.json", tmp_path / "d.yaml"
    assert card_main(["build", str(CARDS / "basic.yaml"), "-o", str(img1)]) == 0
    assert card_main(["dump", str(img1)]) == 0
    dumped.write_text(capsys.readouterr().out)
    assert CardDescription.load(dumped).to_dict() == CardDescription.load(CARDS / "basic.yaml").to_dict()
    assert card_main(["build", str(dumped), "-o", str(img2)]) == 0
    assert img1.read_bytes() == img2.read_bytes()
    assert card_main(["dump", "--files", str(img1)]) == 0
    assert "3F00/5015/6432  EF LwM2M_Bootstrap" in capsys.readouterr().out


# ---- hypothesis: description -> image -> APDU reads -> DeviceConfig ------------------------------------
_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)
_u31 = st.integers(0, 2**31 - 1)


@st.composite
def device_configs(draw: st.DrawFn) -> DeviceConfig:
    ssids = draw(st.lists(st.integers(1, 65534), unique=True, max_size=3))
    with_bs = draw(st.booleans()) or not ssids
    iids = draw(st.lists(st.integers(0, 65534), unique=True, min_size=len(ssids) + 1, max_size=len(ssids) + 1))
    security = []
    if with_bs:
        security.append(SecurityAccount(instance_id=iids[-1], uri=draw(_text), bootstrap=True,
                                        mode=SecurityMode.NOSEC, client_hold_off=draw(_u31),
                                        bootstrap_account_timeout=draw(_u31)))
    for iid, ssid in zip(iids, ssids):
        mode = draw(st.sampled_from(list(SecurityMode)))
        ident = draw(_text).encode() if mode == SecurityMode.PSK else draw(st.text(max_size=10)).encode()
        key = draw(st.binary(min_size=1 if mode == SecurityMode.PSK else 0, max_size=32))
        security.append(SecurityAccount(instance_id=iid, uri=draw(_text), mode=mode, psk_identity=ident,
                                        psk_key=key, short_server_id=ssid, client_hold_off=draw(_u31)))
    srv_iids = draw(st.lists(st.integers(0, 65534), unique=True, min_size=len(ssids), max_size=len(ssids)))
    servers = [ServerAccount(instance_id=i, short_server_id=s, lifetime=draw(_u31),
                             binding=draw(st.sampled_from(["U", "UQ", "T", "S", "US", "N"])),
                             default_pmin=draw(st.none() | _u31), default_pmax=draw(st.none() | _u31),
                             disable_timeout=draw(_u31), notification_storing=draw(st.booleans()))
               for i, s in zip(srv_iids, ssids)]
    return DeviceConfig("", sorted(security, key=lambda a: a.instance_id),
                        sorted(servers, key=lambda s: s.instance_id))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=device_configs(), indicators=st.none() | st.tuples(st.booleans(), st.booleans()),
       iccid=st.just("") | st.from_regex(r"\A[0-9]{19,20}\Z"))
def test_generated_contents_survive_the_card(cfg: DeviceConfig, indicators: tuple[bool, bool] | None,
                                             iccid: str) -> None:
    assert not cfg.problems()
    text = CardDescription(cfg, iccid, indicators).to_yaml()
    desc = CardDescription.from_dict(yaml.safe_load(text))
    image = CardImage.from_dict(json.loads(build_image(desc).to_bytes()))
    contents = ImageCardSource(image, endpoint="ep").read_contents()
    assert contents.config == DeviceConfig("ep", cfg.security, cfg.servers)
    assert contents.iccid == iccid
    assert (contents.autonomous_connect, contents.ask_user) == (indicators or (False, False))
    assert contents.has_indicators == (indicators is not None)


# ---- emulator APDUs ----------------------------------------------------------------------------------
def test_manage_channel_and_cla_channel_bits() -> None:
    card = UiccEmulator(basic_image())
    r = card.transmit(bytes.fromhex("0070000001"))
    assert r == b"\x01\x90\x00"
    assert card.transmit(bytes.fromhex("0070000001")) == b"\x02\x90\x00"
    assert sw(card.transmit(bytes.fromhex("00700005"))) == Sw.OK          # explicit channel 5
    assert sw(card.transmit(bytes.fromhex("00700005"))) == Sw.INCORRECT_P1P2  # already open
    # SELECT the application on channel 5 (CLA 0x41: further interindustry, 4 + 1)
    assert cla_for(5) == 0x41 and channel_of(0x41) == 5 and channel_of(0x03) == 3 and channel_of(0x83) == 3
    r = card.transmit(bytes([0x41]) + bytes.fromhex("A404040C") + AID + b"\x00")
    assert sw(r) == Sw.OK and b"\x84\x0c" + AID in r
    # channel 0 did not move: the ODF is not reachable from the MF by FID
    assert sw(card.transmit(bytes.fromhex("00A4000402503100"))) == Sw.FILE_NOT_FOUND
    assert sw(card.transmit(bytes.fromhex("41A4000402503100"))) == Sw.OK
    assert sw(card.transmit(bytes.fromhex("0070800005"))) == Sw.WRONG_LENGTH  # close takes no Le
    assert sw(card.transmit(bytes.fromhex("00708005"))) == Sw.OK
    assert sw(card.transmit(bytes.fromhex("41A4000402503100"))) == Sw.LOGICAL_CHANNEL_NOT_SUPPORTED
    assert sw(card.transmit(bytes.fromhex("00708005"))) == Sw.LOGICAL_CHANNEL_NOT_SUPPORTED
    assert sw(card.transmit(bytes.fromhex("00708000"))) == Sw.INCORRECT_P1P2  # the basic channel stays


def test_select_variants_and_status_words() -> None:
    card = UiccEmulator(basic_image())
    assert sw(card.transmit(bytes.fromhex("00A4000C023F00"))) == Sw.OK  # P2=0C: no data
    assert card.transmit(bytes.fromhex("00A4000C023F00")) == b"\x90\x00"
    r = card.transmit(bytes.fromhex("00A40804022FE2"))  # case 3 over T=0: 61xx then GET RESPONSE
    assert r[0] == 0x61
    fcp = card.transmit(bytes([0x00, 0xC0, 0x00, 0x00, r[1]]))
    assert sw(fcp) == Sw.OK and fcp[0] == 0x62 and bytes.fromhex("83022FE2") in fcp and bytes.fromhex("8002000A") in fcp
    assert sw(card.transmit(bytes.fromhex("00A40804047FFF503100"))) == Sw.FILE_NOT_FOUND  # no ADF selected yet
    assert sw(card.transmit(bytes.fromhex("00A4040C") + bytes([len(AID)]) + AID)) == Sw.OK
    assert sw(card.transmit(bytes.fromhex("00A40804047FFF503100"))) == Sw.OK  # 7FFF = current application
    assert sw(card.transmit(bytes.fromhex("00A4040406A000000063"))) == Sw.WRONG_LENGTH  # Lc 6, 5 bytes follow
    assert sw(card.transmit(bytes.fromhex("00A4040405A00000006300"))) == Sw.OK  # right-truncated AID
    assert sw(card.transmit(bytes.fromhex("00A4040405A00000006400"))) == Sw.FILE_NOT_FOUND
    assert sw(card.transmit(bytes.fromhex("00A400040312345600"))) == Sw.LC_INCONSISTENT_WITH_P1P2
    assert sw(card.transmit(bytes.fromhex("00A4000402ABCD00"))) == Sw.FILE_NOT_FOUND
    assert sw(card.transmit(bytes.fromhex("00A4050402ABCD00"))) == Sw.INCORRECT_P1P2
    assert sw(card.transmit(bytes.fromhex("A0A4000002 3F00".replace(" ", "")))) == Sw.CLA_NOT_SUPPORTED
    assert sw(card.transmit(bytes.fromhex("00CA000000"))) == Sw.INS_NOT_SUPPORTED
    assert sw(card.transmit(bytes.fromhex("00A4"))) == Sw.WRONG_LENGTH


def test_read_binary_offsets_and_lengths() -> None:
    card = UiccEmulator(basic_image())
    data = basic_image().find((Fid.MF, Fid.ADF_PKCS15, Fid.EF_LWM2M_BOOTSTRAP)).data
    assert sw(card.transmit(bytes.fromhex("00B0000000"))) == Sw.NO_CURRENT_EF   # MF is a DF
    card.transmit(bytes.fromhex("00A4040C") + bytes([len(AID)]) + AID)
    assert sw(card.transmit(bytes.fromhex("00A4000C026432"))) == Sw.OK
    assert card.transmit(bytes.fromhex("00B0000004")) == data[:4] + b"\x90\x00"
    assert card.transmit(bytes.fromhex("00B0000A05")) == data[10:15] + b"\x90\x00"
    assert card.transmit(bytes.fromhex("00B0000000")) == data[:256] + b"\x90\x00"  # Le 00: up to 256
    n = len(data)
    off = (n - 3).to_bytes(2, "big")
    assert card.transmit(bytes.fromhex("00B0") + off + b"\x10") == bytes([0x6C, 3])  # wrong Le, exact is 3
    assert card.transmit(bytes.fromhex("00B0") + off + b"\x03") == data[-3:] + b"\x90\x00"
    assert sw(card.transmit(bytes.fromhex("00B0") + n.to_bytes(2, "big") + b"\x01")) == Sw.WRONG_P1P2
    assert sw(card.transmit(bytes.fromhex("00B07FFF01"))) == Sw.WRONG_P1P2
    assert sw(card.transmit(bytes.fromhex("00B00000"))) == Sw.WRONG_LENGTH  # no Le
    card.transmit(bytes.fromhex("00A4080C022F00"))
    assert sw(card.transmit(bytes.fromhex("00B0000001"))) == Sw.INCOMPATIBLE_FILE_STRUCTURE  # EF DIR is records
    rec = card.transmit(bytes.fromhex("00B2010400"))
    assert sw(rec) == Sw.OK and rec[:2] == b"\x61\x23"
    assert sw(card.transmit(bytes.fromhex("00B2020400"))) == Sw.RECORD_NOT_FOUND
    assert card.transmit(bytes.fromhex("00B2010405")) == bytes([0x6C, 48])


@settings(max_examples=300, deadline=None)
@given(apdu=st.binary(max_size=40))
def test_emulator_answers_anything_with_a_status_word(apdu: bytes) -> None:
    card = UiccEmulator(basic_image())
    card.transmit(bytes.fromhex("0070000001"))
    resp = card.transmit(apdu)
    assert len(resp) >= 2 and resp[-2] in (0x90, 0x61, 0x6C, 0x67, 0x68, 0x69, 0x6A, 0x6B, 0x6D, 0x6E, 0x62)
    assert resp[-2:] != b"\x6f\x00"  # no internal error for any input


def test_reader_apdu_sequence_follows_appendix_g() -> None:
    card = UiccEmulator(basic_image())
    CardSession(card.transmit).read()
    ins = [(c[0], c[1], c[2]) for c, _ in card.log]
    assert ins[0] == (0x00, 0x70, 0x00)                           # MANAGE CHANNEL open on the basic channel
    assert (0x01, 0xA4, 0x04) in ins                              # SELECT AID on logical channel 1
    assert all(c[0] == 0x01 for c, _ in card.log[1:-1])           # everything else on channel 1
    assert ins[-1] == (0x00, 0x70, 0x80) and card.log[-1][0][3] == 1  # closed again
    assert card.channels.keys() == {0}


def test_reader_accepts_ts_example_dodf_without_dir_and_iccid() -> None:
    img = basic_image()
    mf = CardFile(Fid.MF, "DF", "MF")
    adf = mf.add(CardFile(Fid.ADF_PKCS15, "ADF", aid=AID))
    adf.add(CardFile(Fid.EF_ODF, "transparent", data=bytes.fromhex("A706300404026430") + b"\xff" * 8))
    adf.add(CardFile(Fid.EF_DODF, "transparent", data=NORDIC_DODF + b"\xff" * 4))
    adf.add(CardFile(Fid.EF_LWM2M_BOOTSTRAP, "transparent", data=NORDIC_BOOTSTRAP))
    contents = ImageCardSource(CardImage(mf, img.atr)).read_contents()
    assert contents.iccid == "" and not contents.has_indicators
    assert contents.config.security[0].uri == "coap://leshan.eclipseprojects.io:5783"


# ---- malformed input: named errors saying where --------------------------------------------------------
def _image_with(path: tuple[int, ...], data: bytes) -> CardImage:
    img = basic_image()
    img.find(path).data = data
    return img


BS = (Fid.MF, Fid.ADF_PKCS15, Fid.EF_LWM2M_BOOTSTRAP)
DODF = (Fid.MF, Fid.ADF_PKCS15, Fid.EF_DODF)


@pytest.mark.parametrize(("path", "mutate", "message"), [
    (BS, lambda d: d[:3], "shorter than the 4-byte header"),
    (BS, lambda d: d[:4] + d[4:-5], "only"),                                   # size says more than present
    (BS, lambda d: d[:-1], "offset 2"),
    (BS, lambda d: d[:9] + b"\x08\x00\x7f" + d[12:], "malformed TLV"),        # instance TLV too long
    (BS, lambda d: b"\x00\x03" + d[2:], "truncated"),                         # 3 objects declared, 2 there
    (BS, lambda d: layout.encode_bootstrap_file([layout.StoredObject(999, "", b"\xc1\x00\x01")]),
     "unknown object 999"),
    (DODF, lambda d: d.replace(bytes.fromhex("0604672B0901"), bytes.fromhex("0604672B0902")),
     "no data object with OID 2.23.43.9.1"),
    (DODF, lambda d: d[:20], "EF DODF 6430 offset 0"),
    ((Fid.MF, Fid.EF_ICCID), lambda d: b"\x9A" + d[1:], "EF ICCID offset 0"),
    ((Fid.MF, Fid.ADF_PKCS15, Fid.EF_INDICATORS), lambda d: b"\x04\x00", "expected a SEQUENCE"),
])
def test_corrupt_card_files_raise_card_error(path, mutate, message: str) -> None:  # noqa: ANN001
    img = basic_image()
    img.find(path).data = mutate(img.find(path).data)
    with pytest.raises(CardDataError) as ei:
        ImageCardSource(img).read_contents()
    assert message in str(ei.value)
    assert isinstance(ei.value, CardError)


def test_bootstrap_error_names_byte_offset() -> None:
    data = bytearray(basic_image().find(BS).data)
    data[9 + 2] = 0xFF  # object 0's first TLV header claims a huge length
    with pytest.raises(CardDataError, match=r"EF LwM2M_Bootstrap 6432 offset 9: object 0: malformed TLV"):
        ImageCardSource(_image_with(BS, bytes(data))).read_contents()


@pytest.mark.parametrize(("doc", "message"), [
    ([], "top level must be a mapping"),
    ({"bootstrap": {"security": []}, "colour": 1}, "unknown field(s) ['colour']"),
    ({"iccid": "89ab", "bootstrap": {}}, "iccid"),
    ({"iccid": 8944, "bootstrap": {}}, "quote the ICCID"),
    ({"indicators": {"autonomous_connect": "yes"}, "bootstrap": {}}, "indicators.autonomous_connect"),
    ({"indicators": {"ask": True}, "bootstrap": {}}, "indicators"),
    ({}, "bootstrap"),
    ({"bootstrap": {"endpoint": "x"}}, "names no endpoint"),
    ({"bootstrap": {"security": [{"instance_id": 0, "uri": "coap://x", "mode": "FOO"}]}}, "security[0].mode: mode 'FOO' is not one of PSK"),
    ({"bootstrap": {"security": [{"instance_id": 0, "uri": "a", "bootstrap": True},
                                 {"instance_id": 0, "uri": "b", "bootstrap": True}]}}, "duplicate instance_id"),
    ({"format": "other/1", "bootstrap": {}}, "format"),
])
def test_malformed_descriptions(doc, message: str) -> None:  # noqa: ANN001
    with pytest.raises(CardDescriptionError) as ei:
        CardDescription.from_dict(doc, where="card.yaml")
    assert message in str(ei.value) and "card.yaml" in str(ei.value)


def test_inconsistent_accounts_refused_unless_allowed() -> None:
    desc = CardDescription.from_dict({"bootstrap": {"security": [
        {"instance_id": 0, "uri": "coap://x", "short_server_id": 5}]}})
    with pytest.raises(CardDescriptionError, match="has no Server instance"):
        build_image(desc)
    assert build_image(desc, allow_inconsistent=True).find(BS) is not None


def test_invalid_yaml_names_line(tmp_path: FsPath) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("bootstrap:\n  security: [\n")
    with pytest.raises(CardDescriptionError, match=r"bad.yaml:3:1: invalid YAML"):
        CardDescription.load(f)


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.update(format="x"), "format"),
    (lambda d: d["files"][2].update(data="zz"), "files[2].data: not valid hex"),
    (lambda d: d["files"][1].update(records=["00"]), "files[1].records[0]: record of 1 bytes"),
    (lambda d: d["files"].append({"path": "3F00/1234/0001", "type": "transparent"}), "parent 3F00/1234"),
    (lambda d: d["files"].append(copy.deepcopy(d["files"][2])), "duplicate path"),
    (lambda d: d["files"][3].update(aid="A0"), "files[3].aid"),
    (lambda d: d["files"][2].update(type="cyclic"), "files[2].type"),
    (lambda d: d["files"][2].update(path="3F00/XYZ"), "files[2].path"),
    (lambda d: d.update(atr="3B"), "atr"),
])
def test_malformed_images(mutate, message: str) -> None:  # noqa: ANN001
    doc = basic_image().to_dict()
    mutate(doc)
    with pytest.raises(CardImageError) as ei:
        CardImage.from_dict(doc, where="img.json")
    assert message in str(ei.value) and "img.json" in str(ei.value)


def test_cli_reports_errors_without_traceback(tmp_path: FsPath, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert card_main(["dump", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lwm2m-card: error: ") and "bad.json:1:2" in err and "Traceback" not in err
    doc = basic_image().to_dict()
    doc["files"][6]["data"] = "0001"  # EF LwM2M_Bootstrap truncated inside its header
    bad.write_text(json.dumps(doc))
    assert card_main(["dump", str(bad)]) == 1
    assert "EF LwM2M_Bootstrap 6432 offset 0" in capsys.readouterr().err
    assert card_main(["build", str(tmp_path / "missing.yaml"), "-o", str(tmp_path / "o.json")]) == 1
    assert "missing.yaml: cannot read" in capsys.readouterr().err


async def test_async_source_sets_indicators() -> None:
    src = ImageCardSource(basic_image(), endpoint="urn:dev:1")
    assert not src.autonomous_connect and src.contents is None
    cfg = await src.read()
    assert cfg is not None and cfg.endpoint == "urn:dev:1"
    assert src.autonomous_connect and not src.ask_user and src.iccid == "8944500102030405067"
