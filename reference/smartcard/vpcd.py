"""The card emulator on vsmartcard's virtual reader: a vpcd client.

vpcd (``libifdvpcd``, the pcsc-lite driver of vsmartcard's "virtual smart card reader") listens on
a TCP port (``DEVICENAME /dev/null:0x8C7B`` in ``/etc/reader.conf.d/vpcd`` = port 35963 on all
addresses). A virtual card connects to it as a TCP client: connecting = inserting the card,
disconnecting = removing it. Every message in both directions is a 2-byte big-endian length
followed by that many bytes. From vpcd, a 1-byte message is a control code (:class:`Ctrl`: power
off, power on, reset -- no answer -- or "get ATR", answered with the ATR); anything longer is a
command APDU, answered with response data + SW1 SW2.
"""
from __future__ import annotations

import enum
import logging
import re
import select
import socket
import struct
import threading
import time
from pathlib import Path as FsPath

from reference.smartcard.emulator import UiccEmulator
from reference.smartcard.errors import CardError, NoReaderError
from reference.smartcard.image import CardImage

log = logging.getLogger(__name__)

VPCD_CONFIG = FsPath("/etc/reader.conf.d/vpcd")
DEFAULT_VPCD_PORT = 0x8C7B  # 35963, vsmartcard's default (vpcd-config(1))


class Ctrl(enum.IntEnum):
    """vpcd control codes (vsmartcard ``vpcd.h``)."""

    POWER_OFF = 0
    POWER_ON = 1
    RESET = 2
    GET_ATR = 4


def vpcd_port(config: FsPath = VPCD_CONFIG) -> int:
    """The port vpcd listens on, from its reader.conf entry (``DEVICENAME host:port``)."""
    try:
        text = config.read_text()
    except OSError:
        return DEFAULT_VPCD_PORT
    m = re.search(r"^\s*DEVICENAME\s+\S*?:(0x[0-9a-fA-F]+|\d+)\s*$", text, re.M)
    return int(m.group(1), 0) if m else DEFAULT_VPCD_PORT


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("vpcd closed the connection")
        buf += chunk
    return buf


class VpcdCard:
    """A card image inserted into the vpcd reader. ``insert()`` connects (bounded by ``timeout``),
    ``remove()`` disconnects; usable as a context manager. ``emulator.log`` records the APDUs."""

    def __init__(self, image: CardImage, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.image = image
        self.host = host
        self.port = vpcd_port() if port is None else port
        self.emulator = UiccEmulator(image)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.powered = False

    # ---- lifecycle ---------------------------------------------------------------------------
    def insert(self, timeout: float = 5.0) -> None:
        """Connect to vpcd, retrying until ``timeout`` (vpcd opens its port when pcscd loads it)."""
        if self._thread is not None:
            return
        deadline = time.monotonic() + timeout
        while True:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=1.0)
                break
            except OSError as e:
                if time.monotonic() >= deadline:
                    raise NoReaderError(f"vpcd not reachable on {self.host}:{self.port}: {e} "
                                        "(is pcscd running with the vpcd driver?)") from None
                time.sleep(0.1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._stop.clear()
        self.emulator.reset()
        self._thread = threading.Thread(target=self._serve, name="vpcd-card", daemon=True)
        self._thread.start()

    def remove(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.powered = False

    @property
    def inserted(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> "VpcdCard":
        self.insert()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # ---- protocol loop -----------------------------------------------------------------------
    def _serve(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([sock], [], [], 0.2)
                if not ready:
                    continue
                (length,) = struct.unpack(">H", _recv_exact(sock, 2))
                msg = _recv_exact(sock, length)
                reply = self.handle(msg)
                if reply is not None:
                    sock.sendall(struct.pack(">H", len(reply)) + reply)
        except (OSError, ConnectionError, ValueError) as e:
            if not self._stop.is_set():
                log.info("vpcd connection ended: %s", e)

    def handle(self, msg: bytes) -> bytes | None:
        """One vpcd message in, the answer out (``None`` = no answer expected)."""
        if len(msg) == 1:
            code = msg[0]
            if code == Ctrl.POWER_OFF:
                self.powered = False
            elif code in (Ctrl.POWER_ON, Ctrl.RESET):
                self.powered = True
                self.emulator.reset()
            elif code == Ctrl.GET_ATR:
                return self.emulator.atr
            else:
                log.warning("unknown vpcd control code %d ignored", code)
            return None
        if not msg:
            return None
        return self.emulator.transmit(msg)


def serve(image: CardImage, host: str = "127.0.0.1", port: int | None = None,
          reconnect: bool = True, stop: threading.Event | None = None) -> None:
    """Keep ``image`` inserted (CLI ``lwm2m-card serve``): reconnect whenever vpcd drops, until
    ``stop`` is set or, without ``reconnect``, the first disconnect."""
    stop = stop or threading.Event()
    card = VpcdCard(image, host, port)
    while not stop.is_set():
        try:
            card.insert(timeout=2.0)
        except CardError as e:
            if not reconnect:
                raise
            log.info("%s; retrying", e)
            stop.wait(1.0)
            continue
        log.info("card inserted into vpcd at %s:%d", card.host, card.port)
        while card.inserted and not stop.is_set():
            stop.wait(0.2)
        card.remove()
        if not reconnect:
            return
