"""Card images: a UICC file system as data, its JSON container, and building one from a readable
card description.

Card description (YAML or JSON; ``fixtures/cards/*.yaml``)::

    format: lwm2m-card-description/1
    iccid: "8944500102030405067"          # optional; EF ICCID 2FE2
    indicators:                            # optional; absent = plain bootstrap card
      autonomous_connect: true             # DM-SC-GEN-X
      ask_user: false                      # DM-SC-USE-X
    bootstrap:                             # DeviceConfig without endpoint (the card is endpoint-independent)
      security: [{instance_id: 0, uri: "coap://...", bootstrap: true, mode: NOSEC}]
      servers: []

Card image (JSON, ``format: lwm2m-card-image/1``): the ATR and every file of the card keyed by its
path of FIDs from the MF, e.g. ``"3F00/5015/6432"``, with ``type`` DF | ADF | transparent |
linear-fixed and the content in hex. Any card layout can be expressed, including broken ones.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

import yaml

from reference.model.config import ConfigError, DeviceConfig, SecurityMode
from reference.smartcard import layout
from reference.smartcard.errors import CardDataError, CardDescriptionError, CardImageError
from reference.smartcard.layout import Fid

IMAGE_FORMAT = "lwm2m-card-image/1"
DESCRIPTION_FORMAT = "lwm2m-card-description/1"
#: ISO 7816-3 ATR: TS=3B, T0=80 (TD1 follows, no historical bytes), TD1=80 (T=0, TD2 follows),
#: TD2=01 (T=1), TCK=01 (XOR of T0..TD2). Offers T=0 and T=1 like a UICC (TS 102 221 §6.3).
DEFAULT_ATR = bytes.fromhex("3B80800101")
FILE_TYPES = ("DF", "ADF", "transparent", "linear-fixed")


@dataclass
class CardFile:
    """One node of the card's file tree."""

    fid: int
    type: str  # one of FILE_TYPES
    name: str = ""
    data: bytes = b""                                   # transparent EF
    records: list[bytes] = field(default_factory=list)  # linear fixed EF
    record_length: int = 0
    aid: bytes = b""                                    # ADF
    sfi: int | None = None
    children: list["CardFile"] = field(default_factory=list)
    parent: "CardFile | None" = field(default=None, repr=False, compare=False)

    @property
    def is_df(self) -> bool:
        return self.type in ("DF", "ADF")

    def child(self, fid: int) -> "CardFile | None":
        return next((c for c in self.children if c.fid == fid), None)

    def add(self, f: "CardFile") -> "CardFile":
        f.parent = self
        self.children.append(f)
        return f

    def walk(self, prefix: tuple[int, ...] = ()):  # noqa: ANN201
        path = prefix + (self.fid,)
        yield path, self
        for c in self.children:
            yield from c.walk(path)


@dataclass
class CardImage:
    """A whole card: ATR plus the file tree under the MF."""

    mf: CardFile
    atr: bytes = DEFAULT_ATR

    def find(self, path: tuple[int, ...]) -> CardFile | None:
        node: CardFile | None = self.mf if path and path[0] == Fid.MF else None
        for fid in path[1:]:
            node = node.child(fid) if node is not None else None
        return node

    def applications(self) -> list[CardFile]:
        return [f for _, f in self.mf.walk() if f.type == "ADF"]

    # ---- container ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        files = []
        for path, f in self.mf.walk():
            d: dict[str, Any] = {"path": "/".join(f"{p:04X}" for p in path), "type": f.type}
            if f.name:
                d["name"] = f.name
            if f.type == "ADF":
                d["aid"] = f.aid.hex().upper()
            if f.type == "transparent":
                d["data"] = f.data.hex().upper()
            if f.type == "linear-fixed":
                d["record_length"] = f.record_length
                d["records"] = [r.hex().upper() for r in f.records]
            if f.sfi is not None:
                d["sfi"] = f.sfi
            files.append(d)
        return {"format": IMAGE_FORMAT, "atr": self.atr.hex().upper(), "files": files}

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=1) + "\n").encode()

    def save(self, path: str | FsPath) -> None:
        FsPath(path).write_bytes(self.to_bytes())

    @classmethod
    def from_dict(cls, doc: Any, where: str = "<image>") -> "CardImage":
        if not isinstance(doc, dict):
            raise CardImageError("top level must be a JSON object", where)
        if doc.get("format") != IMAGE_FORMAT:
            raise CardImageError(f"format {doc.get('format')!r}, expected {IMAGE_FORMAT!r}", f"{where}: format")
        atr = _hex(doc.get("atr", DEFAULT_ATR.hex()), f"{where}: atr")
        if not 2 <= len(atr) <= 33:
            raise CardImageError(f"ATR of {len(atr)} bytes (ISO 7816-3 allows 2..33)", f"{where}: atr")
        files = doc.get("files")
        if not isinstance(files, list) or not files:
            raise CardImageError("'files' must be a non-empty list", f"{where}: files")
        mf: CardFile | None = None
        by_path: dict[tuple[int, ...], CardFile] = {}
        for i, fd in enumerate(files):
            at = f"{where}: files[{i}]"
            if not isinstance(fd, dict):
                raise CardImageError("must be an object", at)
            unknown = set(fd) - {"path", "type", "name", "aid", "data", "record_length", "records", "sfi"}
            if unknown:
                raise CardImageError(f"unknown field(s) {sorted(unknown)}", at)
            try:
                path = tuple(int(p, 16) for p in str(fd.get("path", "")).split("/"))
                if any(not 0 <= p <= 0xFFFF for p in path):
                    raise ValueError
            except ValueError:
                raise CardImageError(f"path {fd.get('path')!r} is not FIDs (4 hex digits) joined by '/'",
                                     f"{at}.path") from None
            ftype = fd.get("type")
            if ftype not in FILE_TYPES:
                raise CardImageError(f"type {ftype!r}, expected one of {list(FILE_TYPES)}", f"{at}.type")
            if path in by_path:
                raise CardImageError(f"duplicate path {fd['path']}", f"{at}.path")
            node = CardFile(fid=path[-1], type=ftype, name=str(fd.get("name", "")))
            if ftype == "ADF":
                node.aid = _hex(fd.get("aid"), f"{at}.aid")
                if not 5 <= len(node.aid) <= 16:
                    raise CardImageError(f"AID of {len(node.aid)} bytes (ISO 7816-4 allows 5..16)", f"{at}.aid")
            elif ftype == "transparent":
                node.data = _hex(fd.get("data", ""), f"{at}.data")
                if len(node.data) > 0x7FFF:
                    raise CardImageError(f"{len(node.data)} bytes exceed the 15-bit READ BINARY offset range",
                                         f"{at}.data")
            elif ftype == "linear-fixed":
                rl = fd.get("record_length")
                if not isinstance(rl, int) or not 1 <= rl <= 255:
                    raise CardImageError("record_length must be 1..255", f"{at}.record_length")
                node.record_length = rl
                recs = fd.get("records", [])
                if not isinstance(recs, list) or len(recs) > 254:
                    raise CardImageError("records must be a list of at most 254 hex strings", f"{at}.records")
                for j, r in enumerate(recs):
                    b = _hex(r, f"{at}.records[{j}]")
                    if len(b) != rl:
                        raise CardImageError(f"record of {len(b)} bytes, record_length is {rl}",
                                             f"{at}.records[{j}]")
                    node.records.append(b)
            if "sfi" in fd:
                if not isinstance(fd["sfi"], int) or not 1 <= fd["sfi"] <= 30:
                    raise CardImageError("sfi must be 1..30", f"{at}.sfi")
                node.sfi = fd["sfi"]
            if len(path) == 1:
                if path[0] != Fid.MF or ftype != "DF" or mf is not None:
                    raise CardImageError("the only top-level file must be the MF 3F00 of type DF", f"{at}.path")
                mf = node
            else:
                parent = by_path.get(path[:-1])
                if parent is None:
                    raise CardImageError(f"parent {'/'.join(f'{p:04X}' for p in path[:-1])} not listed before it",
                                         f"{at}.path")
                if not parent.is_df:
                    raise CardImageError("parent is an EF, not a DF", f"{at}.path")
                parent.add(node)
            by_path[path] = node
        if mf is None:
            raise CardImageError("no MF (path 3F00)", f"{where}: files")
        return cls(mf=mf, atr=atr)

    @classmethod
    def load(cls, path: str | FsPath) -> "CardImage":
        p = FsPath(path)
        try:
            text = p.read_bytes()
        except OSError as e:
            raise CardImageError(f"cannot read: {e.strerror}", str(p)) from None
        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            pos = f":{e.lineno}:{e.colno}" if isinstance(e, json.JSONDecodeError) else ""
            raise CardImageError(f"not a JSON card image: {e}", f"{p}{pos}") from None
        return cls.from_dict(doc, where=str(p))


def _hex(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise CardImageError(f"expected a hex string, got {type(value).__name__}", where)
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise CardImageError(f"not valid hex: {value[:40]!r}", where) from None


# ---- descriptions ---------------------------------------------------------------------------------
@dataclass
class CardDescription:
    """What a card carries, independent of the bytes: bootstrap accounts, indicators, ICCID."""

    config: DeviceConfig
    iccid: str = ""
    indicators: tuple[bool, bool] | None = None  # (autonomous_connect, ask_user); None = no EF

    def to_dict(self) -> dict[str, Any]:
        cfg = self.config.to_dict()
        d: dict[str, Any] = {"format": DESCRIPTION_FORMAT}
        if self.iccid:
            d["iccid"] = self.iccid
        if self.indicators is not None:
            d["indicators"] = {"autonomous_connect": self.indicators[0], "ask_user": self.indicators[1]}
        d["bootstrap"] = {"security": cfg["security"], "servers": cfg["servers"]}
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, doc: Any, where: str = "<description>") -> "CardDescription":
        if not isinstance(doc, dict):
            raise CardDescriptionError("top level must be a mapping", where)
        fmt = doc.get("format", DESCRIPTION_FORMAT)
        if fmt != DESCRIPTION_FORMAT:
            raise CardDescriptionError(f"format {fmt!r}, expected {DESCRIPTION_FORMAT!r}", f"{where}: format")
        unknown = set(doc) - {"format", "iccid", "indicators", "bootstrap"}
        if unknown:
            raise CardDescriptionError(f"unknown field(s) {sorted(unknown)}", where)
        iccid = doc.get("iccid", "")
        if isinstance(iccid, int):
            raise CardDescriptionError("quote the ICCID: a YAML number loses leading zeros", f"{where}: iccid")
        if iccid != "":
            try:
                layout.encode_iccid(str(iccid))
            except ValueError as e:
                raise CardDescriptionError(str(e), f"{where}: iccid") from None
        indicators = None
        if "indicators" in doc:
            ind = doc["indicators"]
            if not isinstance(ind, dict) or set(ind) - {"autonomous_connect", "ask_user"}:
                raise CardDescriptionError("must be a mapping with autonomous_connect and/or ask_user",
                                           f"{where}: indicators")
            for k, v in ind.items():
                if not isinstance(v, bool):
                    raise CardDescriptionError(f"must be true or false, got {v!r}", f"{where}: indicators.{k}")
            indicators = (ind.get("autonomous_connect", False), ind.get("ask_user", False))
        bs = doc.get("bootstrap")
        if not isinstance(bs, dict):
            raise CardDescriptionError("missing or not a mapping", f"{where}: bootstrap")
        unknown = set(bs) - {"security", "servers"}
        if unknown:
            raise CardDescriptionError(f"unknown field(s) {sorted(unknown)} (a card carries /0 and /1 only; "
                                       "it names no endpoint)", f"{where}: bootstrap")
        for key in ("security", "servers"):
            if not isinstance(bs.get(key, []), list):
                raise CardDescriptionError("must be a list", f"{where}: bootstrap.{key}")
        for i, acc in enumerate(bs.get("security", [])):
            mode = acc.get("mode", "NOSEC") if isinstance(acc, dict) else None
            if isinstance(mode, str) and mode not in SecurityMode.__members__:
                raise CardDescriptionError(f"mode {mode!r} is not one of {', '.join(SecurityMode.__members__)}",
                                           f"{where}: bootstrap.security[{i}].mode")
        try:
            cfg = DeviceConfig.from_dict({"endpoint": "-", **bs}, where=f"{where}: bootstrap")
        except ConfigError as e:
            raise CardDescriptionError(str(e)) from None
        cfg.endpoint = ""
        for key, items in (("security", cfg.security), ("servers", cfg.servers)):
            ids = [x.instance_id for x in items]
            if len(set(ids)) != len(ids):
                raise CardDescriptionError(f"duplicate instance_id in {ids}", f"{where}: bootstrap.{key}")
        return cls(config=cfg, iccid=str(iccid), indicators=indicators)

    @classmethod
    def load(cls, path: str | FsPath) -> "CardDescription":
        p = FsPath(path)
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise CardDescriptionError(f"cannot read: {getattr(e, 'strerror', None) or e}", str(p)) from None
        try:
            doc = yaml.safe_load(text)  # JSON is YAML too
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            pos = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
            raise CardDescriptionError(f"invalid YAML/JSON: {getattr(e, 'problem', None) or e}", f"{p}{pos}") from None
        return cls.from_dict(doc, where=str(p))


def build_image(desc: CardDescription, registry=None, allow_inconsistent: bool = False) -> CardImage:  # noqa: ANN001
    """The card file system for ``desc`` in the layout of :mod:`reference.smartcard.layout`.
    Unless ``allow_inconsistent``, refuses accounts a client could not use (DeviceConfig.problems)."""
    problems = desc.config.problems()
    if problems and not allow_inconsistent:
        raise CardDescriptionError("inconsistent bootstrap accounts: " + "; ".join(problems), "bootstrap")
    try:
        bootstrap = layout.encode_bootstrap_values(desc.config.to_values(), registry)
    except CardDataError as e:
        raise CardDescriptionError(e.detail, "bootstrap") from None
    mf = CardFile(Fid.MF, "DF", "MF")
    mf.add(CardFile(Fid.EF_DIR, "linear-fixed", "EF DIR", records=[_pad(layout.encode_dir_record(), 48)],
                    record_length=48))
    if desc.iccid:
        mf.add(CardFile(Fid.EF_ICCID, "transparent", "EF ICCID", data=layout.encode_iccid(desc.iccid)))
    adf = mf.add(CardFile(Fid.ADF_PKCS15, "ADF", "ADF PKCS#15", aid=layout.PKCS15_AID))
    adf.add(CardFile(Fid.EF_ODF, "transparent", "EF ODF", data=layout.encode_odf([Fid.EF_DODF.to_bytes(2, "big")])))
    entries = [layout.DodfEntry.of(layout.LABEL_BOOTSTRAP, layout.LWM2M_BOOTSTRAP_OID,
                                   Fid.EF_LWM2M_BOOTSTRAP.to_bytes(2, "big"))]
    if desc.indicators is not None:
        entries.append(layout.DodfEntry.of(layout.LABEL_INDICATORS, layout.INDICATORS_OID,
                                           Fid.EF_INDICATORS.to_bytes(2, "big")))
    adf.add(CardFile(Fid.EF_DODF, "transparent", "EF DODF-bootstrap", data=layout.encode_dodf(entries)))
    adf.add(CardFile(Fid.EF_LWM2M_BOOTSTRAP, "transparent", "EF LwM2M_Bootstrap", data=bootstrap))
    if desc.indicators is not None:
        adf.add(CardFile(Fid.EF_INDICATORS, "transparent", "EF DM-SC indicators",
                         data=layout.encode_indicators(*desc.indicators)))
    return CardImage(mf=mf)


def _pad(record: bytes, length: int) -> bytes:
    """Records of a linear fixed EF have one length; unused bytes are 'FF' (TS 102 221 §13.1)."""
    if len(record) > length:
        raise CardDataError(f"record of {len(record)} bytes exceeds record length {length}", "EF DIR")
    return record + b"\xff" * (length - len(record))
