"""A fast asyncio CoAP endpoint for the server roles (RFC 7252 message layer, RFC 7641 client
side, RFC 7959 Block2 reassembly), using aiocoap's :class:`aiocoap.Message` as wire codec.

See :mod:`reference.coap.endpoint` for the behaviour and its RFC clauses.
"""
from reference.coap.endpoint import (
    BlockwiseError,
    CoapEndpoint,
    CoapError,
    CoapReset,
    CoapTimeout,
    EndpointClosed,
    EndpointStats,
    Observation,
    RequestHandler,
)
from reference.coap.params import DEFAULT_PARAMETERS, TransmissionParameters
from reference.coap.wire import DEFAULT_RECOGNIZED_CRITICAL, MessageFormatError

__all__ = [
    "BlockwiseError", "CoapEndpoint", "CoapError", "CoapReset", "CoapTimeout",
    "DEFAULT_PARAMETERS", "DEFAULT_RECOGNIZED_CRITICAL", "EndpointClosed", "EndpointStats",
    "MessageFormatError", "Observation", "RequestHandler", "TransmissionParameters",
]
