"""Real PC/SC for tests and demos: pcscd + vsmartcard's vpcd reader + our card emulator.

``with PcscEnvironment() as env: env.insert(image)`` takes a machine-wide file lock (vpcd listens on
the fixed port of its reader.conf entry, so every user on the machine shares one virtual reader;
pytest-xdist workers and parallel runs therefore take turns), starts ``pcscd --foreground
--auto-exit`` if no PC/SC service answers (it loads ``/etc/reader.conf.d/vpcd``; ``--auto-exit``
makes an orphaned daemon quit after 60 s idle), connects the emulator to vpcd and waits until
pcscd reports the card present. Leaving the block removes the card, stops the pcscd it started and
releases the lock. Every wait is bounded.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path as FsPath

from reference.smartcard.errors import NoCardError, NoReaderError
from reference.smartcard.image import CardImage
from reference.smartcard.reader import close_connection
from reference.smartcard.vpcd import VPCD_CONFIG, VpcdCard, vpcd_port

LOCK_PATH = FsPath(tempfile.gettempdir()) / "lwm2m-conformance-vpcd.lock"
VPCD_READER_PREFIX = "Virtual PCD"


def unavailable_reason() -> str | None:
    """Why real PC/SC cannot run here, or ``None`` if pcscd, the vpcd driver and pyscard exist."""
    if shutil.which("pcscd") is None and not FsPath("/usr/sbin/pcscd").exists():
        return "pcscd is not installed (Debian package pcscd; see scripts/setup.sh)"
    if not VPCD_CONFIG.exists():
        return f"vpcd is not installed ({VPCD_CONFIG} missing; Debian package vsmartcard-vpcd)"
    try:
        import smartcard.System  # noqa: F401
    except ImportError as e:
        return f"pyscard is not importable: {e}"
    return None


def _vpcd_readers() -> list[str] | None:
    """Names of the vpcd readers, or ``None`` if no PC/SC service answers."""
    from smartcard.System import readers

    try:
        return [str(r) for r in readers() if str(r).startswith(VPCD_READER_PREFIX)]
    except Exception:  # noqa: BLE001 - pyscard raises various types when pcscd is absent
        return None


class PcscEnvironment:
    """See the module docstring. ``reader`` is the PC/SC name of the reader holding our card."""

    def __init__(self, lock_timeout: float = 60.0, start_timeout: float = 10.0) -> None:
        self.lock_timeout = lock_timeout
        self.start_timeout = start_timeout
        self.port = vpcd_port()
        self.reader: str | None = None
        self._lock_fd: int | None = None
        self._pcscd: subprocess.Popen[bytes] | None = None
        self._cards: list[VpcdCard] = []

    # ---- lock ----------------------------------------------------------------------------------
    def _acquire(self) -> None:
        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._lock_fd = fd
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise NoReaderError(f"vpcd reader busy: lock {LOCK_PATH} held longer than "
                                        f"{self.lock_timeout} s by another run") from None
                time.sleep(0.05)

    def _release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- pcscd ---------------------------------------------------------------------------------
    def _ensure_pcscd(self) -> None:
        if _vpcd_readers():
            return
        if _vpcd_readers() is None:
            exe = shutil.which("pcscd") or "/usr/sbin/pcscd"
            self._log = tempfile.TemporaryFile()
            self._pcscd = subprocess.Popen([exe, "--foreground", "--auto-exit"], stdin=subprocess.DEVNULL,
                                           stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if _vpcd_readers():
                return
            if self._pcscd is not None and self._pcscd.poll() is not None:
                self._log.seek(0)
                out = self._log.read().decode(errors="replace")[-2000:]
                rc, self._pcscd = self._pcscd.returncode, None
                raise NoReaderError(f"pcscd exited with status {rc}: {out}")
            time.sleep(0.1)
        raise NoReaderError(f"no '{VPCD_READER_PREFIX}' reader appeared within {self.start_timeout} s "
                            f"(is {VPCD_CONFIG} loaded by the running pcscd?)")

    def _stop_pcscd(self) -> None:
        proc, self._pcscd = self._pcscd, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        self._log.close()

    # ---- cards -------------------------------------------------------------------------------
    def insert(self, image: CardImage, timeout: float = 10.0) -> VpcdCard:
        """Connect ``image`` to vpcd and wait until pcscd sees the card; sets ``self.reader``."""
        card = VpcdCard(image, port=self.port)
        card.insert(timeout)
        self._cards.append(card)
        self.reader = self._wait_present(timeout)
        return card

    def remove(self, card: VpcdCard, timeout: float = 10.0) -> None:
        """Disconnect ``card`` and wait until pcscd notices (bounded)."""
        card.remove()
        if card in self._cards:
            self._cards.remove(card)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._present_reader() is not None:
            time.sleep(0.05)

    def _present_reader(self) -> str | None:
        from smartcard.System import readers

        for r in readers():
            if not str(r).startswith(VPCD_READER_PREFIX):
                continue
            conn = r.createConnection()
            try:
                conn.connect()
            except Exception:  # noqa: BLE001 - no card in this slot
                continue
            finally:
                close_connection(conn)
            return str(r)
        return None

    def wait_present(self, timeout: float = 10.0) -> str:
        """Wait until some process's card (e.g. ``lwm2m-card serve``) sits in a vpcd reader."""
        self.reader = self._wait_present(timeout)
        return self.reader

    def _wait_present(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            name = self._present_reader()
            if name is not None:
                return name
            time.sleep(0.05)
        raise NoCardError(f"pcscd did not report the emulated card within {timeout} s")

    # ---- context -----------------------------------------------------------------------------
    def __enter__(self) -> "PcscEnvironment":
        reason = unavailable_reason()
        if reason:
            raise NoReaderError(reason)
        self._acquire()
        try:
            self._ensure_pcscd()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for card in list(self._cards):
            card.remove()
        self._cards.clear()
        try:
            self._stop_pcscd()
        finally:
            self._release()

    def __exit__(self, *exc: object) -> None:
        self.close()
