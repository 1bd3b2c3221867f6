"""DTLS 1.2 PSK security for the reference LwM2M stack (python-mbedtls bridges).

See :mod:`reference.security.dtls`. The bridges terminate DTLS and forward plain CoAP datagrams over
loopback UDP so that the CoAP layer stays ignorant of DTLS.
"""

from reference.security.dtls import (
    DEFAULT_CIPHERS,
    DtlsClientBridge,
    DtlsError,
    DtlsHandshakeError,
    DtlsServerBridge,
    DtlsSession,
    PskLookup,
)

__all__ = [
    "DEFAULT_CIPHERS",
    "DtlsClientBridge",
    "DtlsError",
    "DtlsHandshakeError",
    "DtlsServerBridge",
    "DtlsSession",
    "PskLookup",
]
