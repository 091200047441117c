"""Self-signed certificates for the TLS tests, made with the openssl command."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

needs_openssl = pytest.mark.skipif(
    shutil.which("openssl") is None,
    reason="the openssl binary is needed to make a self-signed certificate",
)


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed EC certificate for 127.0.0.1 and its key, made with openssl."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def write_pems(directory: Path, cert: str, key: str, ca: str = "") -> None:
    """Write a matching certificate and key (and a CA, when named) under these names."""
    made_cert, made_key = make_cert(directory, "made")
    made_cert.rename(directory / cert)
    made_key.rename(directory / key)
    if ca:
        ca_cert, ca_key = make_cert(directory, "made-ca")
        ca_cert.rename(directory / ca)
        ca_key.unlink()
