"""CoAP transmission parameters (RFC 7252 §4.8) and the times derived from them (§4.8.2)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TransmissionParameters:
    """RFC 7252 §4.8.1 defaults; every value may be made smaller for tests.

    ``exchange_lifetime_override`` replaces the derived EXCHANGE_LIFETIME (247 s with the
    defaults), which bounds the duplicate-detection cache (§4.5) and, by default, how long an
    outgoing request waits for a separate response.
    """

    ack_timeout: float = 2.0
    ack_random_factor: float = 1.5
    max_retransmit: int = 4
    nstart: int = 1
    default_leisure: float = 5.0
    probing_rate: float = 1.0
    max_latency: float = 100.0
    processing_delay: float | None = None  # §4.8.2: "we use ACK_TIMEOUT" when unset
    exchange_lifetime_override: float | None = None

    @property
    def max_transmit_span(self) -> float:
        """§4.8.2: ACK_TIMEOUT * ((2 ** MAX_RETRANSMIT) - 1) * ACK_RANDOM_FACTOR (45 s)."""
        return self.ack_timeout * ((2 ** self.max_retransmit) - 1) * self.ack_random_factor

    @property
    def max_transmit_wait(self) -> float:
        """§4.8.2: ACK_TIMEOUT * ((2 ** (MAX_RETRANSMIT + 1)) - 1) * ACK_RANDOM_FACTOR (93 s)."""
        return self.ack_timeout * ((2 ** (self.max_retransmit + 1)) - 1) * self.ack_random_factor

    @property
    def exchange_lifetime(self) -> float:
        """§4.8.2: MAX_TRANSMIT_SPAN + 2 * MAX_LATENCY + PROCESSING_DELAY (247 s)."""
        if self.exchange_lifetime_override is not None:
            return self.exchange_lifetime_override
        pd = self.ack_timeout if self.processing_delay is None else self.processing_delay
        return self.max_transmit_span + 2 * self.max_latency + pd

    @property
    def non_lifetime(self) -> float:
        """§4.8.2: MAX_TRANSMIT_SPAN + MAX_LATENCY (145 s)."""
        if self.exchange_lifetime_override is not None:
            return self.exchange_lifetime_override
        return self.max_transmit_span + self.max_latency


DEFAULT_PARAMETERS = TransmissionParameters()
