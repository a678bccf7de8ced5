"""``stockade.strict_yaml.load_yaml``: the YAML the CLI and the verifier read policies with.
A YAML bomb, a key given twice, deep nesting, oversize input and values JSON cannot carry are
refused with ``InputError`` before anything large is built; what is accepted is exactly what
the same document sent as JSON gives."""

from __future__ import annotations

import json
import time

import pytest

from stockade.errors import InputError
from stockade.strict_yaml import MAX_DEPTH, MAX_YAML_BYTES, load_yaml

BOMB = "\n".join(
    ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, 10)]
)


def test_a_yaml_bomb_is_refused_at_once():
    started = time.perf_counter()
    with pytest.raises(InputError, match="alias"):
        load_yaml(BOMB, "policy")
    assert time.perf_counter() - started < 5  # 9**10 strings were never built


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("id: a\nid: b\n", "appears twice"),
        ("pcrs: {0: {v: 1}, 0: {v: 2}}\n", "appears twice"),
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "levels deep"),
        ("when: 2026-12-06\n", "not JSON serializable"),
        ("x: !!binary aGVsbG8=\n", "not JSON serializable"),
        ("x: .nan\n", "Out of range float"),
        ("x: [1, 2\n", "not a YAML or JSON document"),
    ],
)
def test_what_json_could_not_carry_or_yaml_would_hide_is_refused(text, says):
    with pytest.raises(InputError, match=says):
        load_yaml(text, "policy")


def test_an_oversize_document_is_refused_before_parsing():
    with pytest.raises(InputError, match="more than"):
        load_yaml(b"x" * (MAX_YAML_BYTES + 1), "policy")


def test_the_document_is_what_json_would_carry():
    text = "id: golden\npcrs:\n  0: {value: ab}\n  14: {value: cd}\nflag: true\n"
    document = load_yaml(text, "policy")
    assert document == {"id": "golden", "pcrs": {"0": {"value": "ab"}, "14": {"value": "cd"}},
                        "flag": True}  # fmt: skip
    assert load_yaml(json.dumps(document), "policy") == document
