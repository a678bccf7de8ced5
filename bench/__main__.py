"""``make bench``: run every benchmark module and print one table of medians.

Each module in ``MODULES`` has ``run(rounds) -> list[Row]``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from bench.timing import Row

MODULES = ["bench.tpm_quote", "bench.verity", "bench.eventlog", "bench.verifier", "bench.translog"]
MODULES.append("bench.membership")
MODULES.append("bench.executions")
MODULES.append("bench.oci_hook")
MODULES.append("bench.kube")
MODULES.append("bench.cli")
MODULES.append("bench.fleet")
MODULES.append("bench.cli_startup")
MODULES.append("bench.fleet_nodes")
MODULES.append("bench.dashboard")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--only", action="append", help="module name, e.g. tpm_quote")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    rows: list[Row] = []
    for module_name in MODULES:
        if args.only and module_name.removeprefix("bench.") not in args.only:
            continue
        rows.extend(importlib.import_module(module_name).run(args.rounds))
    if args.json:
        json.dump({name: {"median": value, "unit": unit} for name, value, unit in rows}, sys.stdout)
        print()
        return
    width = max((len(name) for name, _, _ in rows), default=10)
    print(f"{'benchmark':<{width}}  {'median':>10}  unit")
    print("-" * (width + 18))
    for name, value, unit in rows:
        print(f"{name:<{width}}  {value:>10.1f}  {unit}")


if __name__ == "__main__":
    main()
