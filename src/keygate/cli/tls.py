"""Checking the certificate and key that ``keygate serve --tls-cert/--tls-key`` is given, before serving.

uvicorn would load them only when its first worker starts, and answer a problem with a traceback (or,
for an encrypted key, a passphrase prompt). Here each problem is one line that names the file.
"""

from __future__ import annotations

import ssl
import stat
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

CERT_LABEL = "the TLS certificate (--tls-cert / KEYGATE_TLS_CERT_FILE)"
KEY_LABEL = "the TLS private key (--tls-key / KEYGATE_TLS_KEY_FILE)"


class TlsFileError(ValueError):
    """A certificate or key that cannot be served; the message is one line."""


def _read(path: Path, label: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsFileError(f"cannot read {label} {path}: {exc.strerror or type(exc).__name__}") from None


def check_tls_files(cert_file: Path, key_file: Path) -> list[str]:
    """Raise :class:`TlsFileError` unless the pair can be served; return warnings (an expired certificate)."""
    cert_pem, key_pem = _read(cert_file, CERT_LABEL), _read(key_file, KEY_LABEL)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise TlsFileError(f"{CERT_LABEL} {cert_file} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TlsFileError(f"{KEY_LABEL} {key_file} is encrypted; give keygate an unencrypted key "
                           "(readable by its user only)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsFileError(f"{KEY_LABEL} {key_file} is not a PEM private key") from None
    if key_file.stat().st_mode & stat.S_IROTH:  # as for the master key file: a secret is not for every user
        raise TlsFileError(f"{KEY_LABEL} {key_file} is readable by every user of this machine; "
                           f"make it readable by keygate's user only (chmod 600 {key_file})")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise TlsFileError(f"{KEY_LABEL} {key_file} does not belong to {CERT_LABEL} {cert_file}")
    try:  # what uvicorn will do in every worker
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(cert_file), str(key_file), password="")
    except (ssl.SSLError, OSError) as exc:
        raise TlsFileError(f"cannot serve TLS with {cert_file} and {key_file}: {exc}") from None
    warnings = []
    if cert.not_valid_after_utc < datetime.now(timezone.utc):
        warnings.append(f"warning: {CERT_LABEL} {cert_file} expired on {cert.not_valid_after_utc:%Y-%m-%d}; "
                        "clients will refuse it")
    return warnings
