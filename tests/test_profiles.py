"""Implementation profiles: bundled ones are valid; every kind of mistake is reported with file:line."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from conformance.profiles import (BUNDLED, CONTENT_FORMATS, load_profile, parse_feature, placeholders, render,
                                  render_structure, resolve_profile_arg)
from conformance.tomlsource import DataFileError

CLIENT = """\
format = 1

[implementation]
name = "acme-client"
version = "2.3"
role = "client"

[start.factory]
command = ["acme", "--ep", "{endpoint}", "--server", "{server_uri}"]

[start.bootstrap]
command = "acme --ep {endpoint} --bs {bootstrap_uri}"

[ready]
stdout = 'READY port=(?P<local_port>\\d+)'
timeout = 5

[stop]
signal = "SIGINT"

[control.set_value]
command = ["acme-ctl", "set", "{path}", "{value}"]

[control.confirmation_prompt]
stdout = 'confirm\\?'

[ics]
lwm2m_versions = ["1.1"]
content_formats = ["tlv", 112]
bindings = ["U"]
security_modes = ["nosec", "psk"]
bootstrap_modes = ["factory", "client-initiated"]
objects = [0, 1, 3]
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "acme.toml"
    p.write_text(text)
    return p


def line_of(text: str, needle: str) -> int:
    return next(i for i, t in enumerate(text.splitlines(), 1) if needle in t)


@pytest.mark.parametrize("role", sorted(BUNDLED))
def test_bundled_profiles_load(role: str) -> None:
    prof = load_profile(BUNDLED[role])
    assert prof.role == role and prof.ics.lwm2m_versions
    assert prof.ready.stdout is not None and prof.ready.stdout.pattern.startswith("lwm2m-")


def test_bundled_ready_lines_match_the_cli_contract() -> None:
    client = load_profile(BUNDLED["client"])
    m = client.ready.stdout.search("lwm2m-client READY endpoint=dev1 local=127.0.0.1:56830")
    assert m and m["local_port"] == "56830"
    server = load_profile(BUNDLED["server"])
    m = server.ready.stdout.search("lwm2m-server READY coap=127.0.0.1:40001 coaps=off http=127.0.0.1:40002")
    assert m and (m["coap_port"], m["http_port"], m["coaps_port"]) == ("40001", "40002", None)
    bs = load_profile(BUNDLED["bootstrap-server"])
    m = bs.ready.stdout.search("lwm2m-bootstrap-server READY coap=127.0.0.1:1 coaps=127.0.0.1:2 http=127.0.0.1:3")
    assert m and m["coaps_port"] == "2"


def test_valid_profile_and_ics(tmp_path: Path) -> None:
    prof = load_profile(write(tmp_path, CLIENT))
    assert prof.id == "acme-client-2.3" and prof.modes == ("factory", "bootstrap")
    assert prof.start["bootstrap"].argv == ("acme", "--ep", "{endpoint}", "--bs", "{bootstrap_uri}")
    assert prof.stop.signal == 2 and prof.ready.timeout == 5.0
    assert prof.actions["set_value"].kind == "command"
    ics = prof.ics
    assert ics.content_formats == (CONTENT_FORMATS["tlv"], 112)
    assert ics.supports("security_mode:psk") and not ics.supports("security_mode:rpk")
    assert ics.supports("content_format:senml-cbor") and ics.supports("format:11542")
    assert ics.supports("object:3") and not ics.supports("object:5")
    assert not ics.supports("smartcard") and not ics.supports("binding:UQ")
    with pytest.raises(ValueError, match="unknown ICS feature"):
        ics.supports("colour:red")


@pytest.mark.parametrize("old,new,needle,message", [
    ('role = "client"', 'role = "modem"', "role =", "must be one of client, server, bootstrap-server"),
    ('timeout = 5', 'timeout = "5"', "timeout =", "must be a positive number of seconds"),
    ('"{server_uri}"]', '"{server_url}"]', "{server_url}", "unknown placeholder {server_url}"),
    ('signal = "SIGINT"', 'signal = "SIGFOO"', "SIGFOO", "unknown signal 'SIGFOO'"),
    ('version = "2.3"', 'version = "2.3"\nvendor = "ACME"', "vendor", "unknown key 'vendor'"),
    ('objects = [0, 1, 3]', 'objects = [0, "one"]', "objects =", "invalid object ID 'one'"),
    ('bindings = ["U"]', 'bindings = ["X"]', "bindings =", "invalid value 'X'"),
    ('bootstrap_modes = ["factory", "client-initiated"]', 'bootstrap_modes = ["factory", "client-initiated", "smartcard"]',
     "bootstrap_modes", "claims 'smartcard' but the profile has no [start.smartcard]"),
    ('[start.bootstrap]', '[start.bootstrp]', "bootstrp", "unknown start mode 'bootstrp'"),
    ("stdout = 'READY", "stdout = '(READY", "(READY", "invalid regular expression"),
    ('[control.set_value]', '[control.teleport]', "teleport", "unknown control 'teleport'"),
    ("stdout = 'confirm", 'stdin = "y" #', 'stdin = "y"', "is observed, not performed"),
    ('lwm2m_versions = ["1.1"]', 'lwm2m_versions = "1.1"', "lwm2m_versions", "must be list"),
    ('timeout = 5', 'timeout = = 5', "timeout = =", "TOML syntax error"),
])
def test_malformed_profile_names_file_line_and_problem(tmp_path: Path, old: str, new: str, needle: str, message: str) -> None:
    assert old in CLIENT
    text = CLIENT.replace(old, new)
    p = write(tmp_path, text)
    with pytest.raises(DataFileError) as ei:
        load_profile(p)
    assert str(ei.value).startswith(f"{p}:{line_of(text, needle)}: "), str(ei.value)
    assert message in str(ei.value)


def test_missing_mode_and_tables(tmp_path: Path) -> None:
    text = CLIENT.replace('bootstrap_modes = ["factory", "client-initiated"]', 'bootstrap_modes = ["factory"]')
    with pytest.raises(DataFileError, match=r"acme.toml:11: \[start.bootstrap\]: start mode 'bootstrap' is not claimed"):
        load_profile(write(tmp_path, text))
    text = re.sub(r"\[ics\].*", "", CLIENT, flags=re.S)
    with pytest.raises(DataFileError, match=r"acme.toml: missing \[ics\] table"):
        load_profile(write(tmp_path, text))
    server = CLIENT.replace('role = "client"', 'role = "server"')
    with pytest.raises(DataFileError, match=r"unknown start mode 'factory' for role server"):
        load_profile(write(tmp_path, server))


def test_server_actions_and_templates(tmp_path: Path) -> None:
    text = textwrap.dedent("""\
        [implementation]
        name = "srv"
        version = "1"
        role = "server"
        [start.default]
        command = ["srv", "--port", "{coap_port}", "--http", "{http_port}"]
        [ready]
        poll = { port = "{http_port}", protocol = "tcp" }
        [actions.read]
        http = { method = "GET", url = "http://127.0.0.1:{http_port}/c/{endpoint}{path}", result = "json:/value" }
        [actions.write]
        http = { method = "PUT", url = "http://127.0.0.1:{http_port}/c/{endpoint}{path}", body = { v = "{value}", note = "to {endpoint}" } }
        [ics]
        """)
    prof = load_profile(write(tmp_path, text))
    assert prof.ready.poll_port == "{http_port}" and prof.actions["read"].http.result == "json:/value"
    body = render_structure(prof.actions["write"].http.body, {"value": "5", "endpoint": "e"}, {"value": 5})
    assert body == {"v": 5, "note": "to e"}
    bad = text.replace("{path}\", result", "{pth}\", result")
    with pytest.raises(DataFileError, match=r"acme.toml:10: \[actions.read\] http: unknown placeholder \{pth\}"):
        load_profile(write(tmp_path, bad))


def test_template_helpers() -> None:
    assert placeholders("a {x} {{lit}} {y}") == {"x", "y"}
    with pytest.raises(ValueError, match="plain"):
        placeholders("{x:>5}")
    assert render("{a}-{b}", {"a": 1, "b": "z"}) == "1-z"
    with pytest.raises(KeyError):
        render("{missing}", {})
    assert parse_feature("bootstrap_mode:smartcard") == ("bootstrap_modes", "smartcard")
    assert resolve_profile_arg("reference-client") == BUNDLED["client"]


def test_documented_examples_are_valid_profiles(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "profiles.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", doc, flags=re.S)
    assert len(blocks) == 2
    client = load_profile(write(tmp_path, blocks[0]))
    assert client.modes == ("factory", "bootstrap", "smartcard") and "confirmation_prompt" in client.actions
    server = load_profile(write(tmp_path, blocks[1]))
    assert server.role == "server" and server.ready.poll_port == "{http_port}"
