"""docs/policy.schema.json is what `stockade policy schema` prints (regenerate with
``stockade policy schema > docs/policy.schema.json``), a valid draft 2020-12 schema, and
tells a captured document, a policy and a mistyped field apart."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from stockade.appraisal.policy_schema import policy_schema

DOCS = Path(__file__).resolve().parents[2] / "docs" / "policy.schema.json"


def test_the_published_schema_is_current() -> None:
    assert json.loads(DOCS.read_text()) == policy_schema(), (
        "docs/policy.schema.json is stale: stockade policy schema > docs/policy.schema.json"
    )


def test_the_schema_is_valid_and_checks_documents() -> None:
    schema = policy_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    policy = {
        "id": "production",
        "pcrs": "sha256:0,1,2,3,4,5,6,7,8,9,12",
        "result_validity_seconds": 120,
        "releases": {
            "signer": "keys/org.pub",
            "min_security_version": 3,
            "manifests": ["releases/1.0.0.dsse.json"],
        },
        "platforms": ["platforms/dev.json"],
        "enforce": {"release": "enforce"},
    }
    validator.validate(policy)
    validator.validate({"kind": "captured", "id": "golden", "bank": "sha256", "pcrs": {}})
    for broken in (
        {**policy, "enforce": {"release": "maybe"}},
        {**policy, "releases": {**policy["releases"], "min_security_version": -1}},
        {**policy, "relases": {}},
        {k: v for k, v in policy.items() if k != "platforms"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(broken)
