"""Resolve the JVM artifacts with Maven into a git-ignored cache.

Kafka broker, Kafka's tools jar (ProducerPerformance, for the producer benchmark), the Prometheus
JMX exporter agent, Spark connectors and the schema registry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from tx_platform.config import PROJECT_ROOT
from tx_platform.errors import ArtifactError

MAVEN_PROJECT = PROJECT_ROOT / "infra" / "maven"
MODULES = ("kafka-broker", "kafka-tools", "jmx-exporter", "spark-connectors")
JMX_AGENT_GLOB = "jmx_prometheus_javaagent-*.jar"
REGISTRY_RUNNER = Path("schema-registry") / "quarkus-app" / "quarkus-run.jar"
_MARKER = ".resolved.json"


def pyspark_version() -> str:
    """Version of the installed pyspark; the Spark connectors must match it exactly."""
    try:
        return metadata.version("pyspark")
    except metadata.PackageNotFoundError as exc:
        msg = "pyspark is not installed — run `make setup`"
        raise ArtifactError(msg) from exc


def _fingerprint(spark_version: str) -> str:
    digest = hashlib.sha256(spark_version.encode())
    inputs = [*MAVEN_PROJECT.rglob("pom.xml"), *MAVEN_PROJECT.rglob("*.properties")]
    for path in sorted(inputs):
        digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Artifacts:
    """Where the resolved jars are."""

    root: Path

    def module_dir(self, module: str) -> Path:
        """Directory of one module's jars."""
        return self.root / module

    @property
    def registry_runner(self) -> Path:
        """The schema registry's runnable jar (Apicurio, built by Quarkus)."""
        return self.root / REGISTRY_RUNNER

    def kafka_classpath(self) -> str:
        """Class path of the Kafka broker JVM."""
        return str(self.module_dir("kafka-broker") / "*")

    def tools_classpath(self) -> str:
        """Class path of Kafka's command-line tools (e.g. ``org.apache.kafka.tools.ProducerPerformance``).

        The tools jar is resolved without its dependencies: it runs on the broker's closure.
        """
        return os.pathsep.join([self.kafka_classpath(), str(self.module_dir("kafka-tools") / "*")])

    def jmx_agent(self) -> Path:
        """The Prometheus JMX exporter Java agent jar (for ``-javaagent:``), kept off the broker's class path."""
        directory = self.module_dir("jmx-exporter")
        jars = sorted(directory.glob(JMX_AGENT_GLOB))
        if len(jars) != 1:
            found = ", ".join(j.name for j in jars) or "none"
            msg = f"expected one JMX exporter agent jar in {directory}, found {found} — run `txp stack setup --force`"
            raise ArtifactError(msg)
        return jars[0]

    def spark_jars(self) -> list[Path]:
        """Connector jars for ``spark.jars``, minus what pyspark already ships.

        The connectors' poms drag in scala-library, hadoop-client and the like at slightly other
        versions; putting a second copy on Spark's class path invites conflicts.
        """
        import pyspark  # heavy import only when Spark is about to be used

        shipped = {_artifact_name(p.name) for p in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
        jars = sorted(self.module_dir("spark-connectors").glob("*.jar"))
        return [j for j in jars if _artifact_name(j.name) not in shipped]

    def is_complete(self) -> bool:
        """True when the cache holds what the current poms and pyspark version resolve to."""
        marker = self.root / _MARKER
        if not marker.exists():
            return False
        try:
            recorded = json.loads(marker.read_text())
        except json.JSONDecodeError:
            return False
        return (
            recorded.get("fingerprint") == _fingerprint(pyspark_version())
            and all(any(self.module_dir(m).glob("*.jar")) for m in MODULES)
            and len(list(self.module_dir("jmx-exporter").glob(JMX_AGENT_GLOB))) == 1
            and self.registry_runner.exists()
        )


def _artifact_name(jar_file: str) -> str:
    """``kafka-clients-3.9.1.jar`` -> ``kafka-clients``; ``spark-sql-kafka-0-10_2.13-4.1.1.jar`` keeps its 0-10_2.13."""
    match = _JAR_VERSION.match(jar_file)
    return match.group("name") if match else jar_file.removesuffix(".jar")


_JAR_VERSION = re.compile(r"^(?P<name>.+?)-(?P<version>\d+(?:\.\d+)+[\w.\-]*)\.jar$")


def require_java() -> str:
    """Path of ``java`` (17+), or a clear error saying what to install."""
    java = shutil.which("java")
    if java is None:
        msg = "Java was not found on PATH — install a JDK 17+ (Debian: `apt-get install openjdk-17-jdk-headless`)"
        raise ArtifactError(msg)
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr  # noqa: S603
    try:
        version = out.split('"')[1]
        major = int(version.split(".")[0])
    except (IndexError, ValueError):
        return java
    if major < 17:
        msg = f"Java {version} is too old — Kafka 4 and Spark 4 need Java 17+"
        raise ArtifactError(msg)
    return java


def resolve_artifacts(root: Path, force: bool = False, quiet: bool = True) -> Artifacts:
    """Resolve every module into ``root`` unless the cache is already complete."""
    artifacts = Artifacts(root)
    if not force and artifacts.is_complete():
        return artifacts
    require_java()
    mvn = shutil.which("mvn")
    if mvn is None:
        msg = "Maven (`mvn`) was not found on PATH — install it (Debian: `apt-get install maven`)"
        raise ArtifactError(msg)
    spark_version = pyspark_version()
    cmd = [
        mvn, "-B", "-f", str(MAVEN_PROJECT / "pom.xml"), "package",
        f"-Dspark.version={spark_version}", f"-Dtxp.jars.dir={root}",
    ]  # fmt: skip
    if quiet:
        cmd.insert(1, "-q")
    result = subprocess.run(cmd, capture_output=quiet, text=True, check=False)  # noqa: S603 - our own argv
    if result.returncode != 0:
        tail = "\n".join((result.stdout or "").splitlines()[-30:])
        msg = f"Maven could not resolve the JVM artifacts (exit {result.returncode}):\n{tail}"
        raise ArtifactError(msg)
    root.mkdir(parents=True, exist_ok=True)
    marker = {"fingerprint": _fingerprint(spark_version), "spark_version": spark_version}
    (root / _MARKER).write_text(json.dumps(marker))
    return artifacts
