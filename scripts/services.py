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
(9093), ``FS_CASSANDRA_PORT`` (9042), ``FS_CASSANDRA_STORAGE_PORT`` (7000),
``FS_CASSANDRA_JMX_PORT`` (7199) and ``FS_S3_PORT`` (9000). ``FS_SERVICES_TIMEOUT`` sets
the readiness timeout of every service in seconds (default 180 for Cassandra and 60 for
the others). ``FS_CASSANDRA_AUTH=1`` at start turns on Cassandra's PasswordAuthenticator
(superuser ``cassandra``/``cassandra``).

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
    cassandra: int
    cassandra_storage: int
    cassandra_jmx: int
    s3: int

    @classmethod
    def from_env(cls) -> Ports:
        return cls(
            kafka=env_int("FS_KAFKA_PORT", 9092),
            kafka_controller=env_int("FS_KAFKA_CONTROLLER_PORT", 9093),
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
    """Start ``command`` detached in a new session with output appended to the log."""
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


def prepare_kafka(layout: Layout, ports: Ports) -> list[str]:
    layout.conf.mkdir(parents=True, exist_ok=True)
    layout.data.mkdir(parents=True, exist_ok=True)
    # A static voter set keeps working if the controller port changes between runs; a
    # dynamic one (format --standalone) stores the controller's endpoint in the log.
    properties = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{ports.kafka_controller}",
        "listeners": f"PLAINTEXT://{HOST}:{ports.kafka},CONTROLLER://{HOST}:{ports.kafka_controller}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{ports.kafka}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
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
    }
    server_properties = layout.conf / "server.properties"
    server_properties.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
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
    "kafka": Service("kafka", 60.0, prepare_kafka, probe_kafka),
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
    if not pid_is_ours(pending.pid, layout):
        layout.pid_file.unlink(missing_ok=True)
        raise ServiceError(fail_message(pending, "the process exited during startup"))
    if spec.probe(ports):
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
                command = spec.prepare(layout, ports)
                started = time.monotonic()
                pid = spawn(layout, command, spec.env() if spec.env else None)
                say(f"{name}: started (pid {pid}), log {layout.log}")
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
