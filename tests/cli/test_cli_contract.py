"""The CLI contract: one-line errors, exit 2 for unreadable input or a missing TPM,
exit 1 for a failed verification, never a traceback."""

from __future__ import annotations

import pytest

from support.cli import one_error_line
from support.cli import run_stockade as stockade


@pytest.fixture
def quote_files(tmp_path):
    files = {name: tmp_path / name for name in ("ak", "msg", "sig", "pcrs")}
    for path in files.values():
        path.write_bytes(b"")
    return files


def verify_args(files, nonce="abcd", *extra):
    return (
        "quote", "verify", "--ak", str(files["ak"]), "--message", str(files["msg"]),
        "--signature", str(files["sig"]), "--pcrs", str(files["pcrs"]), "--nonce", nonce, *extra,
    )  # fmt: skip


def test_missing_file_exits_2(quote_files, tmp_path):
    files = {**quote_files, "ak": tmp_path / "absent.pub"}
    one_error_line(stockade(*verify_args(files)), 2)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00",
        b"\x00\x10garbage",
        b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----",
    ],
)
def test_malformed_ak_exits_2(quote_files, content):
    quote_files["ak"].write_bytes(content)
    one_error_line(stockade(*verify_args(quote_files)), 2)


def test_unknown_signature_algorithm_exits_2(quote_files, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    quote_files["ak"].write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    quote_files["sig"].write_bytes(bytes.fromhex("001a000b0000"))  # ECDAA: not accepted
    result = stockade(*verify_args(quote_files))
    one_error_line(result, 2)
    assert "0x001a" in result.stderr


def test_bad_nonce_and_selection_exit_2(quote_files):
    one_error_line(stockade(*verify_args(quote_files, "xyz")), 2)
    one_error_line(stockade(*verify_args(quote_files, "ab", "--pcr-selection", "md5:0")), 2)


def test_absent_tpm_exits_2(tmp_path):
    result = stockade(
        "tpm", "quote", "--tcti", "swtpm:host=127.0.0.1,port=1", "--pcrs", "sha256:0",
        "--nonce", "00", "--out", str(tmp_path),
    )  # fmt: skip
    one_error_line(result, 2)
    result = stockade(
        "tpm", "quote", "--tcti", "device:/nonexistent/tpmrm9", "--pcrs", "sha256:0",
        "--nonce", "00", "--out", str(tmp_path),
    )  # fmt: skip
    one_error_line(result, 2)


def test_usage_error_exits_2():
    result = stockade("quote", "verify")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_version_prints_the_package_version_and_exits_0():
    from importlib.metadata import version

    done = stockade("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"stockade {version('stockade')}"
