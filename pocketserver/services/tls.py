"""The self-signed TLS certificate made on first start for the federation listener."""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
from pathlib import Path


def ensure_self_signed_certificate(cert_path: Path, key_path: Path, server_name: str) -> bool:
    """Create a self-signed certificate for ``server_name`` unless both files exist.

    Returns True when it created them. The work runs in a short-lived child process:
    ``cryptography`` costs about 14 MB once imported, and the server never needs it again.
    """
    if cert_path.exists() and key_path.exists():
        return False
    result = subprocess.run(
        certificate_command(cert_path, key_path, server_name),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0 or not cert_path.exists():
        raise OSError(f"could not create a TLS certificate: {result.stderr.strip()[-500:]}")
    return True


def certificate_command(cert_path: Path, key_path: Path, server_name: str) -> list[str]:
    """The child process that writes the certificate (see ``cli.main``)."""
    if getattr(sys, "frozen", False):
        cmd = [sys.executable, "_make-certificate"]
    else:
        cmd = [sys.executable, "-m", "pocketserver", "_make-certificate"]
    return cmd + [str(cert_path), str(key_path), server_name]


def write_self_signed_certificate(cert_path: Path, key_path: Path, server_name: str) -> None:
    """Generate the key and certificate files (run by the child process)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    host = server_name
    if host.startswith("["):
        host = host[1 : host.index("]")]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    alt: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        alt.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        if host != "localhost":
            alt.append(x509.DNSName(host))
    alt += [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
