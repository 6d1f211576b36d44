"""A real valkey-server configured as a production one would be: TLS only (`--port 0`,
`--tls-port`) with a certificate from a CA made here, an ACL user with a password and the
`default` user disabled. The password lives in an ACL file (0600), never on a command line."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import valkey as valkey_lib

from qt_cli.core.store.managed import find_server
from tests.helpers import eventually, free_port

USER = "qt"


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    assert openssl, "the openssl CLI is needed to make the test certificates"
    subprocess.run([openssl, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str = "ca") -> Path:
    """A self-signed CA (EC P-256): `<name>.pem` and `<name>.key` in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=qt test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return directory / f"{name}.pem"


def make_server_cert(directory: Path, ca: str = "ca") -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 and localhost signed by the CA `ca` of `directory`."""
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
        cwd=directory,
    )  # fmt: skip
    return directory / "server.pem", directory / "server.key"


@dataclass
class SecureValkey:
    port: int
    password: str
    ca: Path
    other_ca: Path  # a CA that did not sign the server's certificate
    proc: subprocess.Popen[bytes]
    log: Path

    def url(self, db: int = 0) -> str:
        """The URL a user gives qt: the user name only; the password goes in QT_VALKEY_PASSWORD."""
        return f"valkeys://{USER}@127.0.0.1:{self.port}/{db}"

    def client(self) -> valkey_lib.Valkey:
        return valkey_lib.Valkey(
            host="127.0.0.1",
            port=self.port,
            username=USER,
            password=self.password,
            ssl=True,
            ssl_ca_certs=str(self.ca),
            ssl_check_hostname=True,
        )

    def env(self) -> dict[str, str]:
        return {"QT_VALKEY_PASSWORD": self.password, "QT_VALKEY_CA": str(self.ca)}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_secure_valkey(directory: Path) -> SecureValkey:
    """Start the server (TLS only, ACL user `qt`, default user off) and wait until it answers."""
    certs = directory / "certs"
    ca = make_ca(certs)
    cert, key = make_server_cert(certs)
    other_ca = make_ca(directory / "other", "ca")
    password = "pw-" + secrets.token_hex(16)
    acl = directory / "users.acl"
    acl.write_text(f"user default off\nuser {USER} on >{password} ~* &* +@all\n")
    acl.chmod(0o600)
    data = directory / "data"
    data.mkdir()
    port = free_port()
    log = directory / "valkey.log"
    proc = subprocess.Popen(
        [
            find_server(),
            "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
            "--aclfile", str(acl), "--dir", str(data), "--save", "", "--appendonly", "no",
            "--logfile", str(log),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    server = SecureValkey(port, password, ca, other_ca, proc, log)

    def answers() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"valkey-server exited: {log.read_text() if log.exists() else ''}")
        client = server.client()
        try:
            return bool(client.ping())
        except (valkey_lib.ValkeyError, OSError):
            return False
        finally:
            client.close()

    try:
        eventually(answers, timeout=15, message="the TLS valkey-server answers")
    except BaseException:
        server.stop()
        raise
    return server
