"""Reading LwM2M bootstrap information from a UICC (Core 1.1.1 Appendix G.2.5), for the client.

The APDU sequence (one code path for a real PC/SC reader and for an in-process card image):

1. MANAGE CHANNEL open (``00 70 00 00 01``) -- G.2.1: "MUST open a logical channel".
2. On that channel, SELECT EF DIR ``2F00`` by path from the MF and READ RECORD its application
   templates to find the PKCS#15 AID (G.2.1: "MUST evaluate the PKCS#15 application template");
   a card without EF DIR is tried with the default PKCS#15 AID.
3. SELECT the PKCS#15 ADF by AID (``P1=04``: direct application selection).
4. SELECT EF ODF ``5031``, READ BINARY it, take the DODF paths (G.3.1).
5. SELECT and read each DODF in priority order; the first entry named by OID 2.23.43.9.1 gives the
   EF LwM2M_Bootstrap path (G.3.2); an entry named by :data:`~reference.smartcard.layout.INDICATORS_OID`
   gives the project's DM-SC indicators file (absent: both indicators False).
6. SELECT and read EF LwM2M_Bootstrap, decode objects and their TLV (G.3.3, Core §7.4.3).
7. SELECT EF ICCID ``2FE2`` by path from the MF and read it (ETSI TS 102 221 §13.2); absent: "".
8. MANAGE CHANNEL close.

Every failure is a :class:`~reference.smartcard.errors.CardError` subclass naming the step.
"""
from __future__ import annotations

import asyncio
import dataclasses
import threading
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import TYPE_CHECKING, Callable

from reference.model.config import ConfigError, DeviceConfig
from reference.model.types import Values
from reference.smartcard import asn1, layout

if TYPE_CHECKING:
    from reference.smartcard.image import CardImage
from reference.smartcard.apdu import SW1_BYTES_AVAILABLE, SW1_WRONG_LE, Command, Ins, Sw, cla_for
from reference.smartcard.errors import (
    CardDataError,
    CardError,
    CardProtocolError,
    NoCardError,
    NoReaderError,
)
from reference.smartcard.layout import Fid

#: ``transmit(apdu) -> response data + SW1 SW2``
Transmit = Callable[[bytes], bytes]


@dataclass
class CardContents:
    """What a card told the client. ``config.endpoint`` is the endpoint passed to the source (a
    card names none). ``has_indicators`` tells whether the card carried the indicators file at all;
    ``values`` holds every resource of EF LwM2M_Bootstrap (also objects other than /0 and /1)."""

    config: DeviceConfig
    autonomous_connect: bool = False
    ask_user: bool = False
    iccid: str = ""
    has_indicators: bool = False
    values: Values = field(default_factory=dict)


class CardSession:
    """The APDU conversation with one card over ``transmit``; see the module docstring."""

    def __init__(self, transmit: Transmit, registry=None) -> None:  # noqa: ANN001
        self._transmit = transmit
        self._registry = registry
        self.channel = 0

    # ---- APDU helpers ------------------------------------------------------------------------
    def send(self, cmd: Command, what: str) -> tuple[bytes, int]:
        """Transmit, following 61xx (GET RESPONSE) and 6Cxx (reissue with Le=xx) once each."""
        resp = self._raw(cmd.to_bytes(), what)
        data, sw = resp[:-2], int.from_bytes(resp[-2:], "big")
        if sw >> 8 == SW1_WRONG_LE:
            resp = self._raw(dataclasses.replace(cmd, le=sw & 0xFF).to_bytes(), what)
            data, sw = resp[:-2], int.from_bytes(resp[-2:], "big")
        if sw >> 8 == SW1_BYTES_AVAILABLE:
            get = Command(cla_for(self.channel), Ins.GET_RESPONSE, 0, 0, le=sw & 0xFF)
            resp = self._raw(get.to_bytes(), what + " (GET RESPONSE)")
            data, sw = data + resp[:-2], int.from_bytes(resp[-2:], "big")
        return data, sw

    def _raw(self, apdu: bytes, what: str) -> bytes:
        try:
            resp = self._transmit(apdu)
        except CardError:
            raise
        except Exception as e:  # noqa: BLE001 - reader libraries raise their own types
            raise NoCardError(f"{what}: transmit failed: {e}") from None
        if len(resp) < 2:
            raise CardProtocolError(f"{what}: response of {len(resp)} bytes has no status word", 0)
        return resp

    def _cla(self) -> int:
        return cla_for(self.channel)

    def open_channel(self) -> int:
        data, sw = self.send(Command(0x00, Ins.MANAGE_CHANNEL, 0x00, 0x00, le=1), "MANAGE CHANNEL open")
        if sw != Sw.OK or len(data) != 1:
            raise CardProtocolError("MANAGE CHANNEL open refused: Appendix G.2.1 needs a logical channel", sw)
        self.channel = data[0]
        return self.channel

    def close_channel(self) -> None:
        if self.channel:
            ch, self.channel = self.channel, 0
            self.send(Command(0x00, Ins.MANAGE_CHANNEL, 0x80, ch), "MANAGE CHANNEL close")

    def select(self, p1: int, data: bytes, what: str, missing_ok: bool = False) -> bytes | None:
        """SELECT returning the FCP; ``None`` if the file is absent (6A82) and ``missing_ok``."""
        fcp, sw = self.send(Command(self._cla(), Ins.SELECT, p1, 0x04, data, le=0), f"SELECT {what}")
        if sw == Sw.FILE_NOT_FOUND and missing_ok:
            return None
        if sw == Sw.FILE_NOT_FOUND:
            raise CardProtocolError(f"SELECT {what}: file not found", sw)
        if sw != Sw.OK:
            raise CardProtocolError(f"SELECT {what} failed", sw)
        return fcp

    def select_path(self, path: bytes, what: str, missing_ok: bool = False) -> bytes | None:
        """SELECT a PKCS#15 ``Path``: a lone FID relative to the current DF; a path starting with
        3F00 from the MF (P1=08); any other path from the current DF (P1=09) -- PKCS#15 v1.1 §6.1.5."""
        if len(path) == 2:
            return self.select(0x00, path, what, missing_ok)
        if path[:2] == b"\x3f\x00":
            return self.select(0x08, path[2:], what, missing_ok)
        return self.select(0x09, path, what, missing_ok)

    def read_binary(self, fcp: bytes, what: str) -> bytes:
        """The whole current transparent EF: size from the FCP (tag 80), else read until 6B00/6282."""
        size = _fcp_size(fcp)
        out = bytearray()
        while size is None or len(out) < size:
            if len(out) > 0x7FFF:
                raise CardDataError("file larger than the READ BINARY offset range", what)
            le = 0 if size is None else min(size - len(out), 256) % 256
            cmd = Command(self._cla(), Ins.READ_BINARY, len(out) >> 8, len(out) & 0xFF, le=le)
            data, sw = self.send(cmd, f"READ BINARY {what} offset {len(out)}")
            if size is None and sw in (Sw.WRONG_P1P2, Sw.END_OF_FILE) and not data:
                break
            if sw not in (Sw.OK, Sw.END_OF_FILE):
                raise CardProtocolError(f"READ BINARY {what} at offset {len(out)} failed", sw)
            if not data:
                raise CardDataError(f"card returned no data at offset {len(out)}", what)
            out += data
            if sw == Sw.END_OF_FILE:
                break
        return bytes(out)

    def read_records(self, fcp: bytes, what: str) -> list[bytes]:
        desc = _fcp_tag(fcp, 0x82)
        count = desc[4] if desc is not None and len(desc) >= 5 else 254
        records = []
        for n in range(1, count + 1):
            data, sw = self.send(Command(self._cla(), Ins.READ_RECORD, n, 0x04, le=0), f"READ RECORD {what} #{n}")
            if sw == Sw.RECORD_NOT_FOUND:
                break
            if sw != Sw.OK:
                raise CardProtocolError(f"READ RECORD {what} #{n} failed", sw)
            records.append(data)
        return records

    # ---- the Appendix G procedure ----------------------------------------------------------------
    def read(self, endpoint: str = "") -> CardContents:
        self.open_channel()
        try:
            return self._read(endpoint)
        finally:
            try:
                self.close_channel()
            except CardError:
                pass  # the card was read (or already failed); a refused close changes nothing

    def _read(self, endpoint: str) -> CardContents:
        aid = self._find_pkcs15_aid()
        self.select(0x04, aid, "PKCS#15 application by AID")
        odf = self.read_binary(self.select(0x00, Fid.EF_ODF.to_bytes(2, "big"), "EF ODF") or b"", "EF ODF")
        dodf_paths = layout.decode_odf(odf)
        if not dodf_paths:
            raise CardDataError("no DODF pointer (dataObjects [7])", "EF ODF")
        bootstrap: layout.DodfEntry | None = None
        indicators: layout.DodfEntry | None = None
        for path in dodf_paths:
            name = f"EF DODF {path.hex().upper()}"
            fcp = self.select_path(path, name)
            for entry in layout.decode_dodf(self.read_binary(fcp or b"", name), name):
                if bootstrap is None and entry.named(layout.LWM2M_BOOTSTRAP_OID):
                    bootstrap = entry
                elif indicators is None and entry.named(layout.INDICATORS_OID):
                    indicators = entry
        if bootstrap is None:
            raise CardDataError(f"no data object with OID {layout.LWM2M_BOOTSTRAP_OID}", "EF DODF")
        bs_name = f"EF LwM2M_Bootstrap {bootstrap.path.hex().upper()}"
        raw = self.read_binary(self.select_path(bootstrap.path, bs_name) or b"", bs_name)
        values = layout.decode_bootstrap_values(raw, self._registry, bs_name)
        try:
            config = DeviceConfig.from_values(endpoint, values)
        except (ConfigError, ValueError) as e:
            raise CardDataError(f"bootstrap objects do not form accounts: {e}", bs_name) from None
        autonomous = ask = False
        if indicators is not None:
            ind_name = f"EF DM-SC indicators {indicators.path.hex().upper()}"
            autonomous, ask = layout.decode_indicators(
                self.read_binary(self.select_path(indicators.path, ind_name) or b"", ind_name), ind_name)
        iccid = ""
        fcp = self.select(0x08, Fid.EF_ICCID.to_bytes(2, "big"), "EF ICCID", missing_ok=True)
        if fcp is not None:
            iccid = layout.decode_iccid(self.read_binary(fcp, "EF ICCID"))
        return CardContents(config=config, autonomous_connect=autonomous, ask_user=ask, iccid=iccid,
                            has_indicators=indicators is not None, values=values)

    def _find_pkcs15_aid(self) -> bytes:
        fcp = self.select(0x08, Fid.EF_DIR.to_bytes(2, "big"), "EF DIR", missing_ok=True)
        if fcp is None:
            return layout.PKCS15_AID
        for n, rec in enumerate(self.read_records(fcp, "EF DIR"), start=1):
            tpl = layout.decode_dir_record(rec, f"EF DIR record {n}")
            if tpl is not None and tpl[0].startswith(layout.PKCS15_AID):
                return tpl[0]
        raise CardDataError("no PKCS#15 application template (AID A000000063504B43532D3135)", "EF DIR")


def _fcp_tag(fcp: bytes, tag: int) -> bytes | None:
    try:
        top = asn1.parse(fcp, "FCP")
        if not top or top[0].tag != 0x62:
            return None
        return next((e.value for e in top[0].children("FCP") if e.tag == tag), None)
    except CardDataError:
        return None


def _fcp_size(fcp: bytes) -> int | None:
    v = _fcp_tag(fcp, 0x80)
    return int.from_bytes(v, "big") if v else None


# ---- sources for the client --------------------------------------------------------------------
class _SourceBase:
    """The client's ``BootstrapSource`` seam: ``await read()`` returns the card's DeviceConfig or
    raises :class:`CardError`; afterwards ``autonomous_connect``, ``ask_user``, ``iccid`` and
    ``contents`` describe what the card said. Reads run in a worker thread, bounded by ``timeout``."""

    def __init__(self, endpoint: str = "", timeout: float = 10.0, registry=None) -> None:  # noqa: ANN001
        self.endpoint = endpoint
        self.timeout = timeout
        self.registry = registry
        self.contents: CardContents | None = None

    @property
    def autonomous_connect(self) -> bool:
        return bool(self.contents and self.contents.autonomous_connect)

    @property
    def ask_user(self) -> bool:
        return bool(self.contents and self.contents.ask_user)

    @property
    def iccid(self) -> str:
        return self.contents.iccid if self.contents else ""

    def read_contents(self) -> CardContents:  # pragma: no cover - abstract
        raise NotImplementedError

    async def read_contents_async(self) -> CardContents:
        try:
            return await asyncio.wait_for(asyncio.to_thread(self.read_contents), self.timeout)
        except asyncio.TimeoutError:
            raise NoCardError(f"card did not answer within {self.timeout} s") from None

    async def read(self) -> DeviceConfig | None:
        self.contents = await self.read_contents_async()
        return self.contents.config


class ImageCardSource(_SourceBase):
    """Reads a card image file through :class:`UiccEmulator` with the very APDUs sent to a real card."""

    def __init__(self, image: "str | FsPath | CardImage", endpoint: str = "", timeout: float = 10.0,
                 registry=None) -> None:  # noqa: ANN001
        super().__init__(endpoint, timeout, registry)
        self.image = image

    def read_contents(self) -> CardContents:
        from reference.smartcard.emulator import UiccEmulator
        from reference.smartcard.image import CardImage

        image = self.image if isinstance(self.image, CardImage) else CardImage.load(self.image)
        card = UiccEmulator(image)
        self.contents = CardSession(card.transmit, self.registry).read(self.endpoint)
        return self.contents


class PcscCardSource(_SourceBase):
    """Reads the card in a PC/SC reader (pyscard). ``reader`` selects a reader whose name contains
    the string; default: the first reader holding a card."""

    _lock = threading.Lock()  # pyscard contexts are per call; serialize our own card sessions

    def __init__(self, reader: str | None = None, endpoint: str = "", timeout: float = 10.0,
                 registry=None) -> None:  # noqa: ANN001
        super().__init__(endpoint, timeout, registry)
        self.reader = reader

    def read_contents(self) -> CardContents:
        try:
            from smartcard.Exceptions import CardConnectionException, NoCardException
            from smartcard.System import readers as list_readers
        except ImportError as e:  # pragma: no cover - pyscard is a declared dependency
            raise NoReaderError(f"pyscard unavailable: {e}") from None
        with self._lock:
            try:
                available = list_readers()
            except Exception as e:  # noqa: BLE001 - pcsc-lite reports "service not available" so
                raise NoReaderError(f"PC/SC service unavailable: {e}") from None
            names = [str(r) for r in available]
            chosen = [r for r in available if self.reader is None or self.reader in str(r)]
            if not chosen:
                raise NoReaderError(f"no reader matching {self.reader!r} among {names}" if self.reader
                                    else "no smartcard reader attached")
            last: Exception | None = None
            for r in chosen:
                conn = r.createConnection()
                try:
                    conn.connect()
                except (NoCardException, CardConnectionException) as e:
                    last = e
                    close_connection(conn)
                    continue
                try:
                    def transmit(apdu: bytes) -> bytes:
                        data, sw1, sw2 = conn.transmit(list(apdu))
                        return bytes(data) + bytes([sw1, sw2])

                    self.contents = CardSession(transmit, self.registry).read(self.endpoint)
                    return self.contents
                finally:
                    close_connection(conn)
            raise NoCardError(f"no card in reader(s) {[str(r) for r in chosen]}: {last}")


def close_connection(conn: object) -> None:
    """Disconnect and release a pyscard connection now: left to ``__del__``, pyscard releases its
    PC/SC context late and raises if pcscd has gone meanwhile."""
    for method in ("disconnect", "release"):
        fn = getattr(conn, method, None)
        if fn is not None:
            try:
                fn()
            except Exception:  # noqa: BLE001 - card or service may already be gone
                pass
