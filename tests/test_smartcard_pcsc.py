"""The card through real PC/SC: pcscd + vsmartcard's vpcd driver + our emulator, read with pyscard.

Skipped only when pcscd, the vpcd driver or pyscard are absent. The vpcd reader is machine-wide
(fixed port from /etc/reader.conf.d/vpcd), so PcscEnvironment holds a file lock for the module:
pytest-xdist workers and parallel runs take turns.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path as FsPath
from typing import Iterator

import pytest

from reference.smartcard import (
    CardDescription,
    NoCardError,
    NoReaderError,
    PcscCardSource,
    PcscEnvironment,
    build_image,
)
from reference.smartcard.apdu import Sw
from reference.smartcard.pcsc_env import unavailable_reason
from reference.smartcard.reader import close_connection

CARDS = FsPath(__file__).resolve().parent.parent / "fixtures" / "cards"
ROOT = FsPath(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pcsc() -> Iterator[PcscEnvironment]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"real PC/SC unavailable: {reason}")
    with PcscEnvironment(lock_timeout=120) as env:
        yield env


def _image(name: str):  # noqa: ANN202
    return build_image(CardDescription.load(CARDS / name))


async def test_pcsc_source_reads_card_via_pcscd_and_vpcd(pcsc: PcscEnvironment) -> None:
    card = pcsc.insert(_image("basic.yaml"))
    try:
        src = PcscCardSource(reader=pcsc.reader, endpoint="urn:imei:1", timeout=10)
        cfg = await src.read()
        desc = CardDescription.load(CARDS / "basic.yaml")
        assert cfg is not None and cfg.endpoint == "urn:imei:1"
        assert (cfg.security, cfg.servers) == (desc.config.security, desc.config.servers)
        assert src.autonomous_connect is True and src.ask_user is False
        assert src.iccid == "8944500102030405067"
        # the APDUs really went through vpcd to the emulator, on a logical channel
        cmds = [c for c, _ in card.emulator.log]
        assert cmds[0] == bytes.fromhex("0070000001") and any(c[:3] == b"\x01\xa4\x04" for c in cmds)
    finally:
        pcsc.remove(card)


def test_apdus_and_status_words_through_pcsc(pcsc: PcscEnvironment) -> None:
    from smartcard.System import readers

    card = pcsc.insert(_image("plain.yaml"))
    try:
        [reader] = [r for r in readers() if str(r) == pcsc.reader]
        conn = reader.createConnection()
        conn.connect()
        try:
            def tx(h: str) -> tuple[bytes, int]:
                data, sw1, sw2 = conn.transmit(list(bytes.fromhex(h)))
                return bytes(data), sw1 << 8 | sw2

            assert tx("0070000001") == (b"\x01", Sw.OK)
            data, sw = tx("01A404040CA000000063504B43532D313500")
            assert sw == Sw.OK and data[0] == 0x62
            assert tx("01A4000C026433")[1] == Sw.FILE_NOT_FOUND   # plain card: no indicators EF
            assert tx("01A4000C025031")[1] == Sw.OK
            assert tx("01B0000008") == (bytes.fromhex("A706300404026430"), Sw.OK)
            assert tx("01B0000010") == (b"", 0x6C08)
            assert tx("01B0000801")[1] == Sw.WRONG_P1P2
            assert tx("00708001")[1] == Sw.OK
            assert tx("01B0000001")[1] == Sw.LOGICAL_CHANNEL_NOT_SUPPORTED
            assert conn.getATR() == list(bytes.fromhex("3B80800101"))
        finally:
            close_connection(conn)
    finally:
        pcsc.remove(card)


def test_removal_and_reinsertion(pcsc: PcscEnvironment) -> None:
    card = pcsc.insert(_image("plain.yaml"))
    pcsc.remove(card)
    with pytest.raises(NoCardError):
        PcscCardSource(reader=pcsc.reader).read_contents()
    card = pcsc.insert(_image("plain.yaml"))
    try:
        contents = PcscCardSource(reader=pcsc.reader).read_contents()
        assert not contents.has_indicators and not contents.autonomous_connect and not contents.ask_user
        assert contents.iccid == "89882806660004321012"
    finally:
        pcsc.remove(card)
    with pytest.raises(NoReaderError):
        PcscCardSource(reader="no such reader").read_contents()


def test_cli_serve_inserts_card(pcsc: PcscEnvironment, tmp_path: FsPath) -> None:
    img = tmp_path / "card.json"
    _image("basic.yaml").save(img)
    proc = subprocess.Popen([sys.executable, "-m", "reference.smartcard.cli", "serve", str(img),
                             "--vpcd-port", str(pcsc.port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        reader = pcsc.wait_present(timeout=15)
        contents = PcscCardSource(reader=reader).read_contents()
        assert contents.autonomous_connect and contents.iccid == "8944500102030405067"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else ""
