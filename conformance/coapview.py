"""One-line descriptions of recorded datagrams: CoAP (RFC 7252) decoded with aiocoap, DTLS
records (RFC 6347 §4.1) by their header. Used by the exchange log, failure output and the
message-sequence diagrams of the report."""
from __future__ import annotations

from dataclasses import dataclass

DTLS_CONTENT_TYPES = {20: "ChangeCipherSpec", 21: "Alert", 22: "Handshake", 23: "ApplicationData", 25: "ACK"}
DTLS_HANDSHAKE_TYPES = {1: "ClientHello", 2: "ServerHello", 3: "HelloVerifyRequest", 11: "Certificate",
                        12: "ServerKeyExchange", 13: "CertificateRequest", 14: "ServerHelloDone",
                        15: "CertificateVerify", 16: "ClientKeyExchange", 20: "Finished"}


@dataclass(frozen=True)
class Decoded:
    """What a datagram is: ``kind`` coap|dtls|other; ``label`` for diagrams; ``detail`` longer."""

    kind: str
    label: str
    detail: str
    is_request: bool = False


def is_dtls(data: bytes) -> bool:
    return len(data) >= 13 and data[0] in DTLS_CONTENT_TYPES and data[1] == 0xFE


def describe(data: bytes) -> Decoded:
    """Decode a UDP payload for humans. Never raises."""
    if is_dtls(data):
        return _describe_dtls(data)
    try:
        from aiocoap.message import Message

        msg = Message.decode(data)
    except Exception as exc:  # any malformed payload is shown, not fatal
        return Decoded("other", f"{len(data)} bytes (not CoAP)", f"undecodable: {exc}")
    mtype = getattr(msg.mtype, "name", str(msg.mtype))
    code = msg.code
    tok = msg.token.hex()
    base = f"{mtype} mid={msg.mid}" + (f" tok={tok}" if tok else "")
    if code.is_request():
        path = "/" + "/".join(msg.opt.uri_path)
        query = "&".join(msg.opt.uri_query)
        target = path + (f"?{query}" if query else "")
        extra = []
        if msg.opt.observe is not None:
            extra.append(f"Observe:{msg.opt.observe}")
        if msg.opt.content_format is not None:
            extra.append(f"CF:{int(msg.opt.content_format)}")
        label = f"{_method(code)} {target}"
        return Decoded("coap", label, f"{base} {label} {' '.join(extra)} payload={len(msg.payload)}B".replace("  ", " "), True)
    if int(code) == 0:
        kind = "ping" if mtype == "CON" else ("RST" if mtype == "RST" else "empty ACK")
        return Decoded("coap", f"{mtype} (empty)" if kind != "ping" else "CoAP ping", f"{base} {kind}")
    label = f"{_dotted(int(code))} {_response_name(code)}".strip()
    extra = []
    if msg.opt.location_path:
        extra.append("Location-Path:/" + "/".join(msg.opt.location_path))
    if msg.opt.observe is not None:
        extra.append(f"Observe:{msg.opt.observe}")
    if msg.opt.content_format is not None:
        extra.append(f"CF:{int(msg.opt.content_format)}")
    if msg.opt.location_path:
        label += " " + extra.pop(0)
    return Decoded("coap", label, f"{base} {label} {' '.join(extra)} payload={len(msg.payload)}B".replace("  ", " "))


def _dotted(code: int) -> str:
    return f"{code >> 5}.{code & 0x1F:02d}"


def _method(code: object) -> str:
    names = {1: "GET", 2: "POST", 3: "PUT", 4: "DELETE", 5: "FETCH", 6: "PATCH", 7: "iPATCH"}
    return names.get(int(code), _dotted(int(code)))  # type: ignore[arg-type]


def _response_name(code: object) -> str:
    name = getattr(code, "name", "")
    return name.replace("_", " ").title() if name and not name.startswith("Code") else ""


def _describe_dtls(data: bytes) -> Decoded:
    parts = []
    i = 0
    while i + 13 <= len(data):
        ctype = data[i]
        epoch = int.from_bytes(data[i + 3:i + 5], "big")
        length = int.from_bytes(data[i + 11:i + 13], "big")
        name = DTLS_CONTENT_TYPES.get(ctype, f"type{ctype}")
        if ctype == 22 and epoch == 0 and i + 13 < len(data):
            name = DTLS_HANDSHAKE_TYPES.get(data[i + 13], name)
        parts.append(f"{name}" + (f"(e{epoch})" if epoch else ""))
        i += 13 + length
    label = "DTLS " + ", ".join(parts[:3]) + (" …" if len(parts) > 3 else "")
    return Decoded("dtls", label, f"{label} ({len(data)} bytes)")
