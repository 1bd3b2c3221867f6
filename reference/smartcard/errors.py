"""Named errors of the smartcard package. Everything this package raises on bad input, a missing
reader or card, or an unexpected card answer is a :class:`CardError`; callers catch that one class
and fall back to another bootstrap route (Core 1.1.1 §6.1.3: smartcard bootstrap is one of several).
"""
from __future__ import annotations


class CardError(Exception):
    """Base class. ``where`` names the file, field or byte offset the problem is at (may be "")."""

    def __init__(self, message: str, where: str = "") -> None:
        self.where = where
        self.detail = message
        super().__init__(f"{where}: {message}" if where else message)


class CardDescriptionError(CardError):
    """A card description (YAML/JSON) is malformed: ``where`` is "<file>: <field path>"."""


class CardImageError(CardError):
    """A card image file is malformed (not the container format, bad hex, bad file tree)."""


class CardDataError(CardError):
    """Bytes stored in a card file are malformed (DIR, ODF, DODF, EF LwM2M_Bootstrap, indicators,
    ICCID): ``where`` is "<EF name> offset <n>"."""


class CardProtocolError(CardError):
    """The card answered a command with an unexpected status word (``sw``)."""

    def __init__(self, message: str, sw: int, where: str = "") -> None:
        self.sw = sw
        super().__init__(f"{message} (SW {sw:04X})", where)


class NoReaderError(CardError):
    """No PC/SC service, or no (matching) reader is attached."""


class NoCardError(CardError):
    """A reader exists but holds no card (or the card does not answer)."""
