"""Test certificates, made at test time with the openssl command, and what clients need to trust them."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
from pathlib import Path

import attrs


@attrs.frozen
class MadeCertificate:
    """
    A self-signed certificate (C{certificate}, PEM) and its key
    (C{private_key}, PEM) for C{name}, 127.0.0.1 and ::1; C{spki} is the
    base64 SHA-256 of its public key (Chromium's
    --ignore-certificate-errors-spki-list), C{fingerprint} its SHA-256.
    """

    certificate: Path
    private_key: Path
    name: str
    spki: str
    fingerprint: str


def openssl_missing() -> str | None:
    return None if shutil.which("openssl") else "not installed: openssl (script/test installs it)"


def make_certificate(directory: Path, name: str = "dns.test", stem: str = "server") -> MadeCertificate:
    """
    A new key and self-signed certificate for C{name}, 127.0.0.1 and ::1,
    written to C{directory}/C{stem}.crt and .key.
    """
    directory.mkdir(parents=True, exist_ok=True)
    certificate, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(certificate), "-days", "2", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=DNS:{name},IP:127.0.0.1,IP:::1", "-addext", "basicConstraints=critical,CA:TRUE"],
        check=True, capture_output=True,
    )
    public = subprocess.run(["openssl", "x509", "-in", str(certificate), "-pubkey", "-noout"],
                            check=True, capture_output=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=public,
                         check=True, capture_output=True).stdout
    fingerprint = subprocess.run(["openssl", "x509", "-in", str(certificate), "-noout", "-fingerprint", "-sha256"],
                                 check=True, capture_output=True, text=True).stdout.strip().partition("=")[2]
    return MadeCertificate(certificate, key, name, base64.b64encode(hashlib.sha256(der).digest()).decode(), fingerprint)


def replace_files(source: MadeCertificate, target: MadeCertificate) -> None:
    """
    Put C{source}'s certificate and key in place of C{target}'s files, each
    by a rename (as an operator's renewal tool would).
    """
    for new, old in ((source.certificate, target.certificate), (source.private_key, target.private_key)):
        temporary = old.with_suffix(old.suffix + ".new")
        shutil.copyfile(new, temporary)
        temporary.replace(old)
