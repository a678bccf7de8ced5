"""`stockade policy apply --dry-run`, `apply`, and `diff` against a stored ID@VERSION, as
subprocesses against a real `stockade verifier serve` over TLS started with `--policy` a
file in the documented by-path form (org key, platform and envelope named relative to it).

Three enrolled nodes are put straight into the verifier's database (enrolling through
agents is tested elsewhere): one whose latest result stored the quoted PCRs of a real boot
of release 1.0.0 (affirming), one of the rollback release 0.9.0 (contraindicated), and one
without a result. A candidate accepting only 0.9.0 would make the first contraindicated and
the second affirming, and says it cannot tell for the third; nothing is stored. A dry run
needs the operator credential: a reader's is refused.
"""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from appraisal_support import Boots, World
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from stockade.verifier.models import Node, Result
from support.cli import run_stockade
from support.verifier_serve import ServedVerifier, ek_ca_files

pytestmark = pytest.mark.tools

POLICY = """\
id: production
pcrs: sha256:0,1,2,3,4,5,6,7,8,9,12
result_validity_seconds: 120
releases:
  signer: ../keys/org.pub
  min_security_version: {minimum}
  manifests: [{manifests}]
platforms: [../platforms/dev.json]
"""


@pytest.fixture
def repo(world: World, tmp_path: Path) -> Path:
    for directory in ("keys", "platforms", "releases", "policies"):
        (tmp_path / directory).mkdir()
    shutil.copy(world.keys.paths.org_pub, tmp_path / "keys" / "org.pub")
    (tmp_path / "platforms" / "dev.json").write_text(json.dumps(world.platform_document))
    for release in (world.current, world.old):
        path = tmp_path / "releases" / f"{release.manifest.version}.dsse.json"
        path.write_text(json.dumps(release.envelope.to_json()))
    (tmp_path / "policies" / "v1.yaml").write_text(
        POLICY.format(minimum=3, manifests="../releases/1.0.0.dsse.json")
    )
    (tmp_path / "policies" / "old-only.yaml").write_text(
        POLICY.format(minimum=2, manifests="../releases/0.9.0.dsse.json")
    )
    return tmp_path


def _add_nodes(database: Path, boots: Boots) -> None:
    now = datetime.now(UTC)
    engine = create_engine(f"sqlite:///{database}")
    with Session(engine) as session, session.begin():
        for name, captured, status in (
            ("node-good", boots.good, "affirming"),
            ("node-rollback", boots.rollback, "contraindicated"),
            ("node-new", None, None),
        ):
            node_id = str(uuid.uuid4())
            result_id = str(uuid.uuid4()) if captured is not None else None
            session.add(
                Node(
                    id=node_id, name=name, ek_fingerprint=uuid.uuid4().hex * 2,
                    ek_public=b"", ek_certificate=b"", ak_public=b"",
                    state="trusted" if status == "affirming" else "enrolled",
                    revoked=False, allowed=True, latest_result_id=result_id,
                    created_at=now, updated_at=now,
                )
            )  # fmt: skip
            session.flush()
            if captured is not None and status is not None and result_id is not None:
                session.add(
                    Result(
                        id=result_id, node_id=node_id, status=status, ear="-", reasons=[],
                        policy_ref="production@1", not_after=now + timedelta(minutes=2),
                        created_at=now, pcrs=captured.evidence.pcrs.to_json(),
                    )
                )  # fmt: skip
    engine.dispose()


def test_dry_run_apply_and_diff_against_the_verifier(
    repo: Path, boots: Boots, ek_ca: object, tmp_path: Path
) -> None:
    data_dir = tmp_path / "verifier"
    policies = repo / "policies"
    with ServedVerifier(data_dir, ek_ca_files(ek_ca), policy=policies / "v1.yaml") as verifier:
        _add_nodes(data_dir / "verifier.db", boots)
        at = ("--verifier", verifier.url, "--ca", str(verifier.ca))
        operator = (*at, "--token-file", str(data_dir / "operator-token"))
        reader = (*at, "--token-file", str(verifier.reader_token_file))

        dry = run_stockade("policy", "apply", "--dry-run", policies / "old-only.yaml", *operator)
        as_json = run_stockade(
            "policy", "apply", "--dry-run", policies / "old-only.yaml", *operator,
            "--format", "json",
        )  # fmt: skip
        refused = run_stockade("policy", "apply", "--dry-run", policies / "old-only.yaml", *reader)
        stored = run_stockade("policy", "list", *reader, "--format", "json")
        applied = run_stockade("policy", "apply", policies / "old-only.yaml", *operator)
        diff = run_stockade("policy", "diff", "production@1", "production@2", *reader)
        diff_file = run_stockade(
            "policy", "diff", "production@1", policies / "old-only.yaml", *reader,
            "--format", "json",
        )  # fmt: skip

    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[0] == (
        "dry run of production@2 (nothing stored): 2 of 3 enrolled nodes would change "
        "status, 1 cannot be told"
    )
    assert lines[1].startswith(
        "  node-good: affirming -> contraindicated: no accepted release matches; closest "
        "reference: stockade-os 0.9.0 on platform 0"
    )
    assert lines[2] == "  node-rollback: contraindicated -> affirming: matches stockade-os 0.9.0"
    assert lines[3] == "  node-new: unknown: no verified quote stored for this node"
    answer = json.loads(as_json.stdout)
    assert (answer["nodes"], answer["changed"], answer["unchanged"], answer["unknown"]) == (
        3, 2, 0, 1,
    )  # fmt: skip
    assert answer["stored"] is False
    assert {c["name"]: c["to"] for c in answer["changes"]} == {
        "node-good": "contraindicated",
        "node-rollback": "affirming",
    }

    assert refused.returncode == 2, refused.stderr
    assert "operator-role" in refused.stderr, refused.stderr

    # The dry run stored nothing: still one version, then apply stores the second.
    assert [(p["id"], p["version"]) for p in json.loads(stored.stdout)["policies"]] == [
        ("production", 1)
    ]
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip() == "policy production version 2"

    assert diff.returncode == 0, diff.stderr
    assert "production@1 -> production@2" in diff.stdout
    assert "+ release stockade-os 0.9.0 (security version 2" in diff.stdout
    assert "- release stockade-os 1.0.0 (security version 3" in diff.stdout
    assert "~ min_security_version: 3 -> 2" in diff.stdout
    assert diff_file.returncode == 0, diff_file.stderr
    changes = json.loads(diff_file.stdout)
    assert changes["from"] == "production@1"
    assert [r["version"] for r in changes["releases_removed"]] == ["1.0.0"]


def test_stored_document_is_the_files_read_in(repo: Path, ek_ca: object, tmp_path: Path) -> None:
    data_dir = tmp_path / "verifier"
    with ServedVerifier(
        data_dir, ek_ca_files(ek_ca), policy=repo / "policies" / "v1.yaml"
    ) as verifier:
        shown = run_stockade(
            "policy", "show", "production", "--verifier", verifier.url, "--ca", str(verifier.ca),
            "--token-file", str(verifier.reader_token_file), "--format", "json",
        )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    releases = json.loads(shown.stdout)["document"]["releases"]
    assert releases["signer"].startswith("-----BEGIN PUBLIC KEY-----")
    assert releases["manifests"][0]["payloadType"]
    assert yaml.safe_load((repo / "policies" / "v1.yaml").read_text())["releases"]["manifests"] == [
        "../releases/1.0.0.dsse.json"
    ]
