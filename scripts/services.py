"""Local Kafka, Cassandra and S3 for fs-dagster's tests and examples, without Docker.

Usage: ``services.py fetch|start|stop|status|spark-jars [service ...]``

Services are ``kafka`` (KRaft broker and controller in one JVM), ``cassandra`` (one node)
and ``s3`` (moto in server mode); ``spark`` is the jar set of Spark connectors (Kafka
source and sink, s3a with the AWS SDK v2, Delta Lake), for ``fetch`` and ``spark-jars``.
No service name means all of them.

Everything lives under ``$FS_SERVICES_DIR`` (default ``<repo>/.services``): ``<name>/lib``
holds the jars ``mvn`` copied from ``scripts/maven/<name>/pom.xml``, ``<name>/data`` and
``<name>/conf`` the data and the generated configuration, ``logs/<name>.log`` a service's
output and ``<name>.pid`` its process id. Every process binds 127.0.0.1 only.

Ports come from the environment: ``FS_KAFKA_PORT`` (9092), ``FS_KAFKA_CONTROLLER_PORT``
(9093), ``FS_KAFKA_SASL_PORT`` (9094), ``FS_KAFKA_SASL_SSL_PORT`` (9095),
``FS_KAFKA_SSL_PORT`` (9096), ``FS_CASSANDRA_PORT`` (9042), ``FS_CASSANDRA_STORAGE_PORT`` (7000),
``FS_CASSANDRA_JMX_PORT`` (7199) and ``FS_S3_PORT`` (9000). ``FS_SERVICES_TIMEOUT`` sets
the readiness timeout of every service in seconds (default 180 for Cassandra and 60 for
the others). ``FS_CASSANDRA_AUTH=1`` at start turns on Cassandra's PasswordAuthenticator
(superuser ``cassandra``/``cassandra``).

Secured Kafka listeners, for tests of SASL and TLS clients (inter-broker and controller
traffic stay PLAINTEXT, and readiness is probed on PLAINTEXT plus a login on each):

- ``SASL_PLAINTEXT`` on ``FS_KAFKA_SASL_PORT`` and ``SASL_SSL`` on
  ``FS_KAFKA_SASL_SSL_PORT``, each with the mechanisms ``PLAIN``, ``SCRAM-SHA-256`` and
  ``SCRAM-SHA-512``; one test user per mechanism (``fs-plain``, ``fs-scram-256``,
  ``fs-scram-512``). The PLAIN user lives in the listeners' JAAS configuration, the SCRAM
  users are upserted through the Admin API on the PLAINTEXT listener at every start (so
  a storage formatted before this existed gets them too).
- ``SSL`` on ``FS_KAFKA_SSL_PORT``: mutual TLS, the client must present a certificate
  signed by the project's CA.
- ``kafka/tls/`` holds a CA made with openssl once per services dir (``ca.pem``), the
  broker's certificate for ``127.0.0.1``/``localhost`` and a client certificate
  (``client.pem``, ``client.key``: PKCS#8 encrypted with PBE-SHA1-3DES, the scheme both
  Java's and OpenSSL's PEM readers accept).
- ``kafka/credentials.json`` (mode 0600) holds the randomly generated passwords, made
  once per services dir and never printed::

      {"users": {"PLAIN": {"username": "fs-plain", "password": "..."},
                 "SCRAM-SHA-256": {...}, "SCRAM-SHA-512": {...}},
       "tls": {"ca": "tls/ca.pem", "client_certificate": "tls/client.pem",
               "client_key": "tls/client.key", "client_key_password": "...",
               "server_key_password": "..."}}

  TLS paths are relative to the ``kafka`` folder. Delete ``kafka/credentials.json`` and
  ``kafka/tls`` only while Kafka is stopped; the next start makes new ones.

Exit codes: 0 success; 1 a fetch or a start failed; 2 bad usage; 3 ``status`` found a
service stopped.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MAVEN_DIR = REPO / "scripts" / "maven"
HOST = "127.0.0.1"

SERVICES = ("cassandra", "kafka", "s3")  # start order: the slowest first
JAR_SETS = ("kafka", "cassandra", "spark")
ALL_NAMES = ("kafka", "cassandra", "s3", "spark")

DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
# Bump to refetch every jar set after a change in how jars are copied or pruned.
FETCH_LOGIC_VERSION = "1"

STOP_TIMEOUT_S = 30.0
STARTUP_RESTARTS = 1
LOG_TAIL_LINES = 20
LOG_ROTATE_BYTES = 50_000_000  # at start, a bigger log moves to <name>.log.1

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_STOPPED = 3


class ServiceError(Exception):
    """A fetch or start failed; the message says what to look at."""


def say(message: str) -> None:
    """Progress goes to stderr so that stdout carries only data (status, jar list)."""
    print(message, file=sys.stderr, flush=True)


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ServiceError(f"{name}={raw!r} is not an integer") from exc


def services_dir() -> Path:
    raw = os.environ.get("FS_SERVICES_DIR", "").strip()
    return Path(raw).resolve() if raw else REPO / ".services"


def java_executable() -> str:
    java_home = os.environ.get("JAVA_HOME", "").strip()
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise ServiceError("java not found: install Java 17 or set JAVA_HOME")
    return found


@dataclass(frozen=True)
class Ports:
    kafka: int
    kafka_controller: int
    kafka_sasl: int
    kafka_sasl_ssl: int
    kafka_ssl: int
    cassandra: int
    cassandra_storage: int
    cassandra_jmx: int
    s3: int

    @classmethod
    def from_env(cls) -> Ports:
        return cls(
            kafka=env_int("FS_KAFKA_PORT", 9092),
            kafka_controller=env_int("FS_KAFKA_CONTROLLER_PORT", 9093),
            kafka_sasl=env_int("FS_KAFKA_SASL_PORT", 9094),
            kafka_sasl_ssl=env_int("FS_KAFKA_SASL_SSL_PORT", 9095),
            kafka_ssl=env_int("FS_KAFKA_SSL_PORT", 9096),
            cassandra=env_int("FS_CASSANDRA_PORT", 9042),
            cassandra_storage=env_int("FS_CASSANDRA_STORAGE_PORT", 7000),
            cassandra_jmx=env_int("FS_CASSANDRA_JMX_PORT", 7199),
            s3=env_int("FS_S3_PORT", 9000),
        )

    def client_port(self, service: str) -> int:
        return {"kafka": self.kafka, "cassandra": self.cassandra, "s3": self.s3}[service]


@dataclass(frozen=True)
class Layout:
    """Where one service or jar set keeps its files."""

    root: Path
    name: str

    @property
    def home(self) -> Path:
        return self.root / self.name

    @property
    def lib(self) -> Path:
        return self.home / "lib"

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def conf(self) -> Path:
        return self.home / "conf"

    @property
    def log(self) -> Path:
        return self.root / "logs" / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return self.root / f"{self.name}.pid"

    @property
    def lock_file(self) -> Path:
        return self.root / "locks" / f"{self.name}.lock"

    @property
    def pom(self) -> Path:
        return MAVEN_DIR / self.name / "pom.xml"

    @property
    def fetch_marker(self) -> Path:
        return self.lib / ".fetched.json"


@contextlib.contextmanager
def locked(layout: Layout) -> Iterator[None]:
    """Serialise fetch/start/stop of one service across processes."""
    layout.lock_file.parent.mkdir(parents=True, exist_ok=True)
    with layout.lock_file.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- fetching


def pyspark_jars_dir() -> Path:
    try:
        import pyspark
    except ImportError as exc:
        raise ServiceError(
            f"pyspark is not importable from {sys.executable}; run this script with the "
            "project's virtualenv (scripts/services.sh does)"
        ) from exc
    jars = Path(pyspark.__file__).resolve().parent / "jars"
    if not jars.is_dir():
        raise ServiceError(f"pyspark has no jars directory at {jars}")
    return jars


def fetch_key(layout: Layout) -> str:
    digest = hashlib.sha256()
    digest.update(FETCH_LOGIC_VERSION.encode())
    digest.update(layout.pom.read_bytes())
    if layout.name == "spark":
        jars = pyspark_jars_dir()
        digest.update(str(jars).encode())
        digest.update("\n".join(sorted(p.name for p in jars.glob("*.jar"))).encode())
    return digest.hexdigest()


def is_fetched(layout: Layout) -> bool:
    try:
        marker = json.loads(layout.fetch_marker.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("key") == fetch_key(layout)


def run_maven_copy(layout: Layout, output: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError("mvn not found: install Maven 3.8 or newer")
    command = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(layout.pom),
        f"{DEPENDENCY_PLUGIN}:copy-dependencies",
        "-DincludeScope=runtime",
        "-Dmdep.useRepositoryLayout=true",
        f"-DoutputDirectory={output}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-30:])
        raise ServiceError(f"mvn could not fetch the {layout.name} jars:\n{tail}")


def flatten_repository_layout(repo_dir: Path, lib: Path) -> dict[str, str]:
    """Move ``group/artifact/version/file.jar`` up into ``lib``; map file name -> artifact."""
    artifacts: dict[str, str] = {}
    for jar in sorted(repo_dir.rglob("*.jar")):
        artifact = jar.parent.parent.name
        jar.rename(lib / jar.name)
        artifacts[jar.name] = artifact
    shutil.rmtree(repo_dir)
    return artifacts


def prune_pyspark_duplicates(lib: Path, artifacts: dict[str, str]) -> list[str]:
    """Delete the jars whose artifact pyspark already ships; return their names."""
    shipped = [p.name for p in pyspark_jars_dir().glob("*.jar")]

    def pyspark_has(artifact: str) -> bool:
        pattern = re.compile(re.escape(artifact) + r"-\d")
        return any(pattern.match(name) for name in shipped)

    removed: list[str] = []
    for jar_name, artifact in sorted(artifacts.items()):
        if pyspark_has(artifact):
            (lib / jar_name).unlink()
            removed.append(jar_name)
    return removed


def fetch(layout: Layout) -> None:
    """Copy the jar set of ``layout`` into its lib directory unless already there."""
    if is_fetched(layout):
        return
    started = time.monotonic()
    say(f"{layout.name}: fetching jars with mvn ({layout.pom.relative_to(REPO)})")
    staging = layout.home / "lib.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    run_maven_copy(layout, staging / "repository")
    artifacts = flatten_repository_layout(staging / "repository", staging)
    removed: list[str] = []
    if layout.name == "spark":
        removed = prune_pyspark_duplicates(staging, artifacts)
    shutil.rmtree(layout.lib, ignore_errors=True)
    staging.rename(layout.lib)
    layout.fetch_marker.write_text(json.dumps({"key": fetch_key(layout)}))
    jars = sorted(layout.lib.glob("*.jar"))
    size_mb = sum(p.stat().st_size for p in jars) / 1e6
    pruned = f", {len(removed)} dropped as shipped by pyspark" if removed else ""
    say(
        f"{layout.name}: {len(jars)} jars, {size_mb:.1f} MB{pruned}, "
        f"in {time.monotonic() - started:.1f} s"
    )


def spark_jar_paths(root: Path) -> list[str]:
    layout = Layout(root, "spark")
    with locked(layout):
        fetch(layout)
    return [str(p) for p in sorted(layout.lib.glob("*.jar"))]


# --------------------------------------------------------------------------- processes


def read_pid(layout: Layout) -> int | None:
    try:
        return int(layout.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def pid_is_ours(pid: int, layout: Layout) -> bool:
    """Alive, not a zombie, and started by us (its working directory is the service's)."""
    proc = Path("/proc") / str(pid)
    try:
        stat = (proc / "stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        return (proc / "cwd").resolve() == layout.home.resolve()
    except (OSError, IndexError):
        return False


def running_pid(layout: Layout) -> int | None:
    pid = read_pid(layout)
    if pid is not None and pid_is_ours(pid, layout):
        return pid
    return None


def port_open(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def spawn(layout: Layout, command: Sequence[str], env: dict[str, str] | None = None) -> int:
    """Start ``command`` detached in a new session with output appended to the log.

    ``JAVA_TOOL_OPTIONS`` is not passed on: the tests set it for their short-lived Spark
    drivers (``tests/jvm_archive.py``), and the long-running servers want none of it.
    """
    env = dict(os.environ if env is None else env)
    env.pop("JAVA_TOOL_OPTIONS", None)
    layout.log.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        if layout.log.stat().st_size > LOG_ROTATE_BYTES:
            layout.log.replace(layout.log.with_suffix(".log.1"))
    with layout.log.open("ab") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(
            f"\n===== fs-dagster services: starting {layout.name} at {stamp} =====\n".encode()
        )
        log.flush()
        process = subprocess.Popen(
            list(command),
            cwd=layout.home,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    layout.pid_file.write_text(f"{process.pid}\n")
    return process.pid


def wait_gone(pid: int, layout: Layout, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not pid_is_ours(pid, layout):
            return True
        time.sleep(0.2)
    return not pid_is_ours(pid, layout)


def terminate(layout: Layout) -> int | None:
    """SIGTERM the service's process group, SIGKILL it after a timeout; return the pid."""
    pid = running_pid(layout)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        if not wait_gone(pid, layout, STOP_TIMEOUT_S):
            say(f"{layout.name}: no exit {STOP_TIMEOUT_S:.0f} s after SIGTERM, sending SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            wait_gone(pid, layout, 10.0)
    layout.pid_file.unlink(missing_ok=True)
    return pid


# --------------------------------------------------------------------------- services


@dataclass
class Service:
    """How to configure, launch and probe one service."""

    name: str
    default_timeout: float
    prepare: Callable[[Layout, Ports], list[str]]
    probe: Callable[[Ports], bool]
    env: Callable[[], dict[str, str]] | None = None
    # Idempotent setup once the probe passes (and for a service already running);
    # raises ServiceError when the service is up but not usable.
    after_ready: Callable[[Layout, Ports], None] | None = None

    def timeout(self) -> float:
        raw = os.environ.get("FS_SERVICES_TIMEOUT", "").strip()
        if not raw:
            return self.default_timeout
        try:
            return float(raw)
        except ValueError as exc:
            raise ServiceError(f"FS_SERVICES_TIMEOUT={raw!r} is not a number") from exc


def classpath(layout: Layout) -> str:
    return str(layout.lib / "*")


# Kafka ------------------------------------------------------------------------------

KAFKA_LOG4J2 = """\
status = warn
name = fs-dagster-kafka
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRefs = out
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.controller.name = kafka.controller
logger.controller.level = INFO
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
"""


def kafka_cluster_id() -> str:
    """A random 22-character base64url id, as ``StorageTool random-uuid`` prints."""
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


# Secured listeners -------------------------------------------------------------------

KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# JAAS option names (user_<name>) take letters, digits and '_' safely; no '-'.
KAFKA_TEST_USERS = {
    "PLAIN": "fs_plain",
    "SCRAM-SHA-256": "fs_scram_256",
    "SCRAM-SHA-512": "fs_scram_512",
}
SCRAM_ITERATIONS = 8192
TLS_DAYS = 3650
TLS_FILES = ("ca.pem", "server-keystore.pem", "client.pem", "client.key")
PLAIN_LOGIN_MODULE = "org.apache.kafka.common.security.plain.PlainLoginModule"
SCRAM_LOGIN_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"
SECURED_LISTENERS_WAIT_S = 15.0


def kafka_tls_dir(layout: Layout) -> Path:
    return layout.home / "tls"


def kafka_credentials_path(layout: Layout) -> Path:
    return layout.home / "credentials.json"


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, readable by its owner only from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.unlink(missing_ok=True)
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    staging.replace(path)


def new_kafka_credentials() -> dict[str, Any]:
    return {
        "users": {
            mechanism: {"username": user, "password": secrets.token_urlsafe(24)}
            for mechanism, user in KAFKA_TEST_USERS.items()
        },
        "tls": {
            "ca": "tls/ca.pem",
            "client_certificate": "tls/client.pem",
            "client_key": "tls/client.key",
            "client_key_password": secrets.token_urlsafe(24),
            "server_key_password": secrets.token_urlsafe(24),
        },
    }


def credentials_complete(data: object) -> bool:
    if not isinstance(data, dict):
        return False
    users, tls = data.get("users"), data.get("tls")
    if not isinstance(users, dict) or not isinstance(tls, dict):
        return False
    return all(
        isinstance(users.get(m), dict) and users[m].get("password") for m in KAFKA_TEST_USERS
    ) and all(tls.get(k) for k in ("client_key_password", "server_key_password"))


def kafka_credentials(layout: Layout) -> dict[str, Any]:
    """The test users and TLS key passwords, made once per services dir (see the top)."""
    path = kafka_credentials_path(layout)
    try:
        data: object = json.loads(path.read_text())
    except FileNotFoundError:
        data = None
    except (OSError, ValueError) as exc:
        raise ServiceError(
            f"kafka: {path} is unreadable or not JSON ({type(exc).__name__}); with Kafka "
            "stopped, delete it and the tls folder next to it to make new credentials"
        ) from exc
    if isinstance(data, dict) and credentials_complete(data):
        return data
    if data is not None:
        raise ServiceError(
            f"kafka: {path} lacks users or TLS key passwords; with Kafka stopped, delete it "
            "and the tls folder next to it to make new credentials"
        )
    fresh = new_kafka_credentials()
    # Keys encrypted with other passwords would not open: new credentials, new TLS files.
    shutil.rmtree(kafka_tls_dir(layout), ignore_errors=True)
    write_private(path, json.dumps(fresh, indent=2) + "\n")
    say(f"kafka: made test users and passwords in {path}")
    return fresh


def openssl(arguments: Sequence[str], cwd: Path, key_password: str | None = None) -> None:
    """Run openssl; a key password travels in the environment, never on the command line."""
    executable = shutil.which("openssl")
    if executable is None:
        raise ServiceError(
            "openssl not found: install it (Debian: apt-get install openssl) to make the "
            "test CA and certificates of Kafka's TLS listeners"
        )
    env = dict(os.environ)
    if key_password is not None:
        env["FS_TLS_KEY_PASSWORD"] = key_password
    result = subprocess.run(
        [executable, *arguments],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-10:])
        raise ServiceError(f"kafka: openssl {arguments[0]} failed in {cwd}:\n{tail}")


def issue_certificate(
    work: Path, name: str, subject: str, extensions: str, key_password: str
) -> None:
    """``<name>.pem`` signed by the CA in ``work`` and ``<name>.key`` (encrypted PKCS#8)."""
    plain_key = f"{name}.plain.key"
    openssl(["genpkey", "-algorithm", "RSA", "-out", plain_key], work)  # RSA 2048 bits
    openssl(["req", "-new", "-key", plain_key, "-subj", subject, "-out", f"{name}.csr"], work)
    (work / f"{name}.ext").write_text(extensions)
    openssl(
        [
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-set_serial", str(secrets.randbits(63)), "-days", str(TLS_DAYS), "-sha256",
            "-extfile", f"{name}.ext", "-out", f"{name}.pem",
        ],
        work,
    )  # fmt: skip
    # PBE-SHA1-3DES (PKCS#12 PBE): Java's EncryptedPrivateKeyInfo, which Kafka's PEM
    # reader uses, has no SecretKeyFactory for OpenSSL's default PBES2.
    openssl(
        [
            "pkcs8", "-topk8", "-v1", "PBE-SHA1-3DES", "-in", plain_key,
            "-passout", "env:FS_TLS_KEY_PASSWORD", "-out", f"{name}.key",
        ],
        work,
        key_password,
    )  # fmt: skip
    for leftover in (plain_key, f"{name}.csr", f"{name}.ext"):
        (work / leftover).unlink()
    (work / f"{name}.key").chmod(0o600)


def ensure_kafka_tls(layout: Layout, credentials: dict[str, Any]) -> Path:
    """Make the test CA, the broker's and a client's certificate once; return the folder."""
    tls = kafka_tls_dir(layout)
    if all((tls / name).exists() for name in TLS_FILES):
        return tls
    work = layout.home / "tls.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700, parents=True)
    openssl(
        [
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
            "-out", "ca.pem", "-days", str(TLS_DAYS), "-sha256",
            "-subj", "/CN=fs-dagster test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ],
        work,
    )  # fmt: skip
    passwords = credentials["tls"]
    issue_certificate(
        work,
        "server",
        "/CN=localhost",
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName=IP:{HOST},DNS:localhost\n",
        passwords["server_key_password"],
    )
    issue_certificate(
        work,
        "client",
        "/CN=fs-dagster-test-client",
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n",
        passwords["client_key_password"],
    )
    # Kafka's PEM key store: the private key, then the certificate chain.
    keystore = "".join((work / n).read_text() for n in ("server.key", "server.pem", "ca.pem"))
    write_private(work / "server-keystore.pem", keystore)
    (work / "server.key").unlink()
    (work / "ca.key").unlink()  # nothing is signed later: a new CA comes with new files
    shutil.rmtree(tls, ignore_errors=True)
    work.rename(tls)
    say(f"kafka: made a test CA and certificates in {tls}")
    return tls


def secured_listener_properties(
    layout: Layout, ports: Ports, credentials: dict[str, Any]
) -> dict[str, str]:
    """``server.properties`` entries of the SASL_PLAINTEXT, SASL_SSL and SSL listeners."""
    tls = ensure_kafka_tls(layout, credentials)
    plain = credentials["users"]["PLAIN"]
    plain_jaas = f'{PLAIN_LOGIN_MODULE} required user_{plain["username"]}="{plain["password"]}";'
    properties: dict[str, str] = {
        "sasl.enabled.mechanisms": ",".join(KAFKA_SASL_MECHANISMS),
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(tls / "server-keystore.pem"),
        "ssl.key.password": credentials["tls"]["server_key_password"],
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(tls / "ca.pem"),
        "listener.name.ssl.ssl.client.auth": "required",
    }
    for listener in ("sasl_plaintext", "sasl_ssl"):
        prefix = f"listener.name.{listener}."
        properties[prefix + "sasl.enabled.mechanisms"] = ",".join(KAFKA_SASL_MECHANISMS)
        properties[prefix + "plain.sasl.jaas.config"] = plain_jaas
        for mechanism in ("scram-sha-256", "scram-sha-512"):
            properties[prefix + f"{mechanism}.sasl.jaas.config"] = f"{SCRAM_LOGIN_MODULE} required;"
    return properties


def kafka_listeners(ports: Ports) -> dict[str, int]:
    """Listener name -> port; the name is also its security protocol (but CONTROLLER)."""
    return {
        "PLAINTEXT": ports.kafka,
        "SASL_PLAINTEXT": ports.kafka_sasl,
        "SASL_SSL": ports.kafka_sasl_ssl,
        "SSL": ports.kafka_ssl,
    }


def prepare_kafka(layout: Layout, ports: Ports) -> list[str]:
    layout.conf.mkdir(parents=True, exist_ok=True)
    layout.data.mkdir(parents=True, exist_ok=True)
    layout.log.parent.mkdir(parents=True, exist_ok=True)  # formatting logs there
    for port in kafka_listeners(ports).values():
        if port_open(port):
            raise ServiceError(
                f"kafka: port {HOST}:{port} is taken by another process; stop it or choose "
                "other ports (FS_KAFKA_PORT, FS_KAFKA_SASL_PORT, FS_KAFKA_SASL_SSL_PORT, "
                "FS_KAFKA_SSL_PORT)"
            )
    credentials = kafka_credentials(layout)
    listeners = kafka_listeners(ports)
    advertised = ",".join(f"{name}://{HOST}:{port}" for name, port in listeners.items())
    protocols = ",".join(f"{name}:{name}" for name in listeners)
    # A static voter set keeps working if the controller port changes between runs; a
    # dynamic one (format --standalone) stores the controller's endpoint in the log.
    properties = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{ports.kafka_controller}",
        "listeners": f"{advertised},CONTROLLER://{HOST}:{ports.kafka_controller}",
        "advertised.listeners": advertised,
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": f"{protocols},CONTROLLER:PLAINTEXT",
        "log.dirs": str(layout.data),
        "num.partitions": "1",
        "auto.create.topics.enable": "true",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "num.network.threads": "2",
        "num.io.threads": "4",
        **secured_listener_properties(layout, ports, credentials),
    }
    server_properties = layout.conf / "server.properties"
    # It holds the PLAIN user's and the TLS key's passwords.
    write_private(server_properties, "".join(f"{k}={v}\n" for k, v in properties.items()))
    log4j2 = layout.conf / "log4j2.properties"
    log4j2.write_text(KAFKA_LOG4J2)
    java = java_executable()
    jvm = [
        java,
        "-Xms256m",
        "-Xmx512m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        "-Djava.net.preferIPv4Stack=true",
        f"-Dlog4j2.configurationFile={log4j2}",
        f"-Dkafka.logs.dir={layout.log.parent}",
        "-cp",
        classpath(layout),
    ]
    if not (layout.data / "meta.properties").exists():
        cluster_id = kafka_cluster_id()
        with layout.log.open("ab") as log:
            result = subprocess.run(
                [
                    *jvm,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(server_properties),
                ],
                cwd=layout.home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if result.returncode != 0:
            raise ServiceError(
                f"kafka: formatting the storage in {layout.data} failed; log {layout.log}:\n"
                + log_tail(layout.log)
            )
    return [*jvm, "kafka.Kafka", str(server_properties)]


def probe_kafka(ports: Ports) -> bool:
    if not port_open(ports.kafka):
        return False
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(
        {
            "bootstrap.servers": f"{HOST}:{ports.kafka}",
            "broker.address.family": "v4",
            "log_level": 0,
        }
    )
    try:
        admin.list_topics(timeout=5)
    except Exception:
        return False
    return True


def kafka_client_config(
    layout: Layout, ports: Ports, listener: str, mechanism: str | None = None
) -> dict[str, Any]:
    """confluent-kafka settings to log in as a test user on one of the listeners."""
    config: dict[str, Any] = {
        "bootstrap.servers": f"{HOST}:{kafka_listeners(ports)[listener]}",
        "broker.address.family": "v4",
        "security.protocol": listener,
        "log_level": 0,
    }
    credentials = kafka_credentials(layout)
    if mechanism is not None:
        user = credentials["users"][mechanism]
        config.update(
            {
                "sasl.mechanisms": mechanism,
                "sasl.username": user["username"],
                "sasl.password": user["password"],
            }
        )
    if "SSL" in listener:
        tls = credentials["tls"]
        config["ssl.ca.location"] = str(layout.home / tls["ca"])
        if listener == "SSL":
            config["ssl.certificate.location"] = str(layout.home / tls["client_certificate"])
            config["ssl.key.location"] = str(layout.home / tls["client_key"])
            config["ssl.key.password"] = tls["client_key_password"]
    return config


def upsert_scram_users(layout: Layout, ports: Ports) -> None:
    """Create or update the SCRAM users (idempotent), through the PLAINTEXT listener."""
    # Public names of confluent_kafka.admin that its type hints do not re-export.
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialAlteration,
        UserScramCredentialUpsertion,
    )

    users = kafka_credentials(layout)["users"]
    mechanisms = {
        "SCRAM-SHA-256": ScramMechanism.SCRAM_SHA_256,
        "SCRAM-SHA-512": ScramMechanism.SCRAM_SHA_512,
    }
    upserts: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(
            users[name]["username"],
            ScramCredentialInfo(mechanism, SCRAM_ITERATIONS),
            users[name]["password"].encode(),
        )
        for name, mechanism in mechanisms.items()
    ]
    admin = AdminClient(kafka_client_config(layout, ports, "PLAINTEXT"))
    for user, future in admin.alter_user_scram_credentials(upserts, request_timeout=30).items():
        try:
            future.result()
        except Exception as exc:
            raise ServiceError(f"kafka: creating the SCRAM user {user} failed: {exc}") from exc


def login_problem(layout: Layout, ports: Ports, listener: str, mechanism: str | None) -> str:
    """Why a test user cannot log in on ``listener`` (empty when it can)."""
    from confluent_kafka.admin import AdminClient

    errors: list[str] = []
    config = kafka_client_config(layout, ports, listener, mechanism)
    config["error_cb"] = lambda error: errors.append(str(error))
    try:
        AdminClient(config).list_topics(timeout=5)
    except Exception as exc:
        return "; ".join([*errors[-2:], str(exc)])
    return ""


def secure_kafka(layout: Layout, ports: Ports) -> None:
    """Check the secured listeners, create the SCRAM users and check that each logs in."""
    secured = {k: v for k, v in kafka_listeners(ports).items() if k != "PLAINTEXT"}
    deadline = time.monotonic() + SECURED_LISTENERS_WAIT_S
    while closed := [f"{name} {port}" for name, port in secured.items() if not port_open(port)]:
        if time.monotonic() >= deadline:
            raise ServiceError(
                f"kafka: the broker answers on {HOST}:{ports.kafka} but not on "
                f"{', '.join(closed)}: it was started without these listeners (by an "
                "older services.py, or with other FS_KAFKA_*_PORT values); restart it: "
                "scripts/services.sh stop kafka && scripts/services.sh start kafka"
            )
        time.sleep(0.5)
    upsert_scram_users(layout, ports)
    logins = [
        *(("SASL_PLAINTEXT", m) for m in KAFKA_SASL_MECHANISMS),
        *(("SASL_SSL", m) for m in KAFKA_SASL_MECHANISMS),
        ("SSL", None),
    ]
    for listener, mechanism in logins:
        # SCRAM credentials reach the broker through the metadata log: allow a moment.
        while problem := login_problem(layout, ports, listener, mechanism):
            if time.monotonic() >= deadline:
                raise ServiceError(
                    f"kafka: the test user of {mechanism or 'mutual TLS'} cannot log in on "
                    f"{listener} {HOST}:{kafka_listeners(ports)[listener]}: {problem}"
                )
            time.sleep(0.5)


# Cassandra --------------------------------------------------------------------------

CASSANDRA_JVM17_OPTIONS = [
    # From Cassandra 5.0's conf/jvm17-server.options.
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports", "java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports", "java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports", "java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports", "java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports", "java.sql/java.sql=ALL-UNNAMED",
    "--add-exports", "java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports", "jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports", "jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports", "jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens", "jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens", "java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens", "java.base/java.io=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens", "jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang=ALL-UNNAMED",
    "--add-opens", "java.base/java.util=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
]  # fmt: skip

CASSANDRA_LOGBACK = """\
<configuration scan="false">
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="STDOUT"/>
  </root>
</configuration>
"""


def cassandra_auth_enabled() -> bool:
    return os.environ.get("FS_CASSANDRA_AUTH", "").strip().lower() in {"1", "true", "yes"}


def cassandra_yaml(layout: Layout, ports: Ports, auth: bool) -> str:
    data = layout.data
    settings: dict[str, object] = {
        "cluster_name": "fs-dagster",
        "num_tokens": 1,
        "initial_token": 0,
        "partitioner": "org.apache.cassandra.dht.Murmur3Partitioner",
        "endpoint_snitch": "SimpleSnitch",
        "seed_provider": [
            {
                "class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
                "parameters": [{"seeds": f"{HOST}:{ports.cassandra_storage}"}],
            }
        ],
        "listen_address": HOST,
        "rpc_address": HOST,
        "storage_port": ports.cassandra_storage,
        "native_transport_port": ports.cassandra,
        "start_native_transport": True,
        "data_file_directories": [str(data / "data")],
        "commitlog_directory": str(data / "commitlog"),
        "saved_caches_directory": str(data / "saved_caches"),
        "hints_directory": str(data / "hints"),
        "cdc_raw_directory": str(data / "cdc_raw"),
        "commitlog_sync": "periodic",
        "commitlog_sync_period": "10000ms",
        "auto_snapshot": False,
        "snapshot_before_compaction": False,
        "hinted_handoff_enabled": False,
        "concurrent_compactors": 1,
        "authenticator": "PasswordAuthenticator" if auth else "AllowAllAuthenticator",
        "authorizer": "CassandraAuthorizer" if auth else "AllowAllAuthorizer",
        "role_manager": "CassandraRoleManager",
        "storage_compatibility_mode": "NONE",
    }
    # JSON is valid YAML, and needs no YAML library here.
    return "".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items())


def prepare_cassandra(layout: Layout, ports: Ports) -> list[str]:
    auth = cassandra_auth_enabled()
    (layout.conf / "triggers").mkdir(parents=True, exist_ok=True)
    for sub in ("data", "commitlog", "saved_caches", "hints", "cdc_raw"):
        (layout.data / sub).mkdir(parents=True, exist_ok=True)
    yaml_path = layout.conf / "cassandra.yaml"
    yaml_path.write_text(cassandra_yaml(layout, ports, auth))
    logback = layout.conf / "logback.xml"
    logback.write_text(CASSANDRA_LOGBACK)
    (layout.conf / "auth").write_text("1\n" if auth else "0\n")
    jamm = sorted(layout.lib.glob("jamm-*.jar"))
    if not jamm:
        raise ServiceError(f"cassandra: no jamm jar in {layout.lib}; refetch the jars")
    return [
        java_executable(),
        "-Xms256m",
        "-Xmx1g",
        "-Xss256k",
        "-XX:+UseG1GC",
        "-XX:+ParallelRefProcEnabled",
        "-XX:+ExitOnOutOfMemoryError",
        f"-javaagent:{jamm[-1]}",
        *CASSANDRA_JVM17_OPTIONS,
        "-Djava.net.preferIPv4Stack=true",
        "-Dcassandra-foreground=yes",
        f"-Dcassandra.config=file://{yaml_path}",
        f"-Dcassandra.storagedir={layout.data}",
        f"-Dcassandra.logdir={layout.log.parent}",
        f"-Dlogback.configurationFile={logback}",
        # Local-only JMX (loopback); nodetool works with -p <port>.
        f"-Dcassandra.jmx.local.port={ports.cassandra_jmx}",
        f"-Dcom.sun.management.jmxremote.rmi.port={ports.cassandra_jmx}",
        f"-Dcassandra.triggers_dir={layout.conf / 'triggers'}",
        "-Dcassandra.skip_wait_for_gossip_to_settle=0",
        "-Dcassandra.ring_delay_ms=1000",
        "-Dcassandra.unsafesystem=true",
        "-Dcassandra.superuser_setup_delay_ms=0",
        "-cp",
        f"{layout.conf}:{classpath(layout)}",
        "org.apache.cassandra.service.CassandraDaemon",
    ]


def cassandra_running_with_auth(layout: Layout) -> bool:
    marker = layout.conf / "auth"
    return marker.exists() and marker.read_text().strip() == "1"


def warn_if_auth_differs(layout: Layout) -> None:
    running, wanted = cassandra_running_with_auth(layout), cassandra_auth_enabled()
    if running != wanted:
        say(
            f"cassandra: note: running with authentication {'on' if running else 'off'}; "
            "FS_CASSANDRA_AUTH takes effect after 'services.sh stop cassandra'"
        )


def probe_cassandra(ports: Ports) -> bool:
    if not port_open(ports.cassandra):
        return False
    logging.getLogger("cassandra").setLevel(logging.CRITICAL)
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import WhiteListRoundRobinPolicy

    auth = cassandra_running_with_auth(Layout(services_dir(), "cassandra"))
    profile = ExecutionProfile(
        load_balancing_policy=WhiteListRoundRobinPolicy([HOST]), request_timeout=5
    )
    cluster = Cluster(
        [HOST],
        port=ports.cassandra,
        connect_timeout=5,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        auth_provider=PlainTextAuthProvider("cassandra", "cassandra") if auth else None,
    )
    try:
        session = cluster.connect()
        row = session.execute("SELECT release_version FROM system.local").one()
        return row is not None
    except Exception:
        return False
    finally:
        cluster.shutdown()


# S3 ---------------------------------------------------------------------------------


def prepare_s3(layout: Layout, ports: Ports) -> list[str]:
    import importlib.util

    if importlib.util.find_spec("moto") is None:
        raise ServiceError(f"s3: moto is not installed for {sys.executable} (pip 'moto[server]')")
    layout.home.mkdir(parents=True, exist_ok=True)
    return [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(ports.s3)]


def probe_s3(ports: Ports) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{ports.s3}/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except (OSError, ValueError):
        return False


def s3_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("AWS_ACCESS_KEY_ID", "testing")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return env


SERVICE_SPECS: dict[str, Service] = {
    "kafka": Service("kafka", 60.0, prepare_kafka, probe_kafka, after_ready=secure_kafka),
    "cassandra": Service("cassandra", 180.0, prepare_cassandra, probe_cassandra),
    "s3": Service("s3", 60.0, prepare_s3, probe_s3, env=s3_env),
}


# --------------------------------------------------------------------------- commands


@dataclass
class Pending:
    service: Service
    layout: Layout
    pid: int
    started: float
    deadline: float
    # A process that dies before it is ready is started once more: a JVM killed in its
    # first seconds (seen once in CI, Kafka with no output at all) usually starts fine
    # the second time, and the first exit is reported either way.
    restarts_left: int = STARTUP_RESTARTS


def launch(spec: Service, layout: Layout, ports: Ports) -> tuple[int, float]:
    """Configure and start ``spec``'s process; its pid and when it started (monotonic)."""
    command = spec.prepare(layout, ports)
    started = time.monotonic()
    pid = spawn(layout, command, spec.env() if spec.env else None)
    say(f"{spec.name}: started (pid {pid}), log {layout.log}")
    return pid, started


def exit_reason(pid: int, layout: Layout) -> str | None:
    """``None`` while ``pid`` runs, else how it ended (its exit code or signal, when we
    can reap it).

    A child of this command is asked with ``waitpid``: its ``/proc`` entry can fail
    :func:`pid_is_ours` for a moment while it starts (seen once: a Kafka JVM just
    launched, whose working directory could not be read, was taken for dead and a second
    broker started on the same log directory). A process started by an earlier command is
    alive while :func:`pid_is_ours` holds.
    """
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None if pid_is_ours(pid, layout) else "exit status unknown: not our child"
    if reaped == 0:
        return None
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"killed by {name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def crash_reports(layout: Layout, since: float) -> str:
    """The head of each JVM crash report (hs_err_pid*.log) written in the service's
    directory since ``since`` (seconds since the epoch)."""
    parts = []
    for report in sorted(layout.home.glob("hs_err_pid*.log")):
        with contextlib.suppress(OSError):
            if report.stat().st_mtime < since:
                continue
            head = report.read_text(errors="replace").splitlines()[:LOG_TAIL_LINES]
            parts.append(f"  JVM crash report {report}:\n" + "\n".join(f"    {x}" for x in head))
    return "\n".join(parts)


def fail_message(pending: Pending, reason: str) -> str:
    return (
        f"{pending.service.name}: {reason}\n"
        f"  log: {pending.layout.log}\n"
        f"  last {LOG_TAIL_LINES} lines:\n"
        + "\n".join(f"    {line}" for line in log_tail(pending.layout.log).splitlines())
    )


def check_ready(pending: Pending, ports: Ports) -> bool:
    """One readiness round for ``pending``: True when ready; raises when it failed."""
    spec, layout = pending.service, pending.layout
    ended = exit_reason(pending.pid, layout)
    if ended is not None:
        layout.pid_file.unlink(missing_ok=True)
        reason = f"the process exited during startup ({ended})"
        report = crash_reports(layout, time.time() - (time.monotonic() - pending.started))
        if pending.restarts_left <= 0:
            raise ServiceError(fail_message(pending, reason) + (f"\n{report}" if report else ""))
        say(f"{spec.name}: {reason}; starting it once more (log {layout.log})")
        if report:
            say(report)
        pending.pid, pending.started = launch(spec, layout, ports)
        pending.deadline = pending.started + spec.timeout()
        pending.restarts_left -= 1
        return False
    if spec.probe(ports):
        if spec.after_ready is not None:
            spec.after_ready(layout, ports)
        elapsed = time.monotonic() - pending.started
        say(f"{spec.name}: ready on {HOST}:{ports.client_port(spec.name)} in {elapsed:.1f} s")
        return True
    if time.monotonic() >= pending.deadline:
        terminate(layout)
        timeout = pending.deadline - pending.started
        raise ServiceError(
            fail_message(pending, f"not ready within {timeout:.0f} s (stopped it again)")
        )
    return False


def wait_all_ready(pending: list[Pending], ports: Ports) -> list[str]:
    """Poll every started service until each is ready or failed; return the failures."""
    failures: list[str] = []
    waiting = list(pending)
    while waiting:
        still: list[Pending] = []
        for item in waiting:
            try:
                if not check_ready(item, ports):
                    still.append(item)
            except ServiceError as exc:
                failures.append(str(exc))
        waiting = still
        if waiting:
            time.sleep(0.5)
    return failures


def cmd_fetch(names: Sequence[str]) -> int:
    root = services_dir()
    for name in names:
        if name not in JAR_SETS:
            continue  # s3 needs no jars
        layout = Layout(root, name)
        with locked(layout):
            if is_fetched(layout):
                say(f"{name}: jars already fetched ({layout.lib})")
            else:
                fetch(layout)
    return 0


def cmd_start(names: Sequence[str]) -> int:
    root = services_dir()
    ports = Ports.from_env()
    wanted = [name for name in SERVICES if name in names]
    pending: list[Pending] = []
    failures: list[str] = []
    with contextlib.ExitStack() as stack:
        for name in wanted:
            spec, layout = SERVICE_SPECS[name], Layout(root, name)
            stack.enter_context(locked(layout))
            try:
                pid = running_pid(layout)
                if pid is not None:
                    if name == "cassandra":
                        warn_if_auth_differs(layout)
                    if spec.probe(ports):
                        if spec.after_ready is not None:
                            spec.after_ready(layout, ports)
                        say(f"{name}: already running (pid {pid})")
                        continue
                    say(f"{name}: running (pid {pid}) but not ready yet; waiting")
                    started = time.monotonic()
                    pending.append(Pending(spec, layout, pid, started, started + spec.timeout()))
                    continue
                layout.pid_file.unlink(missing_ok=True)
                port = ports.client_port(name)
                if port_open(port):
                    raise ServiceError(
                        f"{name}: port {HOST}:{port} is taken by another process; stop it or "
                        f"choose another port (FS_{name.upper()}_PORT)"
                    )
                if name in JAR_SETS:
                    fetch(layout)
                pid, started = launch(spec, layout, ports)
                pending.append(Pending(spec, layout, pid, started, started + spec.timeout()))
            except ServiceError as exc:
                failures.append(str(exc))
        # Every deadline counts from its own service's start.
        failures.extend(wait_all_ready(pending, ports))
    for message in failures:
        say(f"ERROR {message}")
    return EXIT_FAILED if failures else 0


def cmd_stop(names: Sequence[str]) -> int:
    root = services_dir()
    for name in [n for n in SERVICES if n in names]:
        layout = Layout(root, name)
        with locked(layout):
            pid = terminate(layout)
        say(f"{name}: stopped (pid {pid})" if pid is not None else f"{name}: not running")
    return 0


def cmd_status(names: Sequence[str]) -> int:
    root = services_dir()
    ports = Ports.from_env()
    code = 0
    for name in [n for n in SERVICES if n in names]:
        pid = running_pid(Layout(root, name))
        port = ports.client_port(name)
        if pid is None:
            code = EXIT_STOPPED
            print(f"{name:<10} stopped   port {port}")
        else:
            print(f"{name:<10} running   pid {pid:<8} port {port}")
    return code


def cmd_spark_jars(names: Sequence[str]) -> int:
    print(",".join(spark_jar_paths(services_dir())))
    return 0


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], tuple[str, ...]]] = {
    "fetch": (cmd_fetch, ALL_NAMES),
    "start": (cmd_start, SERVICES),
    "stop": (cmd_stop, SERVICES),
    "status": (cmd_status, SERVICES),
    "spark-jars": (cmd_spark_jars, ("spark",)),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="services.sh", description="Local Kafka, Cassandra and S3 for fs-dagster."
    )
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("services", nargs="*", metavar="service", help=", ".join(ALL_NAMES))
    args = parser.parse_args(argv)
    handler, allowed = COMMANDS[args.command]
    names: list[str] = list(args.services) or list(allowed)
    unknown = [n for n in names if n not in allowed]
    if unknown:
        parser.print_usage(sys.stderr)
        choices = ", ".join(allowed)
        say(f"{args.command}: unknown service(s) {', '.join(unknown)}; choose from {choices}")
        return EXIT_USAGE
    try:
        return handler(names)
    except ServiceError as exc:
        say(f"ERROR {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        say("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
