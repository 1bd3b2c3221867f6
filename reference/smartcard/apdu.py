"""APDU vocabulary (ISO/IEC 7816-4, ETSI TS 102 221 §10-§11) shared by the card emulator and the reader."""
from __future__ import annotations

import enum
from dataclasses import dataclass


class Ins(enum.IntEnum):
    """Instruction bytes used here (TS 102 221 §10.1.2, Table 10.5)."""

    SELECT = 0xA4
    READ_BINARY = 0xB0
    READ_RECORD = 0xB2
    MANAGE_CHANNEL = 0x70
    GET_RESPONSE = 0xC0
    STATUS = 0xF2


class Sw(enum.IntEnum):
    """Status words (TS 102 221 §10.2.1; ISO 7816-4 §5.6)."""

    OK = 0x9000
    END_OF_FILE = 0x6282            # end of file/record reached before reading Le bytes
    WRONG_LENGTH = 0x6700           # Lc/Le wrong (no indication of the right one)
    LOGICAL_CHANNEL_NOT_SUPPORTED = 0x6881
    INCOMPATIBLE_FILE_STRUCTURE = 0x6981
    CONDITIONS_NOT_SATISFIED = 0x6985
    NO_CURRENT_EF = 0x6986          # command not allowed (no EF selected)
    WRONG_DATA = 0x6A80
    FUNCTION_NOT_SUPPORTED = 0x6A81
    FILE_NOT_FOUND = 0x6A82
    RECORD_NOT_FOUND = 0x6A83
    INCORRECT_P1P2 = 0x6A86
    LC_INCONSISTENT_WITH_P1P2 = 0x6A87
    WRONG_P1P2 = 0x6B00             # e.g. READ BINARY offset outside the EF
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00
    TECHNICAL_PROBLEM = 0x6F00


#: SW1 values carrying a number in SW2 (TS 102 221 §10.2.1.1): 61xx "xx bytes available"
#: (fetch with GET RESPONSE), 6Cxx "wrong Le, exact length is xx" (reissue with Le = xx).
SW1_BYTES_AVAILABLE = 0x61
SW1_WRONG_LE = 0x6C


def channel_of(cla: int) -> int | None:
    """Logical channel number encoded in CLA (TS 102 221 §10.1.1; ISO 7816-4 §5.4.1), or ``None`` for
    a class byte this UICC does not accept. ``0x0X``/``0x8X`` (first interindustry): channel in b2-b1
    (0..3). ``0x4X``-``0x7X``/``0xCX``-``0xFX`` (further interindustry): channel 4 + b4-b1 (4..19).
    ``0xA0`` is the GSM class of 2G SIMs, which Appendix G rules out ("UICC MUST be activated in 3G mode")."""
    if cla == 0xFF:
        return None
    if cla & 0x40:
        return 4 + (cla & 0x0F)
    if cla & 0x20:  # 0x2X/0xAX: not an interindustry class
        return None
    return cla & 0x03


def cla_for(channel: int, base: int = 0x00) -> int:
    """CLA for ``channel`` (0..19) with the first interindustry class ``base`` (0x00 or 0x80)."""
    if not 0 <= channel <= 19:
        raise ValueError(f"logical channel {channel} outside 0..19")
    if channel <= 3:
        return base | channel
    return base | 0x40 | (channel - 4)


@dataclass(frozen=True)
class Command:
    """A parsed short command APDU (ISO 7816-4 §5.1). ``le`` is ``None`` when absent; ``le == 0``
    encodes Ne = 256."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None

    @property
    def ne(self) -> int | None:
        return None if self.le is None else (self.le or 256)

    @classmethod
    def parse(cls, apdu: bytes) -> "Command":
        """Raises ValueError for a byte string that is not a well-formed short APDU."""
        if len(apdu) < 4:
            raise ValueError("APDU shorter than 4 bytes")
        cla, ins, p1, p2 = apdu[:4]
        body = apdu[4:]
        if not body:
            return cls(cla, ins, p1, p2)
        if len(body) == 1:
            return cls(cla, ins, p1, p2, le=body[0])
        lc = body[0]
        if lc == 0:
            raise ValueError("extended-length APDUs are not supported")
        if len(body) == 1 + lc:
            return cls(cla, ins, p1, p2, data=bytes(body[1:]))
        if len(body) == 2 + lc:
            return cls(cla, ins, p1, p2, data=bytes(body[1:-1]), le=body[-1])
        raise ValueError(f"Lc={lc} does not match the {len(body) - 1} bytes that follow")

    def to_bytes(self) -> bytes:
        out = bytes([self.cla, self.ins, self.p1, self.p2])
        if self.data:
            out += bytes([len(self.data)]) + self.data
        if self.le is not None:
            out += bytes([self.le])
        return out
