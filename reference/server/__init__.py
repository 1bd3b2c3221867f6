"""Reference LwM2M server: Registration Interface (Core 1.1.1 §6.2), Device Management and
Information Reporting operations (§6.3, §6.4), a durable SQLite registration store, events,
an HTTP JSON API and the ``lwm2m-server`` command line.
"""
from reference.server.dm import DmError, DmResponse, ServerObservation
from reference.server.events import Event, EventBus, EventKind, EventSubscription
from reference.server.registration import (
    Registration,
    RegistrationError,
    RegistrationInterface,
)
from reference.server.security import PskEntry, PskFileError, PskTable, SecurityPolicy
from reference.server.server import LwM2MServer
from reference.server.store import RegistrationStore, StoreError

__all__ = [
    "DmError", "DmResponse", "Event", "EventBus", "EventKind", "EventSubscription",
    "LwM2MServer", "PskEntry", "PskFileError", "PskTable", "Registration", "RegistrationError",
    "RegistrationInterface", "RegistrationStore", "SecurityPolicy", "ServerObservation",
    "StoreError",
]
