"""The kube-scheduler extender's ``filter`` verb: only trusted nodes stay candidates.

The wire format is ``k8s.io/kube-scheduler/extender/v1`` (Go structs without JSON tags,
so the field names are the Go names):

- in, ``ExtenderArgs``: ``Pod`` (a v1.Pod), and either ``Nodes`` (a v1.NodeList, when the
  extender is not ``nodeCacheCapable``) or ``NodeNames`` (a list of names, when it is);
- out, ``ExtenderFilterResult``: ``Nodes`` or ``NodeNames`` (the same mode as the input:
  the nodes that pass), ``FailedNodes`` and ``FailedAndUnresolvableNodes`` (name ->
  reason) and ``Error``.

A refused node is in both failure maps: the scheduler counts it as unresolvable (evicting
pods from an untrusted node would not make it trusted, so preemption must not try) and
older schedulers that only read ``FailedNodes`` still see the reason. The verifier's view
is read once per call. When it cannot be read, ``Error`` says why and no node passes
(fail closed: the scheduler retries the pod later).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from stockade.kube.trust import TrustSource, TrustUnavailable, refusal


class _Malformed(Exception):
    pass


def _node_name(item: Any, index: int) -> str:
    if not isinstance(item, dict):
        raise _Malformed(f"Nodes.items[{index}] is not a JSON object")
    metadata = item.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        raise _Malformed(f"Nodes.items[{index}].metadata.name is missing")
    return name


def _result(
    names: list[str] | None,
    node_list: dict[str, Any] | None,
    failed: dict[str, str],
    error: str = "",
) -> dict[str, Any]:
    return {
        "Nodes": node_list,
        "NodeNames": names,
        "FailedNodes": failed,
        "FailedAndUnresolvableNodes": dict(failed),
        "Error": error,
    }


def filter_nodes(
    args: Any,
    source: TrustSource,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dict[str, Any]:
    """``ExtenderArgs`` (parsed JSON) -> ``ExtenderFilterResult``; never raises."""
    try:
        if not isinstance(args, dict):
            raise _Malformed("ExtenderArgs is not a JSON object")
        names_in = args.get("NodeNames")
        nodes_in = args.get("Nodes")
        if names_in is not None and (
            not isinstance(names_in, list) or not all(isinstance(n, str) for n in names_in)
        ):
            raise _Malformed("NodeNames is not a list of strings")
        items: list[Any] | None = None
        if nodes_in is not None:
            if not isinstance(nodes_in, dict):
                raise _Malformed("Nodes is not a NodeList object")
            raw_items = nodes_in.get("items") or []
            if not isinstance(raw_items, list):
                raise _Malformed("Nodes.items is not a list")
            items = raw_items
        if names_in is None and items is None:
            raise _Malformed("ExtenderArgs has neither Nodes nor NodeNames")
        item_names = [_node_name(item, i) for i, item in enumerate(items or [])]
    except _Malformed as error:
        return _result(None, None, {}, f"Stockade refuses malformed ExtenderArgs: {error}")

    candidates = list(dict.fromkeys([*(names_in or []), *item_names]))
    try:
        trust = source.snapshot()
    except TrustUnavailable as error:
        reason = f"Stockade cannot tell which nodes are trusted: {error}"
        return _result(
            [] if names_in is not None else None,
            {**nodes_in, "items": []} if isinstance(nodes_in, dict) else None,
            dict.fromkeys(candidates, reason),
            reason,
        )
    now = clock()
    failed: dict[str, str] = {}
    for name in candidates:
        why = refusal(trust, name, now)
        if why is not None:
            failed[name] = f"Stockade: {why}"
    names_out = [n for n in names_in if n not in failed] if names_in is not None else None
    list_out = None
    if isinstance(nodes_in, dict):
        pairs = zip(items or [], item_names, strict=True)
        kept = [item for item, name in pairs if name not in failed]
        list_out = {**nodes_in, "items": kept}
    return _result(names_out, list_out, failed)
