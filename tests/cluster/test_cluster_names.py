"""Node names that can be certified (``stockade.cluster.names``).

A node name is at once a Kubernetes Node name, a grant selector (``node:<name or id>``) and the
``CN=system:node:<name>`` of a cluster-CA certificate. Each refusal below is an attack or a
500 that used to get through: a name that cannot fit a certificate, an id (UUID) posing as a
name to capture another node's grants, an address, a Unicode lookalike of another node.
"""

from __future__ import annotations

import ipaddress
import re
import uuid

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import example, given
from hypothesis import strategies as st

from stockade.cluster.names import (
    KUBE_NODE_PREFIX,
    MAX_NODE_NAME,
    UB_COMMON_NAME,
    InvalidNodeName,
    validate_node_name,
)
from stockade.errors import InputError, StockadeError

# The Kubernetes node-name rule (apimachinery IsDNS1123Subdomain), written out independently.
K8S_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
NODE_ID = "6f0d4c1e-2b7a-4e59-9a63-0c8e1d2f3a4b"  # what enrollment makes: str(uuid4())


def refused(name: object) -> InvalidNodeName:
    with pytest.raises(InvalidNodeName) as caught:
        validate_node_name(name)  # type: ignore[arg-type]
    return caught.value


# -- what a name may be ----------------------------------------------------------------------


def test_the_limit_is_what_a_certificate_common_name_holds():
    assert UB_COMMON_NAME == 64
    assert KUBE_NODE_PREFIX == "system:node:"
    assert MAX_NODE_NAME == 52 == UB_COMMON_NAME - len(KUBE_NODE_PREFIX)
    # cryptography enforces ub-common-name: this is where the old 500 came from.
    x509.NameAttribute(NameOID.COMMON_NAME, KUBE_NODE_PREFIX + "a" * MAX_NODE_NAME)
    with pytest.raises(ValueError, match="64"):
        x509.NameAttribute(NameOID.COMMON_NAME, KUBE_NODE_PREFIX + "a" * (MAX_NODE_NAME + 1))


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "worker-1",
        "worker-1.example.net",
        "a.b.c",
        "1a",
        "node-0x1f",
        "10-0-0-1",  # an EC2-style host name is a name, not an address
        "10.0.0.1.example",  # a numeric label is fine when the last one is not a number
        "0x1f.example",
        "x--y",
        "a" * 52,
        "a" * 25 + "." + "b" * 26,
        "0123456789abcdef0123456789abcde",  # 31 hex digits: no UUID
        "0123456789abcdef0123456789abcdef0",  # 33 hex digits: no UUID
        "g123456789abcdef0123456789abcdef",  # 32 characters, not all hex
        NODE_ID + "-x",  # contains an id, but is not one
        "urn-uuid-" + "0" * 31,
    ],
)
def test_valid_names_are_returned_unchanged(name):
    assert validate_node_name(name) is name


def test_a_name_of_52_characters_is_valid_and_53_is_not():
    for name in ("a" * 52, "a" * 51 + "1", ("n" * 25 + ".") + "n" * 26, "a-" * 25 + "zz"):
        assert len(name) == 52
        assert validate_node_name(name) == name
    for name in ("a" * 53, ("n" * 26 + ".") + "n" * 26, "a" * 60, "a" * 253, "a" * 10_000):
        error = refused(name)
        assert "at most 52" in error.reason
        assert f"({len(name)} characters)" in str(error) or len(name) <= 60


def test_the_error_is_a_typed_input_error_with_a_clear_message():
    error = refused("Worker_1")
    assert isinstance(error, InputError) and isinstance(error, StockadeError)
    assert error.exit_code == 2
    assert error.name == "Worker_1"
    assert str(error).startswith("node name 'Worker_1' is not valid: ")
    assert error.reason in str(error)
    # A huge name is not echoed whole into logs and HTTP answers.
    long = refused("x" * 100_000)
    assert len(str(long)) < 300 and "100000 characters" in str(long)


@pytest.mark.parametrize("name", [None, b"worker-1", 1, ["worker-1"]])
def test_only_strings_are_names(name):
    assert "string" in refused(name).reason


def test_empty_is_refused():
    assert "empty" in refused("").reason


@pytest.mark.parametrize("name", ["Worker-1", "WORKER", "worker-A", "worker.Example.net", "A"])
def test_uppercase_is_refused_not_lowercased(name):
    assert "uppercase" in refused(name).reason


@pytest.mark.parametrize(
    "name",
    [
        "under_score",
        "_worker",
        "worker 1",
        " worker",
        "worker ",
        "worker\n",
        "worker\t1",
        "worker\x00",
        "worker/1",
        "worker+1",
        "worker=1",
        "worker,1",
        "worker@1",
        "worker*",
        "*.example.net",
        "worker:1",
        "system:node:worker",
        "x/O=system:masters",  # would add an RDN to openssl's -subj
        "worker\\1",
        "worker%2e1",
        "worker'1",
        'worker"1',
    ],
)
def test_characters_outside_rfc_1123_are_refused(name):
    refused(name)


@pytest.mark.parametrize(
    "name", ["-lead", "trail-", "-", "a.-b", "a-.b", "worker.-1", "worker-.net", "--"]
)
def test_labels_start_and_end_with_a_letter_or_digit(name):
    assert "RFC 1123" in refused(name).reason


@pytest.mark.parametrize("name", ["..", ".", "a..b", ".a", "a.", "worker..example.net", "a.b."])
def test_empty_labels_are_refused(name):
    assert "empty label" in refused(name).reason


@pytest.mark.parametrize(
    "name",
    [
        "w\u043erker-1",  # Cyrillic o
        "\u0461orker",  # Cyrillic omega lookalike
        "worker-\u0031\u0338",  # 1 with a combining overlay
        "\uff57orker",  # fullwidth w
        "worker-\uff11",  # fullwidth digit 1
        "worker-\u0661",  # Arabic-Indic digit 1 (str.isdigit is True)
        "worker\u2010net",  # Unicode hyphen
        "worker\u2011net",  # non-breaking hyphen
        "worker\u200b",  # zero-width space
        "worker\u00a0",  # no-break space
        "worker\u3002net",  # ideographic full stop (IDNA maps it to '.')
        "worker\uff0enet",  # fullwidth full stop
        "\u0131stanbul",  # dotless i
        "\u017fystem",  # long s, whose uppercase is 'S'
        "\u212aube",  # Kelvin sign, whose lowercase is 'k'
        "\ufb01le",  # fi ligature
        "xn--wrker-1-m4g",  # this one is ASCII: an IDNA A-label is a valid name
    ],
)
def test_unicode_lookalikes_are_refused(name):
    if name.isascii():
        assert validate_node_name(name) == name
        return
    assert "Unicode" in refused(name).reason


# -- an id is never a name -------------------------------------------------------------------


def uuid_forms(value: uuid.UUID) -> list[str]:
    """Every textual form of ``value`` that ``uuid.UUID`` accepts, as far as we know."""
    text, hexa = str(value), value.hex
    forms = [
        text,
        text.upper(),
        hexa,
        hexa.upper(),
        "{" + text + "}",
        "{" + hexa + "}",
        "urn:uuid:" + text,
        "urn:uuid:" + hexa,
        "urn:uuid:{" + text + "}",
        "uuid:" + text,
        "urn:" + hexa,
        "{{" + text + "}}",
        "-".join(hexa),  # hyphens anywhere: uuid.UUID removes them all
        hexa[:16] + "-" + hexa[16:],
        "-" + hexa + "-",
        "".join(c.upper() if i % 2 else c for i, c in enumerate(text)),  # mixed case
        "0x" + hexa[2:],  # int(..., 16) accepts a 0x prefix
        " " + hexa[1:],  # and surrounding whitespace
        "+" + hexa[1:],  # and a sign
        hexa[:8] + "_" + hexa[9:],  # and underscores between digits
    ]
    for form in forms:
        uuid.UUID(form)  # each one really is a UUID to Python
    return forms


@pytest.mark.parametrize(
    "value",
    [
        uuid.UUID(NODE_ID),
        uuid.UUID("00000000-0000-0000-0000-000000000000"),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),  # all digits
        uuid.UUID("ffffffff-ffff-ffff-ffff-ffffffffffff"),
    ],
)
def test_a_uuid_in_any_form_is_refused(value):
    for form in uuid_forms(value):
        error = refused(form)
        assert "UUID" in error.reason, (form, error.reason)


def test_a_node_cannot_name_itself_with_another_nodes_id():
    """``node:<id>`` grants: the canonical id and its hex form are otherwise valid names."""
    assert K8S_SUBDOMAIN.fullmatch(NODE_ID) and len(NODE_ID) <= MAX_NODE_NAME
    assert K8S_SUBDOMAIN.fullmatch(uuid.UUID(NODE_ID).hex)
    for form in (NODE_ID, uuid.UUID(NODE_ID).hex, "-".join(uuid.UUID(NODE_ID).hex)):
        assert "an id is never a name" in str(refused(form))


@st.composite
def uuid_texts(draw: st.DrawFn) -> str:
    value = draw(st.uuids())
    base = draw(st.sampled_from([str(value), value.hex]))
    # Hyphens in arbitrary places, arbitrary case, and the wrappers uuid.UUID strips.
    hexa = base.replace("-", "")
    cuts = sorted(draw(st.lists(st.integers(0, 32), max_size=6)))
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(hexa[start:cut])
        start = cut
    pieces.append(hexa[start:])
    text = "-".join(pieces)
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    text = "".join(c.upper() if f else c for c, f in zip(text, flips, strict=True))
    prefix = draw(st.sampled_from(["", "urn:", "uuid:", "urn:uuid:"]))
    if draw(st.booleans()):
        text = "{" + text + "}"
    return prefix + text


@given(uuid_texts())
def test_every_uuid_text_is_refused_as_a_uuid(text):
    uuid.UUID(text)
    assert "UUID" in refused(text).reason


# -- an address is never a name --------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "10.0.0.1",
        "127.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "2001:db8::1",
        "::ffff:10.0.0.1",
        "::",
    ],
)
def test_ip_addresses_are_refused(name):
    assert "IP address" in refused(name).reason


@pytest.mark.parametrize(
    "name",
    [
        "10.1",  # inet_aton: 10.0.0.1
        "127.1",
        "1.2.3",
        "2130706433",  # 127.0.0.1 as one number
        "0x7f000001",
        "0x7f.1",
        "017.0.0.1",  # octal: Python's ipaddress refuses it, inet_aton does not
        "10.0.0.01",
        "10.0.0.0x1",
        "0x",
        "worker.1",  # WHATWG URL parsing: a host ending in a number is an IPv4 attempt
        "worker.0x1f",
        "256.256.256.256",
        "1.2.3.4.5",
    ],
)
def test_names_ipv4_parsers_read_as_addresses_are_refused(name):
    assert "number" in refused(name).reason


# -- the whole rule, against an independent oracle -------------------------------------------


def oracle(name: str) -> bool:
    """The rule as the issue states it, written without looking at the implementation."""
    if not (1 <= len(name) <= 52) or not K8S_SUBDOMAIN.fullmatch(name):
        return False
    try:
        uuid.UUID(name)
    except ValueError:
        pass
    else:
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return False
    last = name.rsplit(".", 1)[-1]
    return not (last.isdigit() or re.fullmatch(r"0x[0-9a-f]*", last))


ALPHABET = "abcdef0123456789-.xzAF_: {}\u043e\uff11"


@given(st.text(alphabet=ALPHABET, max_size=60))
@example("a" * 52)
@example("a" * 53)
@example(NODE_ID)
@example("1.2.3.4")
def test_the_rule_matches_the_oracle_and_only_raises_invalid_node_name(name):
    try:
        result = validate_node_name(name)
    except InvalidNodeName as error:
        assert not oracle(name), name
        assert error.reason
        return
    assert oracle(name), name
    assert result is name
    # What is accepted can always be certified.
    x509.NameAttribute(NameOID.COMMON_NAME, KUBE_NODE_PREFIX + name)


@given(st.from_regex(K8S_SUBDOMAIN, fullmatch=True))
def test_kubernetes_names_are_accepted_exactly_when_certifiable(name):
    try:
        validate_node_name(name)
    except InvalidNodeName:
        assert not oracle(name), name
    else:
        assert oracle(name), name
        assert len(KUBE_NODE_PREFIX + name) <= UB_COMMON_NAME


@given(st.text(max_size=80))
def test_arbitrary_text_never_escapes_as_another_exception(name):
    try:
        validate_node_name(name)
    except InvalidNodeName:
        return
    assert oracle(name)
