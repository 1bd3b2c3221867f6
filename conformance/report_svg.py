"""Message-sequence diagrams (inline SVG, no external resources) from recorded datagrams.

Lifelines: the DUT on the left, one per suite-side peer (proxy name) to the right. Each datagram is
an arrow labelled with its decoded form ("POST /rd?ep=…", "2.01 Created") and its time offset.
"""
from __future__ import annotations

from html import escape
from typing import Any, Sequence

ROW = 26
TOP = 46
COL = 260
LEFT = 90
MAX_ROWS = 400


def sequence_svg(datagrams: Sequence[dict[str, Any]], dut_label: str = "DUT", uid: str = "") -> str:
    """SVG text for ``datagrams`` (dicts as written to exchange.jsonl). ``uid`` makes the arrow
    marker's id unique when several diagrams are inlined in one HTML document."""
    marker = f"ah{uid}"
    dgs = list(datagrams)[:MAX_ROWS]
    peers: list[str] = []
    for d in dgs:
        if d["proxy"] not in peers:
            peers.append(d["proxy"])
    cols = [dut_label] + [f"suite: {p}" for p in peers]
    xs = [LEFT + i * COL for i in range(len(cols))]
    width = xs[-1] + LEFT + 40
    height = TOP + ROW * (len(dgs) + 1) + 10
    t0 = dgs[0]["t"] if dgs else 0.0
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="msc" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="12">',
           f'<defs><marker id="{marker}" markerWidth="8" markerHeight="8" refX="8" refY="4" orient="auto">'
           '<path d="M0,0 L8,4 L0,8 z" fill="#333"/></marker></defs>']
    for x, name in zip(xs, cols):
        out.append(f'<rect x="{x - 80}" y="6" width="160" height="24" rx="4" fill="#eef" stroke="#669"/>')
        out.append(f'<text x="{x}" y="22" text-anchor="middle" font-weight="bold">{escape(name)}</text>')
        out.append(f'<line x1="{x}" y1="30" x2="{x}" y2="{height - 4}" stroke="#999" stroke-dasharray="4,3"/>')
    for i, d in enumerate(dgs):
        y = TOP + ROW * i + 10
        peer_x = xs[1 + peers.index(d["proxy"])]
        dut_x = xs[0]
        x1, x2 = (dut_x, peer_x) if d["direction"] == "from-dut" else (peer_x, dut_x)
        color = {"coap": "#225", "dtls": "#552", "other": "#a22"}.get(d.get("kind", "other"), "#333")
        dash = ' stroke-dasharray="5,3"' if not d.get("request") and d.get("kind") == "coap" else ""
        out.append(f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="{color}" stroke-width="1.4"{dash} marker-end="url(#{marker})"/>')
        label = d.get("label", "")
        if d.get("note"):
            label += f" [{d['note']}]"
        mid = (x1 + x2) / 2
        title = escape(f"{d.get('detail', '')} {d['src'][0]}:{d['src'][1]} > {d['dst'][0]}:{d['dst'][1]}")
        out.append(f'<text x="{mid}" y="{y - 4}" text-anchor="middle" fill="{color}"><title>{title}</title>{escape(label[:60])}</text>')
        out.append(f'<text x="4" y="{y + 4}" fill="#777" font-size="10">+{d["t"] - t0:.3f}s</text>')
    if len(datagrams) > MAX_ROWS:
        out.append(f'<text x="4" y="{height - 2}" fill="#a22">… {len(datagrams) - MAX_ROWS} more datagrams in exchange.jsonl</text>')
    out.append("</svg>")
    return "\n".join(out)
