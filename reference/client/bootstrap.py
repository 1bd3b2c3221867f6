"""Where bootstrap information comes from, and the user-agent confirmation seam.

Core 1.1.1 §6.1 lists the bootstrap modes and their order: Bootstrap from Smartcard (§6.1.3) is
tried first when a smartcard is present, then Factory Bootstrap (§6.1.2), then Client Initiated
Bootstrap (§6.1.4) towards the LwM2M Bootstrap-Server account. Sources that are not the network
implement :class:`BootstrapSource`:

``async read() -> DeviceConfig | None``
    The configuration, or None when the source has none (no card inserted, empty file).
    Raise :class:`BootstrapSourceError` when the source is present but unusable.

``autonomous_connect: bool``
    The source allows the client to connect to the configured servers without asking anyone.

``ask_user: bool``
    The user must confirm (through a :class:`UserAgent`) before the configuration is used.

The smartcard side (``reference.smartcard``) plugs in by providing
``reference.smartcard.open_bootstrap_source(spec: str) -> BootstrapSource``; see
:func:`open_card_source`. Nothing here talks to a card.
"""
from __future__ import annotations

import abc
import asyncio
import importlib
import os
from pathlib import Path as FsPath
from typing import Awaitable, Callable

from reference.model.config import ConfigError, DeviceConfig


class BootstrapSourceError(RuntimeError):
    """A bootstrap source is present but its content cannot be used."""


class BootstrapSource(abc.ABC):
    """A non-network source of bootstrap information (smartcard, factory file, ...)."""

    #: short name used in events and logs ("card", "factory")
    name: str = "source"
    #: Core §6.1.3: whether the client may connect autonomously with this information
    autonomous_connect: bool = True
    #: whether the user has to confirm before the information is used
    ask_user: bool = False

    @abc.abstractmethod
    async def read(self) -> DeviceConfig | None:
        """The configuration held by the source, or None when it holds none."""

    @property
    def needs_confirmation(self) -> bool:
        """True when a :class:`UserAgent` must say yes before the client uses or connects with
        this configuration (``ask_user`` set, or autonomous connection not allowed)."""
        return needs_confirmation(self)


class StaticSource(BootstrapSource):
    """A configuration already in memory (CLI flags, tests)."""

    def __init__(self, config: DeviceConfig | None, name: str = "factory", *,
                 autonomous_connect: bool = True, ask_user: bool = False) -> None:
        self._config = config
        self.name = name
        self.autonomous_connect = autonomous_connect
        self.ask_user = ask_user

    async def read(self) -> DeviceConfig | None:
        return self._config


class FactoryFileSource(BootstrapSource):
    """Factory Bootstrap (Core 1.1.1 §6.1.2) from a DeviceConfig JSON file — also the format of the
    bootstrap server's offline export."""

    name = "factory"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = FsPath(path)

    async def read(self) -> DeviceConfig | None:
        try:
            return DeviceConfig.from_file(self.path)
        except ConfigError as e:
            raise BootstrapSourceError(str(e)) from None


def open_card_source(spec: str, endpoint: str = "") -> BootstrapSource:
    """The smartcard bootstrap source for a ``--card`` spec. If ``reference.smartcard`` provides
    ``open_bootstrap_source(spec)`` it decides the syntax; otherwise ``image:PATH`` (or a path to an
    existing file) reads a card image through the UICC emulator and ``pcsc[:READER]`` a PC/SC
    reader. Raises BootstrapSourceError when the smartcard module is missing or rejects the spec."""
    try:
        mod = importlib.import_module("reference.smartcard")
    except ImportError as e:
        raise BootstrapSourceError(f"--card needs the smartcard module: {e}") from None
    try:
        opener = getattr(mod, "open_bootstrap_source", None)
        if opener is not None:
            src = opener(spec)
        elif spec.startswith("pcsc"):
            _, _, reader = spec.partition(":")
            src = mod.PcscCardSource(reader or None, endpoint=endpoint)
        else:
            path = spec[len("image:"):] if spec.startswith("image:") else spec
            if not FsPath(path).is_file():
                raise BootstrapSourceError(f"card {spec!r}: not 'pcsc[:READER]' and no such image file")
            src = mod.ImageCardSource(path, endpoint=endpoint)
    except BootstrapSourceError:
        raise
    except Exception as e:  # the card side may raise anything; report it as unusable
        raise BootstrapSourceError(f"card {spec!r}: {e}") from None
    if not hasattr(src, "read"):
        raise BootstrapSourceError("the smartcard module returned no BootstrapSource")
    return src


def needs_confirmation(src: object) -> bool:
    """Whether the user must confirm before ``src``'s configuration is used: ``ask_user`` set, or
    ``autonomous_connect`` not allowed. Duck-typed so that sources need not subclass
    :class:`BootstrapSource`; read the indicators after ``read()`` (a card reports them then)."""
    return bool(getattr(src, "ask_user", False)) or not bool(getattr(src, "autonomous_connect", True))


# ---- user agent (confirmation) ---------------------------------------------------------------
class UserAgent(abc.ABC):
    """Asks the device's user a yes/no question (e.g. "connect with the card's configuration?")."""

    @abc.abstractmethod
    async def confirm(self, question: str, *, source: str = "") -> bool:
        """True when the user agrees. Implementations must bound their wait and answer False on
        timeout."""


class AlwaysUserAgent(UserAgent):
    """Answers every question with a fixed value (headless operation, tests)."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer

    async def confirm(self, question: str, *, source: str = "") -> bool:
        return self.answer


class CallbackUserAgent(UserAgent):
    """Delegates to a Python callable, sync or async: ``cb(question, source) -> bool``."""

    def __init__(self, cb: Callable[[str, str], bool | Awaitable[bool]], timeout: float = 60.0) -> None:
        self.cb = cb
        self.timeout = timeout

    async def confirm(self, question: str, *, source: str = "") -> bool:
        r = self.cb(question, source)
        if asyncio.iscoroutine(r) or isinstance(r, asyncio.Future):
            try:
                r = await asyncio.wait_for(r, self.timeout)
            except asyncio.TimeoutError:
                return False
        return bool(r)


class PromptUserAgent(UserAgent):
    """Waits for an answer delivered by :meth:`answer` (the CLI feeds ``confirm yes|no`` lines
    from --stdin-control into it). ``on_prompt`` is called with the question when asking."""

    def __init__(self, on_prompt: Callable[[str, str], None] | None = None, timeout: float = 120.0) -> None:
        self.on_prompt = on_prompt
        self.timeout = timeout
        self._pending: asyncio.Future[bool] | None = None

    @property
    def pending(self) -> bool:
        return self._pending is not None and not self._pending.done()

    def answer(self, yes: bool) -> bool:
        """Deliver an answer; False when no question is pending."""
        if not self.pending:
            return False
        self._pending.set_result(yes)  # type: ignore[union-attr]
        return True

    async def confirm(self, question: str, *, source: str = "") -> bool:
        self._pending = asyncio.get_running_loop().create_future()
        if self.on_prompt is not None:
            self.on_prompt(question, source)
        try:
            return await asyncio.wait_for(asyncio.shield(self._pending), self.timeout)
        except asyncio.TimeoutError:
            return False
        finally:
            self._pending = None


class HookUserAgent(UserAgent):
    """Runs a shell command; exit status 0 means yes. The question is in the environment as
    LWM2M_CONFIRM_QUESTION and the source name as LWM2M_CONFIRM_SOURCE."""

    def __init__(self, command: str, timeout: float = 60.0) -> None:
        self.command = command
        self.timeout = timeout

    async def confirm(self, question: str, *, source: str = "") -> bool:
        env = dict(os.environ, LWM2M_CONFIRM_QUESTION=question, LWM2M_CONFIRM_SOURCE=source)
        proc = await asyncio.create_subprocess_shell(
            self.command, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            rc = await asyncio.wait_for(proc.wait(), self.timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            return False
        return rc == 0
