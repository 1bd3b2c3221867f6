"""Smartcard bootstrap, the card side (Core 1.1.1 §6.1.3.2 and Appendix G).

Public API for the client (see docs/smartcard.md):

- :class:`PcscCardSource` / :class:`ImageCardSource`: ``await source.read() -> DeviceConfig``
  (raises :class:`CardError`), then ``source.autonomous_connect``, ``source.ask_user``,
  ``source.iccid``, ``source.contents``; ``source.read_contents()`` is the synchronous form.
- :class:`CardContents`: config, autonomous_connect, ask_user, iccid, has_indicators, values.
- :class:`CardDescription`, :func:`build_image`, :class:`CardImage`: make cards.
- :class:`UiccEmulator` (in process), :class:`VpcdCard` (on vpcd), :class:`PcscEnvironment` (tests).
"""
from reference.smartcard.emulator import UiccEmulator
from reference.smartcard.errors import (
    CardDataError,
    CardDescriptionError,
    CardError,
    CardImageError,
    CardProtocolError,
    NoCardError,
    NoReaderError,
)
from reference.smartcard.image import CardDescription, CardFile, CardImage, build_image
from reference.smartcard.layout import INDICATORS_OID, LWM2M_BOOTSTRAP_OID, PKCS15_AID
from reference.smartcard.pcsc_env import PcscEnvironment
from reference.smartcard.reader import CardContents, CardSession, ImageCardSource, PcscCardSource
from reference.smartcard.vpcd import VpcdCard

__all__ = [
    "CardContents", "CardDataError", "CardDescription", "CardDescriptionError", "CardError", "CardFile",
    "CardImage", "CardImageError", "CardProtocolError", "CardSession", "ImageCardSource",
    "INDICATORS_OID", "LWM2M_BOOTSTRAP_OID", "NoCardError", "NoReaderError", "PKCS15_AID",
    "PcscCardSource", "PcscEnvironment", "UiccEmulator", "VpcdCard", "build_image",
]
