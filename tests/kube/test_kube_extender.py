"""The scheduler extender's filter verb over real ExtenderArgs documents, in both modes."""

from __future__ import annotations

import json

import pytest
from kube_support import extender_args

from stockade.kube.extender import filter_nodes

NODES = ["node-good", "node-bad", "rogue-1", "node-also-good"]


def _filter(trust, clock, args) -> dict:
    # through JSON both ways, as on the wire
    result = filter_nodes(json.loads(json.dumps(args)), trust, clock)
    assert set(result) == {
        "Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error",
    }  # fmt: skip
    return json.loads(json.dumps(result))


def test_node_names_mode_keeps_only_trusted_nodes(trust, clock):
    result = _filter(trust, clock, extender_args(NODES, "names"))
    assert result["NodeNames"] == ["node-good", "node-also-good"]
    assert result["Nodes"] is None
    assert result["Error"] == ""
    assert set(result["FailedNodes"]) == {"node-bad", "rogue-1"}
    assert "failed at the Stockade verifier" in result["FailedNodes"]["node-bad"]
    assert "not enrolled" in result["FailedNodes"]["rogue-1"]
    assert result["FailedAndUnresolvableNodes"] == result["FailedNodes"]


def test_nodes_mode_returns_the_full_node_objects_that_pass(trust, clock):
    args = extender_args(NODES, "nodes")
    result = _filter(trust, clock, args)
    assert result["NodeNames"] is None
    assert result["Nodes"]["kind"] == "NodeList"
    kept = result["Nodes"]["items"]
    assert [item["metadata"]["name"] for item in kept] == ["node-good", "node-also-good"]
    assert kept[0] == args["Nodes"]["items"][0]
    assert set(result["FailedNodes"]) == {"node-bad", "rogue-1"}


def test_a_node_whose_result_went_stale_is_filtered_out(trust, clock):
    assert "node-good" in _filter(trust, clock, extender_args(NODES))["NodeNames"]
    clock.advance(61)
    result = _filter(trust, clock, extender_args(NODES))
    assert result["NodeNames"] == ["node-also-good"]
    assert "expired (stale)" in result["FailedNodes"]["node-good"]


@pytest.mark.parametrize("mode", ["names", "nodes"])
def test_verifier_unreachable_passes_no_node_and_sets_error(trust, clock, mode):
    trust.down = "verifier https://verifier:8443 unreachable: timed out"
    result = _filter(trust, clock, extender_args(NODES, mode))
    assert "cannot tell which nodes are trusted" in result["Error"]
    assert "unreachable" in result["Error"]
    if mode == "names":
        assert result["NodeNames"] == []
    else:
        assert result["Nodes"]["items"] == []
    assert set(result["FailedNodes"]) == set(NODES)


@pytest.mark.parametrize(
    "args",
    [
        None,
        [],
        {"Pod": {}},
        {"Pod": {}, "NodeNames": "node-good"},
        {"Pod": {}, "NodeNames": [1]},
        {"Pod": {}, "Nodes": {"items": [{"metadata": {}}]}},
        {"Pod": {}, "Nodes": {"items": "node-good"}},
        {"Pod": {}, "Nodes": []},
    ],
)
def test_malformed_args_are_an_error_and_pass_nothing(trust, clock, args):
    result = filter_nodes(args, trust, clock)
    assert result["Error"].startswith("Stockade refuses malformed ExtenderArgs")
    assert not result["NodeNames"]
    assert result["Nodes"] is None


def test_empty_candidate_list(trust, clock):
    result = _filter(trust, clock, extender_args([], "names"))
    assert result["NodeNames"] == []
    assert result["Error"] == ""
