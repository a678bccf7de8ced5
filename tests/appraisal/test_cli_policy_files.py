"""`stockade policy new|validate|add-release|diff|schema` as subprocesses, offline, on the
appraisal world's org key, platform reference and signed releases laid out as an operator
keeps them (keys/, platforms/, releases/, policies/): a policy names them by path relative
to itself (the documented form, which `apply` and `validate` read in wherever they run
from); `validate` exits 1 naming the first bad field; `add-release` refuses a release
signed by another key or below the minimum security version and leaves the file as it
was; `diff` shows releases, reference PCR values and rules changed, as text and JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from appraisal_support import World

from stockade.appraisal.policy_schema import policy_schema
from stockade.release.keys import load_signing_key
from stockade.release.manifest import sign_manifest
from support.cli import one_error_line, run_stockade

pytestmark = pytest.mark.tools


@pytest.fixture
def repo(world: World, tmp_path: Path) -> Path:
    """The files a policy is made of, in an operator's repository."""
    for directory in ("keys", "platforms", "releases", "policies"):
        (tmp_path / directory).mkdir()
    shutil.copy(world.keys.paths.org_pub, tmp_path / "keys" / "org.pub")
    (tmp_path / "platforms" / "dev.json").write_text(json.dumps(world.platform_document))
    for release in (world.current, world.old):
        path = tmp_path / "releases" / f"{release.manifest.version}.dsse.json"
        path.write_text(json.dumps(release.envelope.to_json()))
    rogue = load_signing_key(world.rogue_keys.paths.org_key.read_bytes())
    (tmp_path / "releases" / "rogue.dsse.json").write_text(
        json.dumps(sign_manifest(world.current.manifest, [rogue]).to_json())
    )
    return tmp_path


def _new(
    repo: Path, out: Path, *extra: object, policy_id: str = "production", release: str = "1.0.0"
) -> None:
    made = run_stockade(
        "policy", "new", "--id", policy_id, "--signer", repo / "keys" / "org.pub",
        "--platform", repo / "platforms" / "dev.json",
        "--release", repo / "releases" / f"{release}.dsse.json", "--out", out, *extra,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr


def test_new_names_files_by_path_and_validate_reads_them_from_anywhere(repo: Path) -> None:
    out = repo / "policies" / "production.yaml"
    _new(repo, out)
    document = yaml.safe_load(out.read_text())
    assert document["releases"] == {
        "signer": "../keys/org.pub",
        "min_security_version": 3,
        "manifests": ["../releases/1.0.0.dsse.json"],
    }
    assert document["platforms"] == ["../platforms/dev.json"]
    assert len(out.read_bytes()) < 1000  # not 10 KB of pasted keys and envelopes
    checked = run_stockade("policy", "validate", out, cwd="/")
    assert checked.returncode == 0, checked.stderr
    assert "policy production is valid (1 releases: stockade-os 1.0.0" in checked.stdout
    # An existing --out is kept.
    again = run_stockade(
        "policy", "new", "--id", "production", "--signer", repo / "keys" / "org.pub",
        "--platform", repo / "platforms" / "dev.json",
        "--release", repo / "releases" / "1.0.0.dsse.json", "--out", out,
    )  # fmt: skip
    assert "exists; pass --force" in one_error_line(again, 2)


def test_new_keeps_symbolic_links_as_named(repo: Path) -> None:
    # releases/current -> 1.0.0.dsse.json: the policy keeps following the link, as named.
    (repo / "releases" / "current.dsse.json").symlink_to("1.0.0.dsse.json")
    out = repo / "policies" / "linked.yaml"
    _new(repo, out, policy_id="linked", release="current")
    document = yaml.safe_load(out.read_text())
    assert document["releases"]["manifests"] == ["../releases/current.dsse.json"]
    assert run_stockade("policy", "validate", out, cwd="/").returncode == 0
    # ``..`` through a linked directory would lead elsewhere: then the resolved path.
    (repo / "elsewhere" / "deeper").mkdir(parents=True)
    (repo / "linkdir").symlink_to(repo / "elsewhere" / "deeper")
    deep = repo / "linkdir" / "deep.yaml"
    _new(repo, deep, policy_id="deep")
    manifests = yaml.safe_load(deep.read_text())["releases"]["manifests"]
    assert manifests == ["../../releases/1.0.0.dsse.json"]
    assert run_stockade("policy", "validate", deep, cwd="/").returncode == 0


def test_new_with_embed_copies_the_files_in(repo: Path) -> None:
    out = repo / "embedded.yaml"
    _new(repo, out, "--embed")
    document = yaml.safe_load(out.read_text())
    assert document["releases"]["signer"].startswith("-----BEGIN PUBLIC KEY-----")
    assert document["releases"]["manifests"][0]["payloadType"]
    assert run_stockade("policy", "validate", out).returncode == 0


def test_new_refuses_a_release_the_signer_did_not_sign(repo: Path) -> None:
    out = repo / "policies" / "p.yaml"
    made = run_stockade(
        "policy", "new", "--id", "p", "--signer", repo / "keys" / "org.pub",
        "--platform", repo / "platforms" / "dev.json",
        "--release", repo / "releases" / "rogue.dsse.json", "--out", out,
    )  # fmt: skip
    assert "rogue.dsse.json' refused" in one_error_line(made, 1)
    assert not out.exists()


def test_the_documented_by_path_form_hand_written(repo: Path) -> None:
    policy = repo / "policies" / "hand.yaml"
    policy.write_text(
        "id: hand\n"
        "pcrs: sha256:0,1,2,3,4,5,6,7,8,9,12\n"
        "result_validity_seconds: 120\n"
        "releases:\n"
        "  signers: [../keys/org.pub]\n"
        "  min_security_version: 2\n"
        "  manifests: [../releases/1.0.0.dsse.json, ../releases/0.9.0.dsse.json]\n"
        "platforms: [../platforms/dev.json]\n"
    )
    checked = run_stockade("policy", "validate", policy, "--format", "json", cwd=repo)
    assert checked.returncode == 0, checked.stderr
    answer = json.loads(checked.stdout)
    assert answer["valid"] is True
    assert answer["releases"] == ["stockade-os 1.0.0", "stockade-os 0.9.0"]


@pytest.mark.parametrize(
    ("manifest", "field", "detail"),
    [
        ("../releases/rogue.dsse.json", "releases.manifests[0]", "valid signature"),
        ("../releases/0.9.0.dsse.json", "releases.manifests[0]", "security"),
        ("../releases/missing.dsse.json", "releases.manifests[0]", "cannot read"),
        ("../keys/org.pub", "releases.manifests[0]", "is not JSON"),
    ],
)
def test_validate_names_the_first_bad_field(
    repo: Path, manifest: str, field: str, detail: str
) -> None:
    policy = repo / "policies" / "bad.yaml"
    policy.write_text(
        "id: bad\npcrs: sha256:0,1,2,3,4,5,6,7,8,9,12\nresult_validity_seconds: 120\n"
        f"releases: {{signer: ../keys/org.pub, min_security_version: 3, manifests: [{manifest}]}}\n"
        "platforms: [../platforms/dev.json]\n"
    )
    message = one_error_line(run_stockade("policy", "validate", policy), 1)
    assert message.startswith(f"stockade: {field}: "), message
    assert detail in message


def test_add_release_refuses_another_signer_and_a_rollback(repo: Path) -> None:
    out = repo / "policies" / "production.yaml"
    _new(repo, out)
    before = out.read_bytes()
    rogue = run_stockade("policy", "add-release", out, repo / "releases" / "rogue.dsse.json")
    assert "valid signature" in one_error_line(rogue, 1)
    old = run_stockade("policy", "add-release", out, repo / "releases" / "0.9.0.dsse.json")
    assert "security" in one_error_line(old, 1)
    assert out.read_bytes() == before


def test_add_release_then_diff(repo: Path) -> None:
    old = repo / "policies" / "v1.yaml"
    _new(repo, old, "--min-security-version", "2")
    new = repo / "policies" / "v2.yaml"
    shutil.copy(old, new)
    added = run_stockade("policy", "add-release", new, repo / "releases" / "0.9.0.dsse.json")
    assert added.returncode == 0, added.stderr
    assert "release stockade-os 0.9.0 (security version 2) added" in added.stdout
    assert yaml.safe_load(new.read_text())["releases"]["manifests"] == [
        "../releases/1.0.0.dsse.json",
        "../releases/0.9.0.dsse.json",
    ]
    same = run_stockade("policy", "add-release", new, repo / "releases" / "0.9.0.dsse.json")
    assert "already in" in same.stdout
    document = yaml.safe_load(new.read_text())
    document["enforce"] = {"secure_boot": "warn"}
    new.write_text(yaml.safe_dump(document))
    text = run_stockade("policy", "diff", old, new)
    assert text.returncode == 0, text.stderr
    assert "+ release stockade-os 0.9.0 (security version 2" in text.stdout
    assert "+ reference stockade-os 0.9.0 on platform 0" in text.stdout
    assert "~ enforce.secure_boot: (unset) -> warn" in text.stdout
    as_json = json.loads(run_stockade("policy", "diff", old, new, "--format", "json").stdout)
    assert [r["version"] for r in as_json["releases_added"]] == ["0.9.0"]
    assert as_json["releases_removed"] == []
    assert as_json["pcr_references_changed"] == []
    assert as_json["rules_changed"] == [
        {"field": "enforce.secure_boot", "from": None, "to": "warn"}
    ]
    unchanged = run_stockade("policy", "diff", old, old)
    assert "no change" in unchanged.stdout


def test_diff_shows_reference_pcrs_that_change_with_the_platform(repo: Path, world: World) -> None:
    old = repo / "policies" / "v1.yaml"
    _new(repo, old)
    platform = dict(world.platform_document)
    platform["crtm_version"] = "Stockade dev firmware 2.0"
    (repo / "platforms" / "dev2.json").write_text(json.dumps(platform))
    new = repo / "policies" / "v2.yaml"
    document = yaml.safe_load(old.read_text())
    document["platforms"] = ["../platforms/dev2.json"]
    new.write_text(yaml.safe_dump(document))
    changes = json.loads(run_stockade("policy", "diff", old, new, "--format", "json").stdout)
    assert len(changes["platforms_added"]) == len(changes["platforms_removed"]) == 1
    changed_pcrs = {c["pcr"] for c in changes["pcr_references_changed"]}
    assert 0 in changed_pcrs  # the CRTM version is measured into PCR 0
    assert 12 not in changed_pcrs  # the release did not change


def test_schema_is_published_and_accepts_the_by_path_form(repo: Path) -> None:
    import jsonschema

    printed = run_stockade("policy", "schema")
    assert printed.returncode == 0, printed.stderr
    schema = json.loads(printed.stdout)
    assert schema == policy_schema()
    out = repo / "policies" / "production.yaml"
    _new(repo, out)
    jsonschema.Draft202012Validator(schema).validate(yaml.safe_load(out.read_text()))


def test_new_by_signer_alone_lists_no_release(repo: Path) -> None:
    out = repo / "policies" / "signed.yaml"
    base = (
        "policy", "new", "--id", "signed", "--signer", repo / "keys" / "org.pub",
        "--platform", repo / "platforms" / "dev.json", "--out", out,
    )  # fmt: skip
    # Without a floor, "any release this key signs" would take back every rollback.
    refused = run_stockade(*base)
    assert "needs --min-security-version" in one_error_line(refused, 2)
    assert not out.exists()
    made = run_stockade(*base, "--min-security-version", "4")
    assert made.returncode == 0, made.stderr
    document = yaml.safe_load(out.read_text())
    assert document["releases"] == {"signer": "../keys/org.pub", "min_security_version": 4}
    checked = run_stockade("policy", "validate", out)
    assert checked.returncode == 0, checked.stderr
