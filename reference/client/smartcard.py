"""Smartcard bootstrap for the reference client: a card as a :class:`BootstrapSource`, the DM-SC
indicators (seed 004: DM-SC-GEN-X, DM-SC-USE-X) and the card re-check on every Register/Update.

Protocol facts this module implements (Core 1.1.1):

* §6.1.4 Bootstrap Sequence: "If the LwM2M Device has Smartcard, the LwM2M Client tries to obtain
  Bootstrap Information from the Smartcard" first; only if it is "not configured using the
  Bootstrap from Smartcard mode" does it use Factory Bootstrap, then registers, then falls back to
  Client Initiated Bootstrap. :meth:`SmartcardClient.load_bootstrap_information` tries the card
  and, when the card is absent or unusable, hands over to the plain client's order (persisted
  state, factory configuration, Client Initiated Bootstrap).
* §6.1.3.2 Bootstrap from Smartcard: the client "MUST also ensure that the bootstrap data
  previously retrieved from the Smartcard is unchanged"; if changed, the previous Bootstrap
  Information "MUST be disabled" and the new one "SHOULD" be applied; "If the Smartcard is
  disabled (e.g., removing the Smartcard) then the Bootstrap Information created from the
  bootstrap data of the previous Smartcard MUST be deleted"; "Checking for Smartcard change and
  disabling MUST be performed by LwM2M Client, each time a Register or Update operation take
  place, with a LwM2M Server provisioned from Smartcard". §6.1.5 (Bootstrap Security): changed
  security material means the old session is ended and a new one set up.

Decisions (also in docs/smartcard-client.md, "Client behaviour"):

``autonomous_connect`` set (DM-SC-GEN-X)
    the card's accounts are applied and the client registers right away, no other trigger.
``autonomous_connect`` clear
    the accounts are applied (and persisted) but nothing is sent until a local trigger: the CLI
    control line ``update`` (``--stdin-control``) or :meth:`LwM2MClient.request_update` — the
    profile's ``[control.update]``. Event ``card-waiting reason=trigger``.
``ask_user`` set (DM-SC-USE-X)
    before anything from the card is applied or sent, the user agent is asked (callback, CLI
    ``CONFIRM`` prompt answered by ``confirm yes|no``, or ``--confirm-hook``). Yes: continue as
    above. No (or the agent's bounded timeout): nothing is applied and no session is set up at all,
    not even through the factory configuration (event ``card-declined``); later triggers are
    ignored. The question is asked in a background task so that the client is up (READY) while
    waiting.
card absent at start-up
    event ``card-absent``; persisted information that came from a card is deleted (§6.1.3.2
    MUST); then the plain order (state, factory, Client Initiated Bootstrap).
card corrupt / truncated / inconsistent at start-up
    event ``card-error`` (reason names the file and byte offset) and a log line; nothing from the
    card is applied, so the previous configuration stays; persisted information that came from a
    card is disabled as for a changed card (its data changed); then the plain order.
re-check before each Register / Update with a card-provisioned server (§6.1.3.2)
    same ICCID and bootstrap data: proceed. Changed (new ICCID or new bootstrap data): event
    ``card-changed``; the client de-registers, drops the previous card accounts and bootstraps
    from the new card (indicators of the new card apply: confirmation, trigger). Removed: event
    ``card-removed``; De-register, the card-provisioned accounts are deleted, then the plain
    fall-back order. Corrupt: event ``card-error``; handled like a removal (the previous data
    MUST be disabled and the new data cannot be applied).

Card identity for the card issuer (post-condition of seed 004): the ICCID read from EF ICCID is
exposed as ``/504/0/11/0`` (object 504 Remote SIM Provisioning, subset shipped in
reference/objects/504-remote-sim-provisioning.xml) while card-provisioned accounts are in use.

Card spec (``lwm2m-client --card SPEC``): ``pcsc`` (first PC/SC reader holding a card),
``pcsc:NAME`` (reader whose name contains NAME), ``image:PATH`` or a plain existing ``PATH`` (a
card image from ``lwm2m-card build``, read through the in-process emulator with the same APDUs;
deleting/replacing the file removes/changes the card).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any

from reference.client.bootstrap import BootstrapSource, BootstrapSourceError
from reference.client.client import ClientOptions, LwM2MClient, ServerSession
from reference.model.config import ConfigError, DeviceConfig
from reference.model.path import Path

log = logging.getLogger(__name__)

#: Remote SIM Provisioning (OMA registry object 504) resources the client fills in
RSP_OBJECT = 504
RSP_CURRENT_SIM_TYPE = 0
RSP_SUPPORTED_SIM_TYPE = 1
RSP_ICCID = 11
RSP_TYPE = 13
SIM_TYPE_UICC_REMOVABLE = 0
RSP_TYPE_NONE = 0


class CardUnavailable(BootstrapSourceError):
    """The card could not be used. ``kind``: ``"absent"`` (no reader, no card, image file gone)
    or ``"corrupt"`` (the card answered but its files are malformed, truncated or inconsistent)."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


@dataclass(frozen=True)
class CardSpec:
    """A parsed ``--card`` value."""

    kind: str            # "pcsc" | "image"
    target: str | None   # reader name substring or image path


def parse_card_spec(spec: str) -> CardSpec:
    """``pcsc`` | ``pcsc:READER`` | ``image:PATH`` | ``PATH``; ValueError otherwise."""
    s = spec.strip()
    if not s:
        raise ValueError("empty card spec (use pcsc, pcsc:READER, image:PATH or a card image path)")
    if s == "pcsc":
        return CardSpec("pcsc", None)
    if s.startswith("pcsc:"):
        return CardSpec("pcsc", s[5:] or None)
    if s.startswith("image:"):
        if not s[6:]:
            raise ValueError("image: needs a path")
        return CardSpec("image", s[6:])
    return CardSpec("image", s)


def fingerprint(contents: Any) -> str:
    """Identity of what a card holds: ICCID plus every bootstrap value (SHA-256, hex). Two reads
    of an unchanged card give the same fingerprint; any change of ICCID or data changes it."""
    h = hashlib.sha256()
    h.update(str(getattr(contents, "iccid", "")).encode())
    for p, v in sorted(contents.values.items(), key=lambda kv: kv[0].parts):
        h.update(f"\x00{p}={v!r}".encode())
    ind = (bool(contents.autonomous_connect), bool(contents.ask_user))
    h.update(repr(ind).encode())
    return h.hexdigest()


class CardBootstrapSource(BootstrapSource):
    """A smartcard as the client's bootstrap source (wraps ``reference.smartcard`` readers).

    After a successful :meth:`read`: ``contents`` (CardContents), ``autonomous_connect``,
    ``ask_user``, ``iccid``, ``fingerprint``. :meth:`probe` re-reads the card without changing
    that state. Every read is bounded by ``timeout`` seconds.
    """

    name = "card"

    def __init__(self, reader: Any, spec: str = "") -> None:
        self.reader = reader          # ImageCardSource | PcscCardSource (or a test double)
        self.spec = spec
        self.contents: Any = None

    # -- indicators (valid after read) ----------------------------------------------------------
    @property
    def autonomous_connect(self) -> bool:  # type: ignore[override]
        return bool(self.contents is not None and self.contents.autonomous_connect)

    @property
    def ask_user(self) -> bool:  # type: ignore[override]
        return bool(self.contents is not None and self.contents.ask_user)

    @property
    def needs_confirmation(self) -> bool:
        """Only the card's user-confirmation indicator asks the user (DM-SC-USE-X); a clear
        autonomous-connect indicator means "wait for a trigger", not "ask"."""
        return self.ask_user

    @property
    def iccid(self) -> str:
        return str(self.contents.iccid) if self.contents is not None else ""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.contents) if self.contents is not None else ""

    # -- reading --------------------------------------------------------------------------------
    def _translate(self, e: Exception) -> CardUnavailable:
        from reference.smartcard.errors import CardImageError, NoCardError, NoReaderError

        if isinstance(e, (NoCardError, NoReaderError)):
            return CardUnavailable("absent", str(e))
        if isinstance(e, CardImageError) and "cannot read" in str(e):
            return CardUnavailable("absent", str(e))  # the image file is gone: card removed
        return CardUnavailable("corrupt", str(e))

    def decode(self, reader: Any) -> Any:
        """Read the card synchronously (worker thread); faulty variants override this."""
        return reader.read_contents()

    async def read_contents(self) -> Any:
        """Read the card (bounded); CardUnavailable on any failure."""
        from reference.smartcard.errors import CardError

        timeout = float(getattr(self.reader, "timeout", 10.0))
        try:
            contents = await asyncio.wait_for(asyncio.to_thread(self.decode, self.reader), timeout)
        except asyncio.TimeoutError:
            raise CardUnavailable("absent", f"card did not answer within {timeout} s") from None
        except CardError as e:
            raise self._translate(e) from None
        problems = contents.config.problems()
        if problems:
            raise CardUnavailable("corrupt", "card accounts are inconsistent: " + "; ".join(problems))
        return contents

    async def read(self) -> DeviceConfig | None:
        self.contents = await self.read_contents()
        return self.contents.config

    async def probe(self) -> tuple[str, Any]:
        """Re-read the card: ``("same", c)``, ``("changed", c)``, ``("absent", err)`` or
        ``("corrupt", err)``; does not change :attr:`contents`."""
        try:
            c = await self.read_contents()
        except CardUnavailable as e:
            return e.kind, e
        return ("same" if fingerprint(c) == self.fingerprint else "changed"), c


def open_bootstrap_source(spec: str, endpoint: str = "", timeout: float = 10.0) -> CardBootstrapSource:
    """The client's card source for a ``--card`` spec (see module docstring). The endpoint given
    is the one the card's DeviceConfig carries (a card names none)."""
    from reference.smartcard import ImageCardSource, PcscCardSource

    cs = parse_card_spec(spec)
    if cs.kind == "pcsc":
        reader: Any = PcscCardSource(reader=cs.target, endpoint=endpoint, timeout=timeout)
    else:
        reader = ImageCardSource(os.path.abspath(cs.target or ""), endpoint=endpoint, timeout=timeout)
    return CardBootstrapSource(reader, spec)


class SmartcardClient(LwM2MClient):
    """The reference client with smartcard bootstrap (module docstring: behaviour and clauses).

    ``card``: a :class:`CardBootstrapSource` (or any BootstrapSource: then no re-check is made).
    ``recheck_timeout``: bound on the card read before each Register/Update.
    """

    def __init__(self, options: ClientOptions, *, card: BootstrapSource | None = None,
                 recheck_timeout: float = 5.0, **kw: Any) -> None:
        if card is not None and not isinstance(card, CardBootstrapSource) and hasattr(card, "read_contents"):
            card = CardBootstrapSource(card)  # a bare reference.smartcard reader (ImageCardSource, PcscCardSource)
        super().__init__(options, card=card, **kw)
        self.recheck_timeout = recheck_timeout
        #: why sessions are held back: "confirmation" | "trigger" | "declined" | None
        self.card_gate: str | None = None
        self.card_fingerprint = ""
        self.card_iccid = ""
        self._card_task: asyncio.Task | None = None

    # ================================================================ start-up (§6.1.4 step 1)
    async def load_bootstrap_information(self) -> bool:
        if self.card is None:
            return await super().load_bootstrap_information()
        try:
            cfg = await self.card.read()
        except BootstrapSourceError as e:
            return await self._card_unusable(getattr(e, "kind", "corrupt"), str(e), at_start=True)
        if cfg is None:
            return await self._card_unusable("absent", "the card holds no configuration", at_start=True)
        if cfg.endpoint == "" and self.options.endpoint:
            cfg.endpoint = self.options.endpoint
        if self.card.needs_confirmation:
            # DM-SC-USE-X: nothing is applied or sent before the user agrees
            self.card_gate = "confirmation"
            self._card_task = self._spawn(self._confirm_then_apply(cfg), "card-confirmation")
            return True  # start_sessions() will see the gate
        return self._apply_card(cfg)

    async def _confirm_then_apply(self, cfg: DeviceConfig) -> None:
        ok = await self._confirm(
            f"The smartcard asks to set up a device management session for endpoint "
            f"{self.endpoint or cfg.endpoint}. Connect?", "card")
        if not ok:
            self.card_gate = "declined"
            self.emit("card-declined", iccid=self._iccid_of(self.card))
            return
        self.card_gate = None
        if self._apply_card(cfg):
            self.start_sessions()

    def _apply_card(self, cfg: DeviceConfig) -> bool:
        """Install the card accounts (§6.1.3.2), expose the ICCID; gate if not autonomous."""
        try:
            self.apply_config(cfg, source="card")
        except ConfigError as e:
            self.emit("card-error", reason=str(e))
            log.error("smartcard configuration unusable: %s", e)
            return False
        self.card_fingerprint = getattr(self.card, "fingerprint", "")
        self.card_iccid = self._iccid_of(self.card)
        self.expose_card_identity(self.card_iccid)
        autonomous = bool(getattr(self.card, "autonomous_connect", True))
        self.emit("card-bootstrapped", iccid=self.card_iccid or "-",
                  autonomous_connect="yes" if autonomous else "no",
                  ask_user="yes" if getattr(self.card, "ask_user", False) else "no")
        if not autonomous:
            self.card_gate = "trigger"
        return True

    @staticmethod
    def _iccid_of(card: Any) -> str:
        return str(getattr(card, "iccid", "") or "")

    async def _card_unusable(self, kind: str, reason: str, *, at_start: bool) -> bool:
        """Report, drop card-derived information (§6.1.3.2), fall back to the plain order."""
        self.emit("card-absent" if kind == "absent" else "card-error", reason=reason)
        if kind != "absent":
            log.error("smartcard bootstrap data unusable, falling back: %s", reason)
        self._forget_card_information()
        saved, self.card = self.card, None
        try:
            return await super().load_bootstrap_information()
        finally:
            self.card = saved

    def _forget_card_information(self) -> None:
        """Delete Bootstrap Information that came from a card, live and persisted."""
        from reference.client.objects import BOOTSTRAP_OBJECTS

        persisted_from_card = False
        if self.state is not None:
            try:
                loaded = self.state.load()
            except Exception:  # noqa: BLE001 - unreadable state is ignored by the plain client too
                loaded = None
            persisted_from_card = loaded is not None and loaded[2].get("source") == "card"
            if persisted_from_card:
                self.state.clear()
        if self._bootstrap_source == "card":
            for oid in BOOTSTRAP_OBJECTS:
                if oid in self.tree.data:
                    self.tree.data[oid] = {}
            self._bootstrap_source = ""
        if persisted_from_card or self.card_iccid:
            self.emit("card-information-deleted", persisted="yes" if persisted_from_card else "no")
        self.hide_card_identity()
        self.card_fingerprint = ""
        self.card_iccid = ""

    # ================================================================ card identity (/504)
    def expose_card_identity(self, iccid: str) -> None:
        """/504/0 with the card's ICCID as resource 11 instance 0 (see the module docstring)."""
        if self.tree.objdef(RSP_OBJECT) is None or not iccid:
            return
        self.tree.create_instance(RSP_OBJECT, 0, {
            RSP_CURRENT_SIM_TYPE: SIM_TYPE_UICC_REMOVABLE,
            RSP_SUPPORTED_SIM_TYPE: {0: SIM_TYPE_UICC_REMOVABLE},
            RSP_ICCID: {0: iccid},
            RSP_TYPE: RSP_TYPE_NONE,
        })

    def hide_card_identity(self) -> None:
        if RSP_OBJECT in self.tree.data:
            self.tree.data.pop(RSP_OBJECT, None)
            self.tree.notify(Path(RSP_OBJECT))

    # ================================================================ gating (DM-SC-GEN-X)
    def start_sessions(self) -> None:
        if self.card_gate is not None:
            self.emit("card-waiting", reason=self.card_gate)
            return
        super().start_sessions()

    def request_update(self, ssid: int | None = None, params: Any = ()) -> None:
        """A local trigger: releases a card configuration held back for lack of the
        autonomous-connect indicator; otherwise an ordinary Update request."""
        if self.card_gate == "trigger":
            self.card_gate = None
            self.emit("card-triggered")
            self.start_sessions()
            return
        if self.card_gate in ("confirmation", "declined"):
            self.emit("card-waiting", reason=self.card_gate)
            return
        super().request_update(ssid, params)

    # ================================================================ re-check (§6.1.3.2)
    async def _register(self, sess: ServerSession) -> bool:
        if not await self.card_recheck(sess):
            return False
        return await super()._register(sess)

    async def _update(self, sess: ServerSession, params: set[str]) -> str:
        if not await self.card_recheck(sess):
            return "failed"
        return await super()._update(sess, params)

    async def card_recheck(self, sess: ServerSession) -> bool:
        """True to go on with the Register/Update of ``sess``; False after starting the reaction
        to a changed/removed/corrupt card (the session is then replaced)."""
        card = self.card
        if self._bootstrap_source != "card" or card is None or not hasattr(card, "probe"):
            return True
        if self._card_task is not None and not self._card_task.done():
            return False  # a reaction is already under way
        try:
            state, detail = await asyncio.wait_for(card.probe(), self.recheck_timeout + 1.0)
        except asyncio.TimeoutError:
            state, detail = "absent", f"card re-check exceeded {self.recheck_timeout} s"
        if state == "same":
            return True
        if state == "changed":
            self.emit("card-changed", old_iccid=self.card_iccid or "-", new_iccid=self._iccid_of_contents(detail) or "-")
        elif state == "absent":
            self.emit("card-removed", reason=str(detail))
        else:
            self.emit("card-error", reason=str(detail))
            log.error("smartcard changed into unusable data: %s", detail)
        # this session de-registers itself now (it may be the task the reaction cancels)
        await self._deregister(sess)
        self._card_task = self._spawn(self._react(state, detail), "card-reaction")
        return False

    @staticmethod
    def _iccid_of_contents(c: Any) -> str:
        return str(getattr(c, "iccid", "") or "")

    async def _react(self, state: str, detail: Any) -> None:
        await self.stop_sessions(deregister=True)
        if state == "changed":
            self.card_gate = None
            self.card.contents = detail  # type: ignore[union-attr]
            cfg = detail.config
            if cfg.endpoint == "" and self.options.endpoint:
                cfg.endpoint = self.options.endpoint
            self.hide_card_identity()
            if self.card.needs_confirmation:  # type: ignore[union-attr]
                self.card_gate = "confirmation"
                await self._confirm_then_apply(cfg)
                return
            if self._apply_card(cfg):
                self.start_sessions()
                return
        # removed / corrupt (or a new card whose accounts could not be applied)
        self._forget_card_information()
        saved, self.card = self.card, None
        try:
            loaded = await LwM2MClient.load_bootstrap_information(self)
        finally:
            self.card = saved
        if loaded:
            self.start_sessions()
        elif self.bootstrap_account() is not None:
            self.request_bootstrap(reason="card-removed")
        else:
            self.emit("idle", reason="no-bootstrap-information")

