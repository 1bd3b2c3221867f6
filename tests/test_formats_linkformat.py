"""CoRE Link Format (RFC 6690) parser and formatter (reference.formats.linkformat)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.formats import linkformat
from reference.formats.errors import FormatError, MalformedPayload
from reference.formats.linkformat import Link


def test_registration_payload():
    # Core 1.1.1 §5.3.1 style Register payload: root link with rt and ct, object versions, instances
    text = '</>;rt="oma.lwm2m";ct=11543,</1>;ver=1.1,</1/0>,</3/0>,</4/0>,</5>,</3442/0>'
    links = linkformat.parse(text)
    assert links == [Link("/", {"rt": "oma.lwm2m", "ct": "11543"}), Link("/1", {"ver": "1.1"}), Link("/1/0"),
                     Link("/3/0"), Link("/4/0"), Link("/5"), Link("/3442/0")]
    assert linkformat.format(links) == text


def test_discover_payload_with_attributes():
    # Core 1.1.1 §5.4.2 Discover example: attributes on instances/resources, dim for multiple resources
    text = "</3/0>;pmin=10,</3/0/1>,</3/0/6>;dim=8,</3/0/7>;dim=8;gt=50;lt=42.2,</3/0/16>"
    links = linkformat.parse(text)
    assert links[0] == Link("/3/0", {"pmin": "10"})
    assert links[3].params == {"dim": "8", "gt": "50", "lt": "42.2"}
    assert linkformat.format(links) == text


def test_quoted_values_with_spaces_commas_and_escapes():
    # A Corelnk resource value as carried by object 3442-style tests: ct list in a quoted string
    text = ('</>;rt="oma.lwm2m";ct="60 110 112 1542 1543 11542 11543",</1>;ver=1.1,'
            '</a>;title="x, y; \\"z\\" \\\\ w";obs;hb')
    links = linkformat.parse(text)
    assert links[0].params["ct"] == "60 110 112 1542 1543 11542 11543"
    assert links[2].params == {"title": 'x, y; "z" \\ w', "obs": None, "hb": None}
    assert linkformat.parse(linkformat.format(links)) == links
    assert linkformat.parse(text.encode()) == links


def test_empty_document_and_empty_quoted_value():
    assert linkformat.parse("") == []
    assert linkformat.parse('</x>;title=""') == [Link("/x", {"title": ""})]
    assert linkformat.format([Link("/x", {"title": ""})]) == '</x>;title=""'


def test_lenient_whitespace_is_opt_in():
    text = "</1/0> , </3/0> ;ver=1.1"
    with pytest.raises(MalformedPayload):
        linkformat.parse(text)
    assert linkformat.parse(text, strict=False) == [Link("/1/0"), Link("/3/0", {"ver": "1.1"})]


@pytest.mark.parametrize("text", [
    "/1/0", "<1/0", "</1/0>,", ",</1/0>", "</1/0>;", "</1/0>;=1", "</1/0>;a=", '</1/0>;a="x', '</1/0>;a="x\\',
    "</1/0>;a=1;a=2", "</1 0>", "</1/0>x", '</1/0>;a=x"y', "</1/0>;a=b c", "</1/0>;a\u00e9=1", "</\u00e9>",
    '</a>;t="\x01"', "</1/0>,,</2>",
])
def test_malformed_link_format(text):
    with pytest.raises(MalformedPayload):
        linkformat.parse(text)


def test_malformed_bytes_and_unwritable_links():
    with pytest.raises(MalformedPayload):
        linkformat.parse(b"</\xff>")
    with pytest.raises(MalformedPayload):
        linkformat.format([Link("/a b")])
    with pytest.raises(MalformedPayload):
        linkformat.format([Link("/a", {"bad name": "1"})])
    with pytest.raises(MalformedPayload):
        linkformat.format([Link("/a", {"t": "line\nbreak"})])


uri_chars = st.sampled_from(list("abcXYZ019-._~:/?#[]@!$&'()*+,;=%"))
names = st.text(st.sampled_from(list("abcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~")), min_size=1, max_size=6)
values = st.none() | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"),
                             max_size=12)
links = st.builds(Link, st.text(uri_chars, max_size=16), st.dictionaries(names, values, max_size=4))


@settings(max_examples=200, deadline=None)
@given(ls=st.lists(links, max_size=5))
def test_round_trip(ls):
    assert linkformat.parse(linkformat.format(ls)) == ls


@settings(max_examples=300, deadline=None)
@given(text=st.text(st.sampled_from(list('<>;,="\\ /abc1é\x00')), max_size=40), strict=st.booleans())
def test_random_text_raises_only_format_errors(text, strict):
    try:
        out = linkformat.parse(text, strict=strict)
    except FormatError:
        return
    assert all(isinstance(link, Link) for link in out)
