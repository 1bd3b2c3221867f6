"""Reference LwM2M client (OMA-TS-LightweightM2M-Core 1.1.1) on aiocoap, and its CLI ``lwm2m-client``."""
from reference.client.bootstrap import (AlwaysUserAgent, BootstrapSource, BootstrapSourceError, CallbackUserAgent,
                                        FactoryFileSource, HookUserAgent, PromptUserAgent, StaticSource, UserAgent,
                                        open_card_source)
from reference.client.client import ClientOptions, LwM2MClient, Observation, ServerSession
from reference.client.objects import DeviceInfo
from reference.client.store import ObjectTree

__all__ = [
    "AlwaysUserAgent", "BootstrapSource", "BootstrapSourceError", "CallbackUserAgent", "ClientOptions",
    "DeviceInfo", "FactoryFileSource", "HookUserAgent", "LwM2MClient", "ObjectTree", "Observation",
    "PromptUserAgent", "ServerSession", "StaticSource", "UserAgent", "open_card_source",
]
