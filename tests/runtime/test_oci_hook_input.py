"""The hook's input handling without a runtime: settings, the OCI state and config.json, image
identity from annotations, the fail-closed entry point and the tiny socket client."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from stockade.agent.hook_client import FALLBACK_CLIENT
from stockade.agent.oci_hook import (
    ANNOTATION_LAYOUT,
    ANNOTATION_REFERENCE,
    ANNOTATION_TAG,
    HookRefused,
    HookSettings,
    image_identity,
    oci_hook_entry,
    parse_settings,
    read_request,
    run_hook,
)


def _bundle(tmp_path: Path, config: dict) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def _state(bundle: Path, **extra) -> bytes:
    return json.dumps({"ociVersion": "1.0.2", "id": "c1", "bundle": str(bundle), **extra}).encode()


IMAGE_NOTES = {
    ANNOTATION_LAYOUT: "/var/lib/images/layout",
    ANNOTATION_TAG: "v1",
    ANNOTATION_REFERENCE: "registry.example/app:1",
}


def test_settings_from_args_then_env_then_defaults():
    settings = parse_settings(
        ["--tcti", "swtpm:port=1", "--org-key", "/a.pub", "--org-key=/b.pub", "--log", "/l"],
        {"STOCKADE_TRUST_POLICY": "/p.json", "STOCKADE_TCTI": "ignored"},
    )
    assert settings.tcti == "swtpm:port=1"
    assert settings.org_keys == (Path("/a.pub"), Path("/b.pub"))
    assert settings.policy_path == Path("/p.json")
    assert settings.log_path == Path("/l")
    assert parse_settings(settings.to_args(), {}) == settings
    assert parse_settings([], {}) == HookSettings()
    assert parse_settings([], {"STOCKADE_ORG_KEYS": "/x:/y"}).org_keys == (Path("/x"), Path("/y"))


@pytest.mark.parametrize("argv", [["--bogus", "1"], ["--tcti"]])
def test_bad_hook_arguments_refuse(argv):
    with pytest.raises(HookRefused):
        parse_settings(argv, {})


def test_request_reads_args_env_names_and_mounts(tmp_path):
    bundle = _bundle(
        tmp_path,
        {
            "process": {"args": ["/app", "--x"], "env": ["PATH=/bin", "SECRET=hunter2", "EMPTY"]},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "annotations": IMAGE_NOTES,
        },
    )
    request = read_request(_state(bundle, annotations={ANNOTATION_TAG: "v1"}))
    assert request.container_id == "c1"
    assert request.args == ("/app", "--x")
    assert request.env_names == ("PATH", "SECRET", "EMPTY")
    assert "hunter2" not in repr(request)
    assert request.mounts == (("/proc", "proc", "proc", ()),)
    identity = image_identity(request, HookSettings())
    assert (str(identity.layout), identity.tag, identity.reference) == (
        "/var/lib/images/layout",
        "v1",
        "registry.example/app:1",
    )


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"bundle": "/x"}', "no id"),
        (b'{"id": "c1", "bundle": "relative"}', "absolute bundle"),
        (b'{"id": "c1", "bundle": "/nonexistent-bundle"}', "cannot read"),
    ],
)
def test_unreadable_state_refuses(state, message):
    with pytest.raises(HookRefused, match=message):
        read_request(state)


def test_state_and_config_annotations_must_agree(tmp_path):
    bundle = _bundle(tmp_path, {"process": {"args": ["/a"]}, "annotations": IMAGE_NOTES})
    with pytest.raises(HookRefused, match="differs"):
        read_request(_state(bundle, annotations={ANNOTATION_TAG: "v2"}))


def test_missing_annotations_are_named(tmp_path):
    bundle = _bundle(tmp_path, {"process": {"args": ["/a"]}, "annotations": {}})
    request = read_request(_state(bundle))
    with pytest.raises(HookRefused, match=ANNOTATION_REFERENCE):
        image_identity(request, HookSettings())


def test_cri_image_name_with_a_layout_cache(tmp_path):
    notes = {"io.kubernetes.cri.image-name": "registry.example/app:1"}
    bundle = _bundle(tmp_path, {"process": {"args": ["/a"]}, "annotations": notes})
    request = read_request(_state(bundle))
    with pytest.raises(HookRefused):
        image_identity(request, HookSettings())
    identity = image_identity(request, HookSettings(layout_cache=Path("/var/cache/images")))
    assert identity.layout == Path("/var/cache/images")
    assert identity.tag == identity.reference == "registry.example/app:1"


def test_run_hook_never_raises_and_prints_one_line(tmp_path):
    code, line = run_hook([], io.BytesIO(b"\xff garbage"), {})
    assert code == 1
    assert line.startswith("refused") and "\n" not in line
    bundle = _bundle(tmp_path, {"process": {"args": ["/a"]}, "annotations": IMAGE_NOTES})
    policy = tmp_path / "missing-policy.json"
    code, line = run_hook(["--policy", str(policy)], io.BytesIO(_state(bundle)), {})
    assert code == 1
    assert "trust policy" in line and "c1" in line


def _client(sock: Path, state: bytes = b"{}") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", "-S", str(FALLBACK_CLIENT), str(sock)],
        input=state.decode(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _one_answer_server(sock: Path, answer: bytes) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock))
    server.listen(1)
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(65536):
                received.append(chunk)
            conn.sendall(answer)
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    thread.received = received  # type: ignore[attr-defined]
    return thread


@pytest.mark.parametrize(
    ("answer", "code", "stderr"),
    [
        (b"OK 3\n", 0, ""),
        (b"ERR refused container c1: image unsigned check failed: no signature\n", 1, "unsigned"),
        (b"OK\n", 1, "answered"),
        (b"", 1, "answered"),
        (b"MAYBE\n", 1, "answered"),
    ],
)
def test_tiny_client_exits_zero_only_on_ok(tmp_path, answer, code, stderr):
    sock = tmp_path / "hook.sock"
    thread = _one_answer_server(sock, answer)
    result = _client(sock, b'{"id": "c1"}')
    thread.join(5)
    assert result.returncode == code
    assert stderr in result.stderr
    assert result.stderr.count("\n") <= 1
    assert b"".join(thread.received) == b'{"id": "c1"}'  # type: ignore[attr-defined]


def test_tiny_client_refuses_without_server(tmp_path):
    result = _client(tmp_path / "absent.sock")
    assert result.returncode == 1
    assert "cannot be reached" in result.stderr


def test_hook_entries():
    direct = oci_hook_entry(HookSettings(), Path("/usr/bin/stockade-oci-hook"), Path("/py"))
    assert direct["path"] == "/usr/bin/stockade-oci-hook"
    assert direct["args"][0] == "stockade-oci-hook"
    fast = oci_hook_entry(HookSettings(agent_socket=Path("/run/s.sock")), Path("/h"), Path("/py"))
    assert fast["args"][-1] == "/run/s.sock"
    # The installed C client where there is a safe one, else the Python client file.
    assert fast["args"] == [fast["path"], "/run/s.sock"] or fast["args"] == [
        "/py",
        "-I",
        "-S",
        str(FALLBACK_CLIENT),
        "/run/s.sock",
    ]
