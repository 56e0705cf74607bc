"""A self-signed certificate and key for SIP over TLS on a first run (``ccpbx tls selfsigned``).

The certificate names the host both as the subject's common name and in subjectAltName (a DNS name or an IP
address, RFC 5922 §7.1 for SIP domain certificates; phones that verify look there), is valid for ten years and
uses an ECDSA P-256 key, which every TLS 1.2 stack phones use speaks. Production should use a certificate from
a CA the phones trust; this one is for tests and first runs, where phones are told to trust it or not to verify.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

VALID_DAYS = 3650


@dataclass(frozen=True, slots=True)
class SelfSigned:
    certificate_pem: bytes
    private_key_pem: bytes
    fingerprint_sha256: str  # colon-separated hex, as phones show it


def make_self_signed(hosts: tuple[str, ...], *, now: datetime.datetime | None = None) -> SelfSigned:
    """A self-signed certificate for ``hosts`` (names or IP literals; the first is the common name)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not hosts:
        raise ValueError("at least one host name or address is needed")
    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0]),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ccpbx self-signed")])
    alt: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    digest = certificate.fingerprint(hashes.SHA256()).hex().upper()
    return SelfSigned(
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM),
        private_key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()),
        fingerprint_sha256=":".join(digest[i:i + 2] for i in range(0, len(digest), 2)),
    )
