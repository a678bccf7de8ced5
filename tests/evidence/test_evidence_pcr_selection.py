"""PcrSelection.parse (tpm2-tools bank specifiers) and the TPMS_PCR_SELECTION bitmaps."""

from __future__ import annotations

import pytest

from stockade.evidence import EvidenceError, PcrSelection, UnsupportedAlgorithm
from stockade.evidence.algorithms import Alg
from stockade.evidence.pcr_selection import BankSelection


def test_parse_lists_and_ranges_in_the_order_given():
    selection = PcrSelection.parse("sha256:0,1,2+sha1:0-3")
    assert selection.banks == (
        BankSelection(Alg.SHA256, (0, 1, 2), 3),
        BankSelection(Alg.SHA1, (0, 1, 2, 3), 3),
    )
    # the order the TPM concatenates PCR digests in: banks as given, indices ascending
    assert selection.items() == [
        (Alg.SHA256, 0),
        (Alg.SHA256, 1),
        (Alg.SHA256, 2),
        (Alg.SHA1, 0),
        (Alg.SHA1, 1),
        (Alg.SHA1, 2),
        (Alg.SHA1, 3),
    ]
    assert str(selection) == "sha256:0,1,2+sha1:0,1,2,3"


def test_parse_sorts_and_deduplicates_indices_and_accepts_spaces_and_case():
    selection = PcrSelection.parse(" SHA384: 7, 3 ,3,0-1 ")
    assert selection.banks == (BankSelection(Alg.SHA384, (0, 1, 3, 7), 3),)


def test_str_parses_back_to_the_same_selection():
    selection = PcrSelection.parse("sha1:23+sha512:0-2,9+sha256:16")
    assert PcrSelection.parse(str(selection)) == selection


@pytest.mark.parametrize(
    ("text", "bitmap"),
    [
        ("sha256:0,1,2", b"\x07\x00\x00"),
        ("sha256:0-3", b"\x0f\x00\x00"),
        ("sha256:7,8,16,23", b"\x80\x01\x81"),
        ("sha256:0-23", b"\xff\xff\xff"),
        ("sha256:", b"\x00\x00\x00"),
        ("sha256:10", b"\x00\x04\x00"),
    ],
)
def test_bitmap_for_size_of_select_3(text, bitmap):
    (bank,) = PcrSelection.parse(text).banks
    assert bank.size_of_select == 3
    assert bank.bitmap() == bitmap
    assert PcrSelection.parse(text).marshal() == b"\x00\x00\x00\x01\x00\x0b\x03" + bitmap


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("md5:0", "unsupported hash algorithm 'md5'"),
        ("sha256:0+sm4:1", "unsupported hash algorithm 'sm4'"),
    ],
)
def test_unknown_bank_is_an_unsupported_algorithm(text, message):
    with pytest.raises(UnsupportedAlgorithm, match=message):
        PcrSelection.parse(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sha256:24", "PCR index 24 is outside 0..23"),
        ("sha256:20-24", "PCR index 24 is outside 0..23"),
        ("sha256:0+sha256:1", "bank sha256 is selected twice"),
        ("sha1:0+sha256:1+sha1:2", "bank sha1 is selected twice"),
        ("sha256", "lacks 'bank:'"),
        ("sha256:0+sha1", "'sha1' lacks 'bank:'"),
        ("", "lacks 'bank:'"),
        ("sha256:zero", "PCR index 'zero' is not a number"),
        ("sha256:-1", "is not a number"),
        ("sha256:1-x", "PCR index '1-x' is not a number"),
        ("sha256:5-2", "PCR range '5-2' is empty"),
    ],
)
def test_parse_errors_are_typed_and_say_what_is_wrong(text, message):
    with pytest.raises(EvidenceError, match=message):
        PcrSelection.parse(text)


def test_same_pcrs_ignores_empty_banks_but_not_order_or_content():
    a = PcrSelection.parse("sha256:0,1+sha1:2")
    assert a.same_pcrs(PcrSelection.parse("sha256:1,0+sha384:+sha1:2"))
    assert not a.same_pcrs(PcrSelection.parse("sha1:2+sha256:0,1"))
    assert not a.same_pcrs(PcrSelection.parse("sha256:0,1+sha1:2,3"))
    assert not a.same_pcrs(PcrSelection.parse("sha256:0,1"))
