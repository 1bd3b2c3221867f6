"""Reference LwM2M Bootstrap-Server and provisioning portal (Core 1.1.1 §5.2, §6.1).

Public API:

* :class:`BootstrapServer` - the Bootstrap-Server role (aiocoap) plus the Python provisioning API
* :class:`BootstrapPolicy` - server-wide defaults (delete paths, discover, formats, timeouts)
* :class:`BootstrapResult` / :class:`Step` - outcome of one bootstrap sequence
* :class:`EventKind` / :class:`Event` - the bootstrap history
* :class:`DeviceStore` - durable configurations and events (SQLite under the state directory)
* :class:`BootstrapService` - CoAP + CoAPS + HTTP API in one object (what the CLI runs)
* :func:`parse_csv`, :func:`parse_json`, :func:`load_file`, :class:`ProvisioningError` - bulk input
"""
from reference.bootstrap.provisioning import (
    CSV_COLUMNS,
    ProvisioningError,
    load_file,
    parse_csv,
    parse_json,
    parse_text,
    validate,
)
from reference.bootstrap.server import (
    INSTANCE_FORMATS,
    BootstrapPolicy,
    BootstrapResult,
    BootstrapServer,
    EventKind,
    Step,
    StepFailed,
)
from reference.bootstrap.service import BootstrapService
from reference.bootstrap.store import DeviceExists, DeviceStore, Event, UnknownDevice

__all__ = [
    "CSV_COLUMNS", "INSTANCE_FORMATS", "BootstrapPolicy", "BootstrapResult", "BootstrapServer",
    "BootstrapService", "DeviceExists", "DeviceStore", "Event", "EventKind", "ProvisioningError",
    "Step", "StepFailed", "UnknownDevice", "load_file", "parse_csv", "parse_json", "parse_text",
    "validate",
]
