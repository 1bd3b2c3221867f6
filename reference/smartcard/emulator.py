"""In-process UICC emulator: answers APDUs from a :class:`~reference.smartcard.image.CardImage`.

Implements the commands Core 1.1.1 Appendix G.2 needs a device to send (ETSI TS 102 221 §11):
SELECT (by FID, by DF name/AID, by path from MF or from the current DF), READ BINARY, READ
RECORD, MANAGE CHANNEL (open/close) and GET RESPONSE, with per-logical-channel selection state
(TS 102 221 §8.6: each channel has its own current DF/EF and application). Every input, however
malformed, gets a status word; nothing raises.

Length handling (documented choice among what TS 102 221 §10.2.1 permits): READ BINARY/RECORD with
Le = 00 returns whatever is available up to 256 bytes with 9000; with a non-zero Le larger than what
the file offers from the offset, the card answers ``6Cxx`` (xx = the available length) so the
reader can reissue with the exact Le, as a UICC does under T=0.
"""
from __future__ import annotations

from dataclasses import dataclass

from reference.smartcard.apdu import SW1_BYTES_AVAILABLE, SW1_WRONG_LE, Command, Ins, Sw, channel_of
from reference.smartcard.asn1 import tlv
from reference.smartcard.image import CardFile, CardImage
from reference.smartcard.layout import Fid

MAX_CHANNELS = 20  # channels 0..19 (TS 102 221 §10.1.1)


@dataclass
class _Channel:
    current_df: CardFile
    current_ef: CardFile | None = None
    application: CardFile | None = None  # the ADF selected on this channel, if any


def _sw(sw: int, data: bytes = b"") -> bytes:
    return data + sw.to_bytes(2, "big")


class UiccEmulator:
    """A powered card. ``transmit(apdu) -> response+SW``; ``reset()`` = warm/cold reset."""

    def __init__(self, image: CardImage) -> None:
        self.image = image
        self.log: list[tuple[bytes, bytes]] = []  # (command, response) for tests and evidence
        self.reset()

    @property
    def atr(self) -> bytes:
        return self.image.atr

    def reset(self) -> None:
        """After reset only the basic channel is open, with the MF selected (TS 102 221 §8.6)."""
        self.channels: dict[int, _Channel] = {0: _Channel(self.image.mf)}
        self._pending = b""  # response data waiting for GET RESPONSE

    def transmit(self, apdu: bytes) -> bytes:
        try:
            resp = self._dispatch(bytes(apdu))
        except Exception:  # noqa: BLE001 - a card never crashes; report a technical problem
            resp = _sw(Sw.TECHNICAL_PROBLEM)
        self.log.append((bytes(apdu), resp))
        return resp

    # ---- dispatch ----------------------------------------------------------------------------
    def _dispatch(self, apdu: bytes) -> bytes:
        try:
            cmd = Command.parse(apdu)
        except ValueError:
            return _sw(Sw.WRONG_LENGTH)
        ch_no = channel_of(cmd.cla)
        if ch_no is None:
            return _sw(Sw.CLA_NOT_SUPPORTED)
        if cmd.ins == Ins.GET_RESPONSE:
            return self._get_response(cmd)
        self._pending = b""
        if cmd.ins == Ins.MANAGE_CHANNEL:
            return self._manage_channel(cmd, ch_no)
        ch = self.channels.get(ch_no)
        if ch is None:
            return _sw(Sw.LOGICAL_CHANNEL_NOT_SUPPORTED)
        if cmd.ins == Ins.SELECT:
            return self._select(cmd, ch)
        if cmd.ins == Ins.READ_BINARY:
            return self._read_binary(cmd, ch)
        if cmd.ins == Ins.READ_RECORD:
            return self._read_record(cmd, ch)
        return _sw(Sw.INS_NOT_SUPPORTED)

    # ---- MANAGE CHANNEL (TS 102 221 §11.1.17) ----------------------------------------------------
    def _manage_channel(self, cmd: Command, origin: int) -> bytes:
        if origin not in self.channels:
            return _sw(Sw.LOGICAL_CHANNEL_NOT_SUPPORTED)
        if cmd.p1 == 0x00:  # open
            if cmd.data:
                return _sw(Sw.WRONG_LENGTH)
            if cmd.p2 == 0x00:  # the card assigns the number and returns it (Le = 01)
                if cmd.le != 1:
                    return _sw(Sw.WRONG_LENGTH)
                free = next((n for n in range(1, MAX_CHANNELS) if n not in self.channels), None)
                if free is None:
                    return _sw(Sw.FUNCTION_NOT_SUPPORTED)
                new, data = free, bytes([free])
            else:
                if not 1 <= cmd.p2 < MAX_CHANNELS:
                    return _sw(Sw.INCORRECT_P1P2)
                if cmd.p2 in self.channels:
                    return _sw(Sw.INCORRECT_P1P2)
                new, data = cmd.p2, b""
            # The new channel starts from the origin channel's selection when opened from a
            # non-basic channel, else from the MF (TS 102 221 §11.1.17.2).
            src = self.channels[origin]
            self.channels[new] = (_Channel(src.current_df, src.current_ef, src.application) if origin
                                  else _Channel(self.image.mf))
            return _sw(Sw.OK, data)
        if cmd.p1 == 0x80:  # close
            if cmd.data or cmd.le is not None:
                return _sw(Sw.WRONG_LENGTH)
            if cmd.p2 == 0 or cmd.p2 >= MAX_CHANNELS:
                return _sw(Sw.INCORRECT_P1P2)
            if cmd.p2 not in self.channels:
                return _sw(Sw.LOGICAL_CHANNEL_NOT_SUPPORTED)
            del self.channels[cmd.p2]
            return _sw(Sw.OK)
        return _sw(Sw.INCORRECT_P1P2)

    # ---- SELECT (TS 102 221 §11.1.1) -------------------------------------------------------------
    def _select(self, cmd: Command, ch: _Channel) -> bytes:
        # P2 b4-b3: 01 return FCP, 11 no data (00, ISO's FCI, is answered like 01); b2-b1 must be
        # 00 except for application selection, where only "first or only occurrence" is supported.
        mode = cmd.p2 & 0x0C
        if cmd.p2 & 0xF0 or mode == 0x08 or (cmd.p2 & 0x03 and cmd.p1 != 0x04):
            return _sw(Sw.INCORRECT_P1P2)
        want_fcp = mode != 0x0C
        if cmd.p1 == 0x04:  # by DF name (AID), full or right-truncated
            if not 1 <= len(cmd.data) <= 16:
                return _sw(Sw.WRONG_LENGTH)
            if cmd.p2 & 0x03:  # next/last/previous occurrence: one application per AID here
                return _sw(Sw.FUNCTION_NOT_SUPPORTED)
            target = next((a for a in self.image.applications() if a.aid.startswith(cmd.data)), None)
        elif cmd.p1 == 0x00:  # by file identifier
            if len(cmd.data) != 2:
                return _sw(Sw.LC_INCONSISTENT_WITH_P1P2 if cmd.data else Sw.WRONG_LENGTH)
            target = self._by_fid(int.from_bytes(cmd.data, "big"), ch)
        elif cmd.p1 in (0x08, 0x09):  # path from MF / from current DF
            if not cmd.data or len(cmd.data) % 2:
                return _sw(Sw.LC_INCONSISTENT_WITH_P1P2)
            fids = [int.from_bytes(cmd.data[i:i + 2], "big") for i in range(0, len(cmd.data), 2)]
            target = self._by_path(fids, self.image.mf if cmd.p1 == 0x08 else ch.current_df, ch)
        else:
            return _sw(Sw.INCORRECT_P1P2)
        if target is None:
            return _sw(Sw.FILE_NOT_FOUND)
        if target.is_df:
            ch.current_df, ch.current_ef = target, None
            if target.type == "ADF":
                ch.application = target
        else:
            ch.current_df, ch.current_ef = target.parent or self.image.mf, target
        if not want_fcp:
            return _sw(Sw.OK)
        fcp = _fcp(target)
        if cmd.le is None:  # case 3 as sent over T=0: announce the FCP, fetched with GET RESPONSE
            self._pending = fcp
            return _sw(SW1_BYTES_AVAILABLE << 8 | len(fcp))
        if cmd.ne is not None and cmd.ne < len(fcp):
            return _sw(SW1_WRONG_LE << 8 | len(fcp))
        return _sw(Sw.OK, fcp)

    def _by_fid(self, fid: int, ch: _Channel) -> CardFile | None:
        if fid == Fid.MF:
            return self.image.mf
        if fid == Fid.CURRENT_ADF:
            return ch.application
        df = ch.current_df
        # ISO 7816-4 §7.1.1 search order: children of the current DF, the DF itself, its parent,
        # and the parent's children (siblings).
        for cand in (df.child(fid), df if df.fid == fid else None, df.parent if df.parent and df.parent.fid == fid
                     else None, df.parent.child(fid) if df.parent else None):
            if cand is not None:
                return cand
        return None

    def _by_path(self, fids: list[int], start: CardFile, ch: _Channel) -> CardFile | None:
        node: CardFile | None = start
        for i, fid in enumerate(fids):
            if node is None or not node.is_df:
                return None
            if i == 0 and fid == Fid.CURRENT_ADF:
                node = ch.application
                continue
            if i == 0 and fid == Fid.MF and start is self.image.mf:
                continue  # tolerate a path that repeats the MF
            node = node.child(fid)
        return node

    # ---- READ BINARY (TS 102 221 §11.1.3) --------------------------------------------------------
    def _read_binary(self, cmd: Command, ch: _Channel) -> bytes:
        if cmd.data:
            return _sw(Sw.WRONG_LENGTH)
        if cmd.p1 & 0x80:  # short file identifier in b5-b1 of P1, offset in P2
            if cmd.p1 & 0x60:
                return _sw(Sw.INCORRECT_P1P2)
            sfi = cmd.p1 & 0x1F
            ef = next((c for c in ch.current_df.children if c.sfi == sfi), None)
            if ef is None:
                return _sw(Sw.FILE_NOT_FOUND)
            offset = cmd.p2
        else:
            ef = ch.current_ef
            if ef is None:
                return _sw(Sw.NO_CURRENT_EF)
            offset = (cmd.p1 << 8) | cmd.p2
        if ef.type != "transparent":
            return _sw(Sw.INCOMPATIBLE_FILE_STRUCTURE)
        if cmd.le is None:
            return _sw(Sw.WRONG_LENGTH)
        if cmd.p1 & 0x80:
            ch.current_df, ch.current_ef = ef.parent or self.image.mf, ef
        if offset >= len(ef.data):
            return _sw(Sw.WRONG_P1P2)
        available = len(ef.data) - offset
        if cmd.le == 0:
            return _sw(Sw.OK, ef.data[offset:offset + min(available, 256)])
        if cmd.le > available:
            return _sw(SW1_WRONG_LE << 8 | available)
        return _sw(Sw.OK, ef.data[offset:offset + cmd.le])

    # ---- READ RECORD (TS 102 221 §11.1.5), absolute mode only ----------------------------------
    def _read_record(self, cmd: Command, ch: _Channel) -> bytes:
        if cmd.data:
            return _sw(Sw.WRONG_LENGTH)
        if cmd.p2 & 0x07 != 0x04:
            return _sw(Sw.INCORRECT_P1P2)  # only absolute mode (P2 b3-b1 = 100)
        sfi = cmd.p2 >> 3
        if sfi:
            ef = next((c for c in ch.current_df.children if c.sfi == sfi), None)
            if ef is None:
                return _sw(Sw.FILE_NOT_FOUND)
        else:
            ef = ch.current_ef
            if ef is None:
                return _sw(Sw.NO_CURRENT_EF)
        if ef.type != "linear-fixed":
            return _sw(Sw.INCOMPATIBLE_FILE_STRUCTURE)
        if cmd.le is None:
            return _sw(Sw.WRONG_LENGTH)
        if not 1 <= cmd.p1 <= len(ef.records):
            return _sw(Sw.RECORD_NOT_FOUND)
        rec = ef.records[cmd.p1 - 1]
        if cmd.le not in (0, len(rec)):
            return _sw(SW1_WRONG_LE << 8 | len(rec))
        return _sw(Sw.OK, rec)

    def _get_response(self, cmd: Command) -> bytes:
        if not self._pending or cmd.data:
            return _sw(Sw.CONDITIONS_NOT_SATISFIED if not cmd.data else Sw.WRONG_LENGTH)
        if cmd.ne is not None and cmd.le != 0 and cmd.ne != len(self._pending):
            return _sw(SW1_WRONG_LE << 8 | len(self._pending))
        data, self._pending = self._pending, b""
        return _sw(Sw.OK, data)


def _fcp(f: CardFile) -> bytes:
    """FCP template (TS 102 221 §11.1.1.3): descriptor 82, FID 83, DF name 84, LCSI 8A (05 =
    operational, activated), size 80 for EFs."""
    body = b""
    if f.type == "transparent":
        body += tlv(0x82, b"\x41\x21")  # working EF, transparent, shareable
    elif f.type == "linear-fixed":
        body += tlv(0x82, b"\x42\x21" + f.record_length.to_bytes(2, "big") + bytes([len(f.records)]))
    else:
        body += tlv(0x82, b"\x78\x21")  # DF/ADF, shareable
    if f.type != "ADF":
        body += tlv(0x83, f.fid.to_bytes(2, "big"))
    else:
        body += tlv(0x84, f.aid)
    body += tlv(0x8A, b"\x05")
    if f.type == "transparent":
        body += tlv(0x80, len(f.data).to_bytes(2, "big"))
    elif f.type == "linear-fixed":
        body += tlv(0x80, (f.record_length * len(f.records)).to_bytes(2, "big"))
    return tlv(0x62, body)
