"""``lwm2m-card``: build, inspect, serve and read LwM2M bootstrap smartcards (Core 1.1.1 Appendix G).

    lwm2m-card build DESCRIPTION -o IMAGE     description (YAML/JSON) -> card image (JSON)
    lwm2m-card dump IMAGE [--files]           card image -> description (YAML), read through APDUs
    lwm2m-card serve IMAGE [--vpcd-port N]    insert the image into vpcd until interrupted
    lwm2m-card read [--reader NAME]           read the card in a PC/SC reader, print its description

Exit status: 0 success, 1 a card/description/image error (one line on stderr, no traceback),
2 bad command line.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from reference.smartcard.errors import CardError
from reference.smartcard.image import CardDescription, CardImage, build_image
from reference.smartcard.reader import CardContents, ImageCardSource, PcscCardSource


def contents_to_description(c: CardContents) -> CardDescription:
    return CardDescription(config=c.config, iccid=c.iccid,
                           indicators=(c.autonomous_connect, c.ask_user) if c.has_indicators else None)


def _extra_objects_note(c: CardContents) -> None:
    extra = sorted({p.object_id for p in c.values if p.object_id not in (0, 1)})
    if extra:
        print(f"lwm2m-card: note: objects {extra} on the card are not part of a description", file=sys.stderr)


def _cmd_build(a: argparse.Namespace) -> int:
    desc = CardDescription.load(a.description)
    image = build_image(desc, allow_inconsistent=a.allow_inconsistent)
    image.save(a.output)
    return 0


def _cmd_dump(a: argparse.Namespace) -> int:
    image = CardImage.load(a.image)
    if a.files:
        for path, f in image.mf.walk():
            p = "/".join(f"{x:04X}" for x in path)
            if f.type == "transparent":
                print(f"{p}  {f.name or f.type}  {len(f.data)} bytes  {f.data.hex().upper()}")
            elif f.type == "linear-fixed":
                for i, r in enumerate(f.records, 1):
                    print(f"{p}  {f.name or f.type}  record {i}  {r.hex().upper()}")
            else:
                print(f"{p}  {f.name or f.type}" + (f"  AID {f.aid.hex().upper()}" if f.aid else ""))
        return 0
    contents = ImageCardSource(image).read_contents()
    _extra_objects_note(contents)
    sys.stdout.write(contents_to_description(contents).to_yaml())
    return 0


def _cmd_serve(a: argparse.Namespace) -> int:
    from reference.smartcard.vpcd import serve

    image = CardImage.load(a.image)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    logging.basicConfig(level=logging.INFO, format="lwm2m-card: %(message)s")
    try:
        serve(image, host=a.vpcd_host, port=a.vpcd_port, reconnect=not a.once, stop=stop)
    except KeyboardInterrupt:
        stop.set()
    return 0


def _cmd_read(a: argparse.Namespace) -> int:
    src = PcscCardSource(reader=a.reader, timeout=a.timeout)
    contents = src.read_contents()
    _extra_objects_note(contents)
    sys.stdout.write(contents_to_description(contents).to_yaml())
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lwm2m-card", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build a card image from a description")
    b.add_argument("description")
    b.add_argument("-o", "--output", required=True, help="card image file to write")
    b.add_argument("--allow-inconsistent", action="store_true",
                   help="build even if the accounts are unusable (for negative tests)")
    b.set_defaults(func=_cmd_build)
    d = sub.add_parser("dump", help="print the description a card image holds")
    d.add_argument("image")
    d.add_argument("--files", action="store_true", help="list the raw file tree instead")
    d.set_defaults(func=_cmd_dump)
    s = sub.add_parser("serve", help="run the emulator on vpcd (card inserted while running)")
    s.add_argument("image")
    s.add_argument("--vpcd-host", default="127.0.0.1")
    s.add_argument("--vpcd-port", type=int, default=None,
                   help="vpcd port (default: from /etc/reader.conf.d/vpcd, else 35963)")
    s.add_argument("--once", action="store_true", help="exit when vpcd drops the connection")
    s.set_defaults(func=_cmd_serve)
    r = sub.add_parser("read", help="read the card in a PC/SC reader")
    r.add_argument("--reader", default=None, help="substring of the reader name")
    r.add_argument("--timeout", type=float, default=10.0)
    r.set_defaults(func=_cmd_read)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CardError as e:
        print(f"lwm2m-card: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
