"""A throwaway certificate authority for the control plane, made with the ``openssl`` CLI."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ControlPlaneError

_OPENSSL_CONFIG = "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n"


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


class CertAuthority:
    """A throwaway CA (EC P-256, via the openssl CLI) and the certificates it signs."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._config = directory / "openssl.cnf"
        self._config.write_text(_OPENSSL_CONFIG)
        self.cert = directory / "ca.crt"
        self.key = directory / "ca.key"
        self._openssl(
            "req", "-x509", "-new", "-nodes", "-days", "3650",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-keyout", str(self.key), "-out", str(self.cert), "-subj", "/CN=mlship-test-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        )  # fmt: skip

    def _openssl(self, *args: str) -> None:
        env = {**os.environ, "OPENSSL_CONF": str(self._config)}
        result = subprocess.run(
            ["openssl", *args, "-config", str(self._config)],
            capture_output=True, text=True, check=False, env=env,
        )  # fmt: skip
        if result.returncode != 0:
            raise ControlPlaneError(f"openssl {args[0]} failed: {result.stderr.strip()}")

    def issue(
        self,
        name: str,
        common_name: str,
        organizations: Sequence[str] = (),
        *,
        server_names: Sequence[str] = (),
        server_ips: Sequence[str] = (),
    ) -> CertPair:
        """A client certificate (CN = user, O = groups), or a serving one if given names/IPs."""
        subject = "".join(f"/O={org}" for org in organizations) + f"/CN={common_name}"
        pair = CertPair(self.directory / f"{name}.crt", self.directory / f"{name}.key")
        extensions = ["basicConstraints=critical,CA:FALSE",
                      "keyUsage=critical,digitalSignature,keyEncipherment"]
        if server_names or server_ips:
            extensions.append("extendedKeyUsage=serverAuth,clientAuth")
            alt = [f"DNS:{n}" for n in server_names] + [f"IP:{ip}" for ip in server_ips]
            extensions.append("subjectAltName=" + ",".join(alt))
        else:
            extensions.append("extendedKeyUsage=clientAuth")
        args = ["req", "-x509", "-new", "-nodes", "-days", "3650",
                "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-CA", str(self.cert), "-CAkey", str(self.key),
                "-keyout", str(pair.key), "-out", str(pair.cert), "-subj", subject]
        for extension in extensions:
            args += ["-addext", extension]
        self._openssl(*args)
        return pair

    def signing_key(self, name: str) -> CertPair:
        """An EC key pair (``cert`` holds the public key) for service-account tokens."""
        key = self.directory / f"{name}.key"
        public = self.directory / f"{name}.pub"
        for args in (
            ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)],
            ["ec", "-in", str(key), "-pubout", "-out", str(public)],
        ):
            result = subprocess.run(["openssl", *args], capture_output=True, text=True,
                                    check=False)
            if result.returncode != 0:
                raise ControlPlaneError(f"openssl {args[0]} failed: {result.stderr.strip()}")
        return CertPair(public, key)
