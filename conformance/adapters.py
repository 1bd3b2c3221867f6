"""How the suite drives an implementation beyond what the protocol itself can make it do.

A conformance test can stimulate a client only through the protocol (the suite plays its server),
yet some requirements need a *local* stimulus: a sensor value changes, the user answers a
confirmation prompt. A server, conversely, is stimulated by its operator (a management API or
console) to Read/Write/Observe a client. These abstract classes are that contract:

* :class:`ClientAdapter` - local controls of a client DUT,
* :class:`ServerAdapter` - DM operations a server DUT performs on a registered client,
* :class:`BootstrapServerAdapter` - device configurations of a bootstrap-server DUT.

The default implementations (``Template*Adapter``) do what the profile's ``[control.*]`` /
``[actions.*]`` templates say (stdin line, command, or HTTP request; docs/profiles.md). A profile
may instead name its own class with ``adapter = "package.module:Class"``; that class subclasses
the matching ABC (typically the Template one, overriding only what templates cannot express) and
is constructed as ``Class(dut)`` with the test's :class:`~conformance.harness.dut.Dut`.

Contract common to every method:

* it is a coroutine and returns within the action's timeout (bounded),
* it returns an :class:`ActionResult` - ``ok`` is False when the implementation *refused*
  the operation (e.g. HTTP 4xx/5xx, command exit status != 0, a 4.04 from the client),
* it raises :class:`~conformance.verdicts.Unsupported` when the profile gives no way to do it,
* it raises :class:`~conformance.verdicts.ConformanceError` (verdict error) when the DUT could
  not be driven at all (management API unreachable, process gone, no answer in time).
"""
from __future__ import annotations

import abc
import asyncio
import importlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from conformance.verdicts import ConformanceError

if TYPE_CHECKING:  # pragma: no cover
    from conformance.harness.dut import Dut


@dataclass
class ActionResult:
    """Outcome of one adapter call.

    ok      the implementation accepted/performed the operation
    status  HTTP status or command exit status (None for stdin-driven actions)
    value   the extracted result (profile ``result``: text, parsed JSON, a JSON-pointer target,
            or the ``result`` group of an ``expect`` regex)
    text    raw response body / command stdout / matched line
    detail  one line saying what was done, for reports ("POST http://…/api/x -> 201")
    """

    ok: bool
    status: int | None = None
    value: Any = None
    text: str = ""
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class DutAdapter(abc.ABC):
    """Base of all adapters: holds the :class:`Dut` being driven."""

    def __init__(self, dut: "Dut") -> None:
        self.dut = dut

    def can(self, action: str) -> bool:
        """True when this adapter can perform ``action`` (tests may choose a path accordingly)."""
        return action in self.dut.profile.actions


class ClientAdapter(DutAdapter):
    """Local controls of a client DUT."""

    @abc.abstractmethod
    async def set_value(self, path: str, value: str) -> ActionResult:
        """Change the local value of resource ``path`` (e.g. "/3/0/9") as if the device's own
        sensor/state changed; return once the LwM2M client sees the new value (so that an
        observation with pmin elapsed notifies it)."""

    @abc.abstractmethod
    async def confirm(self, accept: bool) -> ActionResult:
        """Answer the pending user-confirmation prompt (DM-SC-USE-X) with yes/no."""

    @abc.abstractmethod
    async def trigger_update(self) -> ActionResult:
        """Make the client send a Registration Update now (as a local user/app could)."""

    @abc.abstractmethod
    async def wait_confirmation_prompt(self, timeout: float) -> str:
        """Wait until the device asks its user for confirmation; return the prompt text.
        Raises DutTimeout (verdict error) if the timeout passes - tests that *expect* no prompt
        use a short timeout and catch it."""


class ServerAdapter(DutAdapter):
    """DM operations an LwM2M server DUT performs on a registered client (Core 1.1.1 §6.3, §6.4).

    ``endpoint`` is the client's endpoint name; ``path`` an LwM2M path ("/3/0/9");
    ``format`` a content-format name (tlv, senml-json, …) or number, or None for the server's
    choice. The operation's CoAP response code, when the server reports it, is in
    ``ActionResult.value``/``text`` as the profile extracts it."""

    @abc.abstractmethod
    async def registrations(self) -> ActionResult:
        """The registered clients; ``value`` is a list of endpoint names or of objects with an
        "endpoint" key."""

    @abc.abstractmethod
    async def registration(self, endpoint: str) -> ActionResult:
        """One registration (ok False when unknown)."""

    @abc.abstractmethod
    async def read(self, endpoint: str, path: str, format: str | None = None) -> ActionResult: ...

    @abc.abstractmethod
    async def write(self, endpoint: str, path: str, value: Any, format: str | None = None) -> ActionResult: ...

    @abc.abstractmethod
    async def execute(self, endpoint: str, path: str, args: str = "") -> ActionResult: ...

    @abc.abstractmethod
    async def discover(self, endpoint: str, path: str) -> ActionResult: ...

    @abc.abstractmethod
    async def write_attributes(self, endpoint: str, path: str, attributes: Mapping[str, Any]) -> ActionResult: ...

    @abc.abstractmethod
    async def create(self, endpoint: str, path: str, value: Any, format: str | None = None) -> ActionResult: ...

    @abc.abstractmethod
    async def delete(self, endpoint: str, path: str) -> ActionResult: ...

    @abc.abstractmethod
    async def observe(self, endpoint: str, path: str, format: str | None = None) -> ActionResult: ...

    @abc.abstractmethod
    async def cancel_observe(self, endpoint: str, path: str) -> ActionResult: ...

    @abc.abstractmethod
    async def notifications(self, endpoint: str, path: str) -> ActionResult:
        """Notifications the server received for an observation; ``value`` is a list."""

    async def charging_records(self, endpoint: str) -> ActionResult:
        """The server's traffic records of ``endpoint`` (LightweightM2M-HLF-SG4); ``value`` is an
        object with ``uplink_messages``, ``uplink_bytes``, ``downlink_messages``, ``downlink_bytes``
        (CoAP messages and their bytes, excluding IP/UDP headers), ``registrations``, ``updates``.
        Not abstract (added after the first adapters): the default performs the profile's
        ``[actions.charging_records]`` and is unsupported without it."""
        return await self.dut.perform("charging_records", endpoint=endpoint)

    async def wait_registered(self, endpoint: str, timeout: float, interval: float = 0.1) -> ActionResult:
        """Poll :meth:`registration` until ``ok`` or ``timeout``; returns the last result."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            res = await self.registration(endpoint)
            if res.ok or loop.time() >= deadline:
                return res
            await asyncio.sleep(interval)


class BootstrapServerAdapter(DutAdapter):
    """Device configurations of a bootstrap-server DUT (its provisioning portal)."""

    @abc.abstractmethod
    async def configure(self, endpoint: str, config: Mapping[str, Any]) -> ActionResult:
        """Add or replace the configuration the bootstrap server provisions to ``endpoint``.
        ``config`` is the suite's neutral form (see docs/profiles.md, "configure")."""

    @abc.abstractmethod
    async def export(self, endpoint: str) -> ActionResult:
        """The configuration serialized for offline provisioning (alternative flow of 002)."""

    @abc.abstractmethod
    async def remove(self, endpoint: str) -> ActionResult: ...

    @abc.abstractmethod
    async def trigger(self, endpoint: str, address: str) -> ActionResult:
        """Server-initiated bootstrap of ``endpoint`` listening at ``address`` (coap://h:p)."""


# -- template-driven defaults ----------------------------------------------------------------

def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return "" if value is None else str(value)


class TemplateClientAdapter(ClientAdapter):
    """Performs ``[control.*]`` of the profile."""

    async def set_value(self, path: str, value: str) -> ActionResult:
        return await self.dut.perform("set_value", path=path, value=_fmt(value), raw={"value": value})

    async def confirm(self, accept: bool) -> ActionResult:
        return await self.dut.perform("confirm", answer="yes" if accept else "no", raw={"answer": accept})

    async def trigger_update(self) -> ActionResult:
        return await self.dut.perform("update")

    async def wait_confirmation_prompt(self, timeout: float) -> str:
        return await self.dut.watch("confirmation_prompt", timeout)

    def can(self, action: str) -> bool:
        return action in self.dut.profile.actions


class TemplateServerAdapter(ServerAdapter):
    """Performs ``[actions.*]`` of the profile."""

    async def registrations(self) -> ActionResult:
        return await self.dut.perform("registrations")

    async def registration(self, endpoint: str) -> ActionResult:
        return await self.dut.perform("registration", endpoint=endpoint)

    async def read(self, endpoint: str, path: str, format: str | None = None) -> ActionResult:
        return await self.dut.perform("read", endpoint=endpoint, path=path, format=_fmt(format))

    async def write(self, endpoint: str, path: str, value: Any, format: str | None = None) -> ActionResult:
        return await self.dut.perform("write", endpoint=endpoint, path=path, value=_fmt(value), format=_fmt(format),
                                      raw={"value": value})

    async def execute(self, endpoint: str, path: str, args: str = "") -> ActionResult:
        return await self.dut.perform("execute", endpoint=endpoint, path=path, args=args)

    async def discover(self, endpoint: str, path: str) -> ActionResult:
        return await self.dut.perform("discover", endpoint=endpoint, path=path)

    async def write_attributes(self, endpoint: str, path: str, attributes: Mapping[str, Any]) -> ActionResult:
        query = "&".join(f"{k}={_fmt(v)}" if v is not None else k for k, v in attributes.items())
        return await self.dut.perform("write_attributes", endpoint=endpoint, path=path, attributes=query,
                                      raw={"attributes": dict(attributes)})

    async def create(self, endpoint: str, path: str, value: Any, format: str | None = None) -> ActionResult:
        return await self.dut.perform("create", endpoint=endpoint, path=path, value=_fmt(value), format=_fmt(format),
                                      raw={"value": value})

    async def delete(self, endpoint: str, path: str) -> ActionResult:
        return await self.dut.perform("delete", endpoint=endpoint, path=path)

    async def observe(self, endpoint: str, path: str, format: str | None = None) -> ActionResult:
        return await self.dut.perform("observe", endpoint=endpoint, path=path, format=_fmt(format))

    async def cancel_observe(self, endpoint: str, path: str) -> ActionResult:
        return await self.dut.perform("cancel_observe", endpoint=endpoint, path=path)

    async def notifications(self, endpoint: str, path: str) -> ActionResult:
        return await self.dut.perform("notifications", endpoint=endpoint, path=path)


class TemplateBootstrapServerAdapter(BootstrapServerAdapter):
    """Performs ``[actions.*]`` of a bootstrap-server profile."""

    async def configure(self, endpoint: str, config: Mapping[str, Any]) -> ActionResult:
        return await self.dut.perform("configure", endpoint=endpoint, config=_fmt(dict(config)),
                                      raw={"config": dict(config)})

    async def export(self, endpoint: str) -> ActionResult:
        return await self.dut.perform("export", endpoint=endpoint)

    async def remove(self, endpoint: str) -> ActionResult:
        return await self.dut.perform("remove", endpoint=endpoint)

    async def trigger(self, endpoint: str, address: str) -> ActionResult:
        return await self.dut.perform("trigger", endpoint=endpoint, address=address)


DEFAULT_ADAPTERS: dict[str, type[DutAdapter]] = {
    "client": TemplateClientAdapter,
    "server": TemplateServerAdapter,
    "bootstrap-server": TemplateBootstrapServerAdapter,
}
ABSTRACT_FOR_ROLE: dict[str, type[DutAdapter]] = {
    "client": ClientAdapter, "server": ServerAdapter, "bootstrap-server": BootstrapServerAdapter,
}


def adapter_class(role: str, spec: str | None) -> type[DutAdapter]:
    """The adapter class for a profile: ``spec`` ("module:Class") or the template default.
    ConformanceError if the class cannot be imported or does not implement the role's ABC."""
    if not spec:
        return DEFAULT_ADAPTERS[role]
    mod_name, _, cls_name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError) as exc:
        raise ConformanceError(f"adapter {spec!r} cannot be loaded: {exc}") from None
    base = ABSTRACT_FOR_ROLE[role]
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConformanceError(f"adapter {spec!r} must subclass conformance.adapters.{base.__name__}")
    if getattr(cls, "__abstractmethods__", None):
        raise ConformanceError(f"adapter {spec!r} leaves abstract methods unimplemented: "
                               f"{', '.join(sorted(cls.__abstractmethods__))}")
    return cls
