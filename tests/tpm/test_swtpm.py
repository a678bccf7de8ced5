"""swtpm instances against the real simulator, checked with tpm2-tools and cryptography."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from typer.testing import CliRunner

from stockade.cli.tpm import app
from stockade.errors import InputError, TpmUnavailable
from stockade.tpm import swtpm
from stockade.tpm.ekca import EkCa
from stockade.tpm.swtpm import (
    ECC_P256_EK_CERT_INDEX,
    ECC_P256_EK_HANDLE,
    RSA_EK_CERT_INDEX,
    RSA_EK_HANDLE,
    SoftwareTpm,
    known_swtpms,
    start_swtpm,
    stop_swtpm,
)
from support.cli import run_stockade

pytestmark = pytest.mark.swtpm

SYSTEM_LOCALCA = Path("/var/lib/swtpm-localca/issuercert.pem")


def tools(tpm: SoftwareTpm, *args: str) -> str:
    result = subprocess.run(
        [args[0], "-T", tpm.tcti, *args[1:]], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{' '.join(args)}: {result.stderr}"
    return result.stdout


def nv_certificate(tpm: SoftwareTpm, index: int, tmp_path: Path) -> x509.Certificate:
    out = tmp_path / f"{index:08x}.der"
    tools(tpm, "tpm2_nvread", f"{index:#010x}", "-o", str(out))
    return x509.load_der_x509_certificate(out.read_bytes())


def pcr(tpm: SoftwareTpm, selection: str, tmp_path: Path) -> bytes:
    out = tmp_path / "pcr.bin"
    tools(tpm, "tpm2_pcrread", selection, "-o", str(out))
    return out.read_bytes()


def clock_info(tpm: SoftwareTpm) -> dict[str, str]:
    return dict(
        re.findall(
            r"^\s*(reset_count|restart_count|safe): (\S+)", tools(tpm, "tpm2_readclock"), re.M
        )
    )


def ek_public_from_template(tpm: SoftwareTpm, algorithm: str, tmp_path: Path) -> bytes:
    """The EK tpm2_createek derives from the TCG default template, as PEM."""
    pem = tmp_path / f"ek-{algorithm}.pem"
    try:
        tools(
            tpm,
            "tpm2_createek",
            "-G",
            algorithm,
            "-c",
            str(tmp_path / "ek.ctx"),
            "-f",
            "pem",
            "-u",
            str(pem),
        )
    finally:
        tools(tpm, "tpm2_flushcontext", "-t")  # no resource manager behind the swtpm TCTI
    return pem.read_bytes()


def spki(key: object) -> bytes:
    assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def port_is_free(port: int) -> bool:
    """No socket listens on ``port`` (a TIME_WAIT left by a closed connection is fine)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((swtpm.HOST, port))
        except OSError:
            return False
        return True


def process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"  # a daemon re-parented to an init that reaps late


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not process_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_started_tpm_answers_on_its_tcti(software_tpm: SoftwareTpm) -> None:
    assert software_tpm.tcti == f"swtpm:host=127.0.0.1,port={software_tpm.server_port}"
    assert software_tpm.ctrl_port == software_tpm.server_port + 1
    random = tools(software_tpm, "tpm2_getrandom", "--hex", "16")
    assert re.fullmatch(r"[0-9a-f]{32}", random)
    assert software_tpm.identity().manufacturer == "id:00001014"
    banks = tools(software_tpm, "tpm2_getcap", "pcrs")
    assert re.search(r"sha1: \[ 0, 1, 2", banks) and re.search(r"sha256: \[ 0, 1, 2", banks)


def test_both_ek_certificates_chain_to_our_ek_ca(
    software_tpm: SoftwareTpm, ek_ca: EkCa, tmp_path: Path
) -> None:
    root = ek_ca.root_certificate()
    (issuer,) = ek_ca.intermediates()
    assert ek_ca.trusted_roots() == [root]
    issuer.verify_directly_issued_by(root)
    root.verify_directly_issued_by(root)
    system_issuer = (
        x509.load_pem_x509_certificate(SYSTEM_LOCALCA.read_bytes())
        if SYSTEM_LOCALCA.exists()
        else None
    )
    for index, key_type, size in (
        (RSA_EK_CERT_INDEX, rsa.RSAPublicKey, 2048),
        (ECC_P256_EK_CERT_INDEX, ec.EllipticCurvePublicKey, 256),
    ):
        cert = nv_certificate(software_tpm, index, tmp_path)
        key = cert.public_key()
        assert isinstance(key, key_type)
        assert key.key_size == size
        assert cert.issuer == issuer.subject
        cert.verify_directly_issued_by(issuer)
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert x509.ObjectIdentifier("2.23.133.8.1") in eku  # tcg-kp-EKCertificate
        if system_issuer is not None:
            assert cert.issuer != system_issuer.subject


def test_ek_certificates_certify_the_tcg_default_template_eks(
    software_tpm: SoftwareTpm, tmp_path: Path
) -> None:
    for index, handle, algorithm in (
        (RSA_EK_CERT_INDEX, RSA_EK_HANDLE, "rsa"),  # template L-1
        (ECC_P256_EK_CERT_INDEX, ECC_P256_EK_HANDLE, "ecc"),  # template L-2
    ):
        certified = spki(nv_certificate(software_tpm, index, tmp_path).public_key())
        assert ek_public_from_template(software_tpm, algorithm, tmp_path) == certified
        persisted = tmp_path / f"{handle:x}.pem"
        tools(
            software_tpm, "tpm2_readpublic", "-c", f"{handle:#x}", "-f", "pem", "-o", str(persisted)
        )
        assert persisted.read_bytes() == certified


def test_tpm2_getekcertificate_finds_rsa_and_ecc(software_tpm: SoftwareTpm, tmp_path: Path) -> None:
    rsa_out, ecc_out = tmp_path / "rsa.der", tmp_path / "ecc.der"
    tools(software_tpm, "tpm2_getekcertificate", "-o", str(rsa_out), "-o", str(ecc_out))
    assert isinstance(
        x509.load_der_x509_certificate(rsa_out.read_bytes()).public_key(), rsa.RSAPublicKey
    )
    ecc_key = x509.load_der_x509_certificate(ecc_out.read_bytes()).public_key()
    assert isinstance(ecc_key, ec.EllipticCurvePublicKey)
    assert ecc_key.curve.name == "secp256r1"


def test_power_cycle_clears_pcrs_and_counts_a_reset(
    software_tpm: SoftwareTpm, tmp_path: Path
) -> None:
    zero = bytes(32)
    tools(software_tpm, "tpm2_pcrextend", "16:sha256=" + "ab" * 32)
    assert pcr(software_tpm, "sha256:16", tmp_path) != zero
    before = clock_info(software_tpm)

    software_tpm.power_cycle()

    assert pcr(software_tpm, "sha256:16", tmp_path) == zero
    after = clock_info(software_tpm)
    assert int(after["reset_count"]) == int(before["reset_count"]) + 1
    assert after["restart_count"] == before["restart_count"]
    assert after["safe"] == "yes"  # orderly: TPM2_Shutdown went first


def test_power_loss_is_not_orderly(software_tpm: SoftwareTpm) -> None:
    before = clock_info(software_tpm)
    software_tpm.power_cycle(orderly=False)
    after = clock_info(software_tpm)
    assert int(after["reset_count"]) == int(before["reset_count"]) + 1
    assert after["safe"] == "no"


def test_startup_locality_3_sets_pcr0_initial_value(
    software_tpm: SoftwareTpm, tmp_path: Path
) -> None:
    software_tpm.power_cycle(startup_locality=3)
    assert pcr(software_tpm, "sha256:0", tmp_path) == bytes(31) + b"\x03"
    software_tpm.power_cycle()
    assert pcr(software_tpm, "sha256:0", tmp_path) == bytes(32)


def test_power_cycle_without_startup_leaves_the_tpm_waiting(software_tpm: SoftwareTpm) -> None:
    software_tpm.power_cycle(startup=False)
    refused = subprocess.run(
        ["tpm2_getrandom", "-T", software_tpm.tcti, "--hex", "4"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode != 0
    assert "TPM2_Startup" in refused.stderr
    software_tpm.startup()
    tools(software_tpm, "tpm2_getrandom", "--hex", "4")


def test_stop_reaps_the_process_and_frees_both_ports(
    stockade_home: Path, ek_ca: EkCa, swtpm_template: Path
) -> None:
    tpm = start_swtpm("stop-reaps", stockade_home, ek_ca, template=swtpm_template)
    assert not port_is_free(tpm.server_port) and not port_is_free(tpm.ctrl_port)
    tpm.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(tpm.pid, 0)  # waited for, so not even a zombie
    assert port_is_free(tpm.server_port) and port_is_free(tpm.ctrl_port)
    assert not tpm.is_running()
    tpm.stop()  # idempotent


def test_context_manager_reaps_when_the_body_raises(
    stockade_home: Path, ek_ca: EkCa, swtpm_template: Path
) -> None:
    pids = []
    with (
        pytest.raises(RuntimeError, match="test body failed"),
        start_swtpm("raises", stockade_home, ek_ca, template=swtpm_template) as tpm,
    ):
        pids.append(tpm.pid)
        tools(tpm, "tpm2_getrandom", "--hex", "4")
        raise RuntimeError("test body failed")
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)


def test_two_instances_are_isolated(
    software_tpm: SoftwareTpm,
    stockade_home: Path,
    ek_ca: EkCa,
    swtpm_template: Path,
    tmp_path: Path,
) -> None:
    with start_swtpm("second", stockade_home, ek_ca, template=swtpm_template) as other:
        assert {other.server_port, other.ctrl_port}.isdisjoint(
            {software_tpm.server_port, software_tpm.ctrl_port}
        )
        assert other.state_dir != software_tpm.state_dir
        tools(other, "tpm2_pcrextend", "16:sha256=" + "cd" * 32)
        assert pcr(other, "sha256:16", tmp_path) != bytes(32)
        assert pcr(software_tpm, "sha256:16", tmp_path) == bytes(32)


def test_fresh_provisioning_gives_each_tpm_its_own_endorsement(
    make_software_tpm: object, ek_ca: EkCa, tmp_path: Path
) -> None:
    assert callable(make_software_tpm)
    first, second = make_software_tpm(), make_software_tpm()
    certs = [nv_certificate(tpm, ECC_P256_EK_CERT_INDEX, tmp_path) for tpm in (first, second)]
    assert spki(certs[0].public_key()) != spki(certs[1].public_key())
    assert certs[0].serial_number != certs[1].serial_number
    for cert in certs:
        cert.verify_directly_issued_by(ek_ca.issuer_certificate())


def test_a_port_race_is_retried(
    monkeypatch: pytest.MonkeyPatch, stockade_home: Path, ek_ca: EkCa, swtpm_template: Path
) -> None:
    with socket.socket() as squatter:
        squatter.bind((swtpm.HOST, 0))
        squatter.listen()
        taken = squatter.getsockname()[1] - 1  # the ctrl port P + 1 is taken
        real = swtpm._free_port_pair
        offered = [real(), taken]

        def pick() -> int:
            return offered.pop() if offered else real()

        monkeypatch.setattr(swtpm, "_free_port_pair", pick)
        with start_swtpm("port-race", stockade_home, ek_ca, template=swtpm_template) as tpm:
            assert not offered  # the taken pair was tried, then another
            assert tpm.server_port != taken
            assert "Address already in use" in tpm.log_path.read_text()
            tools(tpm, "tpm2_getrandom", "--hex", "4")


def test_unstartable_state_raises_tpm_unavailable_with_the_log(
    stockade_home: Path, ek_ca: EkCa
) -> None:
    state = stockade_home / "tpms" / "corrupt" / "state"
    state.mkdir(parents=True)
    (state / swtpm.STATE_FILE).write_bytes(b"not a TPM state" * 64)
    with pytest.raises(TpmUnavailable, match="libtpms"):
        start_swtpm("corrupt", stockade_home, ek_ca)
    assert all(tpm.name != "corrupt" or not tpm.is_running() for tpm in known_swtpms(stockade_home))


@pytest.mark.parametrize("name", ["", "../escape", ".hidden", "a/b", "x" * 64, "sp ace"])
def test_bad_names_are_input_errors(name: str, stockade_home: Path) -> None:
    with pytest.raises(InputError, match="invalid TPM name"):
        start_swtpm(name, stockade_home)
    assert not (stockade_home / "escape").exists()


def test_ek_ca_files_and_swtpm_config(ek_ca: EkCa) -> None:
    assert stat.S_IMODE(ek_ca.issuer_key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(ek_ca.root_key_path.stat().st_mode) == 0o600
    root, issuer = ek_ca.root_certificate(), ek_ca.issuer_certificate()
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    setup_conf = ek_ca.swtpm_setup_config_path.read_text()
    assert f"create_certs_tool_config = {ek_ca.localca_config_path}" in setup_conf
    localca_conf = ek_ca.localca_config_path.read_text()
    assert f"signingkey = {ek_ca.issuer_key_path}" in localca_conf
    assert "/var/lib/swtpm-localca" not in setup_conf + localca_conf
    again = EkCa.load_or_create(ek_ca.directory)
    assert again.root_certificate() == root  # loaded, not re-created


def test_cli_start_list_stop_round_trip(stockade_home: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    home = ["--home", str(stockade_home)]

    started = runner.invoke(app, ["start", "cli-node", *home, "--format", "json"])
    assert started.exit_code == 0, started.output
    info = json.loads(started.stdout)
    tpm = next(t for t in known_swtpms(stockade_home) if t.name == "cli-node")
    try:
        assert info["tcti"] == tpm.tcti and info["pid"] == tpm.pid
        assert tpm.detached and tpm.is_running()
        tools(tpm, "tpm2_getrandom", "--hex", "4")
        first_cert = nv_certificate(tpm, RSA_EK_CERT_INDEX, tmp_path)

        listed = json.loads(runner.invoke(app, ["list", *home, "--format", "json"]).stdout)
        (entry,) = [t for t in listed["tpms"] if t["name"] == "cli-node"]
        assert entry["running"] is True and entry["pid"] == info["pid"]

        again = runner.invoke(app, ["start", "cli-node", *home])
        assert isinstance(again.exception, InputError)
    finally:
        stopped = runner.invoke(app, ["stop", "cli-node", *home, "--format", "json"])
    assert json.loads(stopped.stdout) == {"name": "cli-node", "was_running": True}
    assert wait_gone(info["pid"])
    assert port_is_free(info["server_port"])

    listed = json.loads(runner.invoke(app, ["list", *home, "--format", "json"]).stdout)
    (entry,) = [t for t in listed["tpms"] if t["name"] == "cli-node"]
    assert entry["running"] is False and entry["pid"] is None

    # A restart keeps the TPM's state: the same endorsement.
    restarted = json.loads(
        runner.invoke(app, ["start", "cli-node", *home, "--format", "json"]).stdout
    )
    tpm = next(t for t in known_swtpms(stockade_home) if t.name == "cli-node")
    try:
        assert nv_certificate(tpm, RSA_EK_CERT_INDEX, tmp_path) == first_cert
    finally:
        assert stop_swtpm("cli-node", stockade_home)
    assert wait_gone(restarted["pid"])


def test_a_killed_swtpm_is_listed_as_stopped(
    stockade_home: Path, ek_ca: EkCa, swtpm_template: Path
) -> None:
    tpm = start_swtpm("killed", stockade_home, ek_ca, detach=True, template=swtpm_template)
    os.kill(tpm.pid, signal.SIGKILL)
    assert wait_gone(tpm.pid)
    (record,) = [t for t in known_swtpms(stockade_home) if t.name == "killed"]
    assert not record.is_running()
    text = CliRunner().invoke(app, ["list", "--home", str(stockade_home)]).stdout
    assert re.search(r"^killed\s+stopped$", text, re.M)
    assert stop_swtpm("killed", stockade_home) is False


def test_cli_rejects_a_bad_name(stockade_home: Path) -> None:
    result = CliRunner().invoke(app, ["stop", "../etc", "--home", str(stockade_home)])
    assert isinstance(result.exception, InputError)


def test_console_script_lists_as_json(stockade_home: Path) -> None:
    result = run_stockade("tpm", "list", "--home", stockade_home, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert isinstance(json.loads(result.stdout)["tpms"], list)
    bad = run_stockade("tpm", "stop", "no/such")
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "invalid TPM name" in bad.stderr


FAILING_TESTS = """
import os

import pytest

from stockade.tpm.swtpm import start_swtpm


@pytest.fixture
def pid_log():
    with open(os.environ["PID_LOG"], "a") as log:
        yield log


def test_fails_with_a_fixture_tpm(software_tpm, pid_log):
    pid_log.write(f"{software_tpm.pid} ")
    raise AssertionError("deliberately failing")


@pytest.mark.swtpm  # it starts a program: tests/conftest.py refuses that to unmarked tests
def test_fails_leaving_a_detached_tpm(stockade_home, pid_log):
    tpm = start_swtpm("left-running", stockade_home, detach=True)
    pid_log.write(f"{tpm.pid} ")
    raise AssertionError("deliberately failing")
"""


def test_failing_tests_leave_no_swtpm_behind(tmp_path: Path) -> None:
    """Run two failing tests in a child pytest; every swtpm they started must be gone."""
    pids = tmp_path / "pids"
    (tmp_path / "test_failing.py").write_text(FAILING_TESTS)
    tests_dir = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-q", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(tmp_path / "test_failing.py")],
        env={**os.environ, "PYTHONPATH": str(tests_dir), "PID_LOG": str(pids)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 failed" in result.stdout
    started = [int(pid) for pid in pids.read_text().split()]
    assert len(started) == 2
    assert all(wait_gone(pid) for pid in started)
