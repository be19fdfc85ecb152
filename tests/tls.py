"""Test helpers for secured brokers: certificates made with ``openssl``, a configurable mosquitto.

:func:`make_pki` writes a small public-key infrastructure into a folder: a CA, a server
certificate for 127.0.0.1 and a client certificate signed by it, plus an unrelated second
CA to prove that a wrong ``mqtt.ca_file`` is refused. :class:`Mosquitto` runs a real
mosquitto with any listener settings (TLS, password file) on a free loopback port.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import free_port, mosquitto_binary

__all__ = ["Mosquitto", "Pki", "make_password_file", "make_pki", "openssl_binary"]

_CURVE = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def openssl_binary() -> str:
    """The ``openssl`` command, or skip the test that needs it."""
    found = shutil.which("openssl")
    if found is None:
        pytest.skip("the openssl command is not installed (Debian: apt-get install openssl)")
    return found


@dataclass(frozen=True)
class Pki:
    """Paths of the certificates and keys :func:`make_pki` wrote."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        [openssl_binary(), *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req", "-x509", *_CURVE, "-keyout", str(key), "-out", str(cert),
        "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return cert, key


def _make_leaf(
    directory: Path, name: str, ca: tuple[Path, Path], extensions: str
) -> tuple[Path, Path]:
    cert, key, csr = (directory / f"{name}.{ext}" for ext in ("crt", "key", "csr"))
    ext_file = directory / f"{name}.ext"
    ext_file.write_text(
        extensions + "\nbasicConstraints=CA:FALSE\nauthorityKeyIdentifier=keyid\n",
        encoding="ascii",
    )
    _openssl(
        "req", "-new", *_CURVE, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext_file),
        cwd=directory,
    )  # fmt: skip
    return cert, key


def make_pki(directory: Path) -> Pki:
    """Write a CA, a server certificate for IP 127.0.0.1, a client certificate, another CA."""
    ca = _make_ca(directory, "test-ca")
    server = _make_leaf(
        directory, "127.0.0.1", ca, "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"
    )
    client = _make_leaf(directory, "watch-client", ca, "extendedKeyUsage=clientAuth")
    other_ca, _ = _make_ca(directory, "unrelated-ca")
    return Pki(
        ca_cert=ca[0],
        server_cert=server[0],
        server_key=server[1],
        client_cert=client[0],
        client_key=client[1],
        other_ca_cert=other_ca,
    )


def make_password_file(path: Path, username: str, password: str) -> None:
    """Write a mosquitto password file with ``mosquitto_passwd -b`` (skip if it is missing)."""
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(tool).exists():
        pytest.skip("mosquitto_passwd is not installed (it ships with Debian's mosquitto)")
    subprocess.run([tool, "-c", "-b", str(path), username, password], check=True)


@dataclass
class Mosquitto:
    """A real mosquitto on 127.0.0.1 with the listener settings a test gives it."""

    workdir: Path
    settings: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        """Where mosquitto writes its log (shown when it fails to start)."""
        return self.workdir / "mosquitto.log"

    def start(self) -> None:
        """Start it and wait until its port accepts TCP connections."""
        conf = self.workdir / "mosquitto.conf"
        # `user root`: started as root, mosquitto would otherwise switch to the mosquitto
        # user before reading certificates and password files in the test's 0700 folder.
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            + textwrap.dedent(self.settings)
            + textwrap.dedent(f"""\
                set_tcp_nodelay true
                user root
                log_dest file {self.log_path}
                log_type all
                """),
            encoding="utf-8",
        )
        self.process = subprocess.Popen(
            [mosquitto_binary(), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                time.sleep(0.05)
            else:
                return
        self.stop()
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        raise RuntimeError(f"mosquitto did not start on port {self.port}:\n{log}")

    def stop(self) -> None:
        """Stop it (an outage, or the end of the test)."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
