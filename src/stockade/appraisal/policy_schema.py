"""The JSON Schema of a policy document (``stockade policy schema``,
``docs/policy.schema.json``), for editors: completion and early errors while writing one.

It describes the document as an operator writes it, so the by-path forms the CLI resolves
(``stockade.cli.policy.resolve_paths``: a signer, DSSE envelope, platform reference or
captured policy named by a path relative to the policy file) are allowed where a value may
be. ``parse_policy`` stays the authority: the schema cannot check signatures, minimum
security versions, or which PCRs have reference values. Pure data.
"""

from __future__ import annotations

from typing import Any

SCHEMA_ID = "https://stockade.dev/schemas/policy.schema.json"
_SHA256_HEX = "^[0-9a-fA-F]{64}$"
_IMAGE_DIGEST = "^sha256:[0-9a-f]{64}$"
_ENFORCEMENT: dict[str, Any] = {"enum": ["enforce", "warn"]}


def _text(description: str) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "description": description}


def _list_of(item: dict[str, Any], description: str, *, non_empty: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "array", "items": item, "description": description}
    if non_empty:
        schema["minItems"] = 1
    return schema


_PEM_OR_PATH = _text("a PEM public key, or the path of one relative to the policy file")
_ENVELOPE = {
    "oneOf": [
        {
            "type": "object",
            "required": ["payload", "payloadType", "signatures"],
            "properties": {
                "payload": {"type": "string"},
                "payloadType": {"type": "string"},
                "signatures": {"type": "array", "minItems": 1},
            },
            "description": "a DSSE envelope (manifest.dsse.json of `stockade release build`)",
        },
        _text("a DSSE envelope as JSON text, or its path relative to the policy file"),
    ]
}
_RELEASES: dict[str, Any] = {
    "type": "object",
    "description": (
        "Signed releases accepted: each listed manifest must verify under a signer and be at "
        "or above min_security_version (a policy listing a rollback release is refused). "
        "Without manifests (platforms only), any release a signer signed at or above "
        "min_security_version, from the envelope a node sends with its evidence."
    ),
    "additionalProperties": False,
    "required": ["min_security_version"],
    "properties": {
        "signer": _PEM_OR_PATH,
        "signers": _list_of(_PEM_OR_PATH, "the org public keys", non_empty=True),
        "min_security_version": {"type": "integer", "minimum": 0},
        "manifests": _list_of(_ENVELOPE, "signed release manifests", non_empty=True),
    },
    "oneOf": [{"required": ["signer"]}, {"required": ["signers"]}],
}
_PLATFORM = {
    "oneOf": [
        {"type": "object", "description": "a platform.json reference (stockade boot init)"},
        _text("the path of a platform.json, relative to the policy file"),
    ]
}
_CAPTURED = {
    "oneOf": [
        {
            "type": "object",
            "required": ["kind"],
            "properties": {"kind": {"const": "captured"}},
            "description": "a captured policy (stockade policy capture / merge)",
        },
        _text("the path of a captured policy (YAML), relative to the policy file"),
    ]
}
_SECURE_BOOT: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "required": {"type": "boolean"},
        "db_must_contain": _list_of(
            {"type": "string", "pattern": _SHA256_HEX}, "sha256 of DER certificates"
        ),
        "dbx_must_contain": _list_of({"type": "string", "pattern": _SHA256_HEX}, "sha256 entries"),
    },
}
_EXECUTIONS: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "forbid": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "digests": _list_of({"type": "string", "pattern": _IMAGE_DIGEST}, "image digests"),
                "references": _list_of(_text("an image reference"), "image references"),
            },
        },
        "trust_policy": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "properties": {
                "min_serial": {"type": "integer", "minimum": 1},
                "digest": {"type": "string", "pattern": _IMAGE_DIGEST},
            },
        },
    },
}
_UKI: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "authenticode", "pcr11"],
    "properties": {
        "name": _text("the UKI's name"),
        "authenticode": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "pcr11": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    },
}


def policy_schema() -> dict[str, Any]:
    """The policy document's JSON Schema (draft 2020-12): a policy, or a captured policy
    applied as it is (``kind: captured``)."""
    policy: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"},
            "pcrs": {
                "type": "string",
                "pattern": r"^[a-z0-9]+:[0-9]+(,[0-9]+)*(\+[a-z0-9]+:[0-9]+(,[0-9]+)*)*$",
                "description": "quoted PCRs, e.g. sha256:0,1,2,3,4,5,6,7,8,9,12",
            },
            "result_validity_seconds": {"type": "integer", "minimum": 1},
            "releases": _RELEASES,
            "platforms": _list_of(_PLATFORM, "platform references", non_empty=True),
            "captured": _CAPTURED,
            "ukis": _list_of(_UKI, "UKI releases on a captured platform", non_empty=True),
            "secure_boot": _SECURE_BOOT,
            "executions": _EXECUTIONS,
            "enforce": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    name: _ENFORCEMENT for name in ("release", "secure_boot", "firmware", "clock")
                },
            },
        },
        "required": ["id", "result_validity_seconds"],
        "oneOf": [
            {"required": ["pcrs", "releases", "platforms"]},
            {
                "required": ["captured"],
                "not": {"required": ["platforms"]},
                # On a captured platform every accepted release is listed.
                "properties": {"releases": {"required": ["manifests"]}},
            },
        ],
    }
    captured_document: dict[str, Any] = {
        "type": "object",
        "required": ["kind", "id"],
        "properties": {"kind": {"const": "captured"}, "id": {"type": "string"}},
        "description": "a captured policy applied as it is (results valid 300 s)",
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "Stockade appraisal policy",
        "description": "docs/policies.md; docs/verifier-protocol.md, 'Policy document'",
        "$defs": {"policy": policy, "capturedDocument": captured_document},
        "oneOf": [{"$ref": "#/$defs/policy"}, {"$ref": "#/$defs/capturedDocument"}],
    }
