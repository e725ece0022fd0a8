"""A real ActiveMQ 5.17 broker for the tests: STOMP on loopback, persistent, with users.

`amq` (session-wide) is one broker; `amq_broker` (per test) is one of its own,
for tests that kill or restart it. The broker runs Debian's `activemq` package
with `java -jar activemq.jar` and our own XML (test-peers.md §2a): KahaDB in a
temporary folder (so a `kill -9` loses no persistent message), STOMP and
STOMP+TLS on free loopback ports, no JMX, no web console, and two users:
`pmnc`/`secret` (everything) and nobody anonymous. It is stopped by its pid at
the end. Tests skip with the reason when ActiveMQ is not installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import free_port, port_open, remove_orphans

HOME = Path("/usr/share/activemq")
PREFIX = "pmnc-amq-"  # of the temporary folders, in tempfile's directory
USER, PASSWORD = "pmnc", "secret"
KEYSTORE_PASSWORD = "changeit"

JAVA_OPTIONS = [
    "-Xms64m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "--add-reads=java.xml=java.logging",
    *(f"--add-opens=java.{m}=ALL-UNNAMED" for m in (
        "base/java.security", "base/java.net", "base/java.lang", "base/java.util", "naming/javax.naming.spi",
        "rmi/sun.rmi.transport.tcp", "base/java.util.concurrent", "base/java.util.concurrent.atomic")),
]

# maximumRedeliveries is the broker's own poison limit (for consumers that NACK or roll back);
# pmnc counts failures itself and dead-letters with the error (protocols/jms.py), so the tests
# set the broker's limit above any test's, to see that it is pmnc's limit that acts.
CONFIG = """<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans
    http://www.springframework.org/schema/beans/spring-beans-2.0.xsd
    http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" brokerName="pmnc-test" useJmx="false"
          persistent="true" schedulerSupport="false" advisorySupport="false" dataDirectory="{data}">
    <persistenceAdapter><kahaDB directory="{data}/kahadb" journalMaxFileLength="16mb"/></persistenceAdapter>
    <plugins>
      <simpleAuthenticationPlugin anonymousAccessAllowed="false">
        <users><authenticationUser username="{user}" password="{password}" groups="users,admins"/></users>
      </simpleAuthenticationPlugin>
    </plugins>
    <systemUsage><systemUsage>
      <memoryUsage><memoryUsage limit="64 mb"/></memoryUsage>
      <storeUsage><storeUsage limit="1 gb"/></storeUsage>
      <tempUsage><tempUsage limit="1 gb"/></tempUsage>
    </systemUsage></systemUsage>
    {ssl}
    <transportConnectors>
      <transportConnector name="stomp" uri="stomp://127.0.0.1:{port}?transport.maxFrameSize=8388608"/>
      {ssl_connector}
    </transportConnectors>
  </broker>
</beans>
"""

SSL_CONTEXT = """<sslContext><sslContext keyStore="file:{keystore}" keyStoreType="PKCS12"
      keyStorePassword="{password}" trustStore="file:{truststore}" trustStoreType="PKCS12"
      trustStorePassword="{password}"/></sslContext>"""
SSL_CONNECTOR = '<transportConnector name="stomp+ssl" uri="stomp+ssl://127.0.0.1:{port}{options}"/>'


class AmqBroker:
    """One broker; `stomp_port` (and `ssl_port` when built with a keystore) on 127.0.0.1.

    `keystore`: a PKCS12 file (KEYSTORE_PASSWORD) with the broker's key and certificate;
    `truststore`: a PKCS12 file of trusted certificates (Java takes only entries marked
    trusted, as cryptography's `pkcs12.serialize_java_truststore` writes them), which
    `need_client_auth` checks the clients' certificates against."""

    def __init__(self, keystore: Path | None = None, need_client_auth: bool = False,
                 truststore: Path | None = None) -> None:
        if not (HOME / "bin" / "activemq.jar").exists() or shutil.which("java") is None:
            pytest.skip(f"no ActiveMQ in {HOME} (Debian package activemq) or no java")
        remove_orphans(PREFIX, "broker.pid")
        self.folder = Path(tempfile.mkdtemp(prefix=PREFIX))
        (self.folder / "owner.pid").write_text(str(os.getpid()))
        for sub in ("conf", "data", "tmp"):
            (self.folder / sub).mkdir()
        self.stomp_port = free_port()
        self.ssl_port = free_port() if keystore else None
        ssl = SSL_CONTEXT.format(keystore=keystore, truststore=truststore or keystore,
                                 password=KEYSTORE_PASSWORD) if keystore else ""
        options = "?needClientAuth=true" if need_client_auth else ""
        ssl_connector = SSL_CONNECTOR.format(port=self.ssl_port, options=options) if keystore else ""
        (self.folder / "conf" / "activemq.xml").write_text(CONFIG.format(
            data=self.folder / "data", port=self.stomp_port, user=USER, password=PASSWORD, ssl=ssl,
            ssl_connector=ssl_connector))
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self, timeout: float = 60.0) -> None:
        """Start the broker and wait until STOMP answers CONNECT with CONNECTED and, when built
        with a keystore, the stomp+ssl port accepts connections too (it may open later)."""
        b = self.folder
        argv = ["java", *JAVA_OPTIONS, f"-Dactivemq.home={HOME}", f"-Dactivemq.base={b}",
                f"-Dactivemq.conf={b / 'conf'}", f"-Dactivemq.data={b / 'data'}", f"-Djava.io.tmpdir={b / 'tmp'}",
                "-jar", str(HOME / "bin" / "activemq.jar"), "start", f"xbean:file:{b / 'conf' / 'activemq.xml'}"]
        with open(b / "broker.log", "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=b)
        (b / "broker.pid").write_text(str(self.process.pid))
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"ActiveMQ ended with {self.process.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ActiveMQ did not answer STOMP within {timeout:.0f}s: {self.log_tail()}")
            time.sleep(0.05)

    def answers(self) -> bool:
        """True if a raw STOMP CONNECT gets CONNECTED back (an open port alone is not enough)
        and the stomp+ssl port, if any, is open."""
        if self.ssl_port is not None and not port_open(self.ssl_port):
            return False
        frame = f"CONNECT\naccept-version:1.2\nhost:localhost\nlogin:{USER}\npasscode:{PASSWORD}\n\n\0"
        try:
            with socket.create_connection(("127.0.0.1", self.stomp_port), timeout=1.0) as s:
                s.sendall(frame.encode())
                return s.recv(16).startswith(b"CONNECTED")
        except OSError:
            return False

    def log_tail(self) -> str:
        try:
            return (self.folder / "broker.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: a crash. Persistent messages are in KahaDB; the next start recovers them."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        self.process = None

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), SIGKILL after 15 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        self.process = None

    def config(self, protocol_keys: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
        """A config_interface_/config_resource_<name>.py dict for this broker."""
        config = {"protocol": "jms", "server_address": ("127.0.0.1", self.stomp_port),
                  "username": USER, "password": PASSWORD}
        config.update(protocol_keys or {})
        config.update(overrides)
        return config

    def connection(self, **kwargs: Any) -> Any:
        """A connected bare stomp.py client, for the tests' own sends and reads."""
        import stomp
        conn = stomp.Connection12([("127.0.0.1", self.stomp_port)], auto_content_length=False, **kwargs)
        conn.connect(USER, PASSWORD, wait=True)
        return conn

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def amq() -> Iterator[AmqBroker]:
    broker = AmqBroker()
    yield broker
    broker.close()


@pytest.fixture
def amq_broker() -> Iterator[AmqBroker]:
    broker = AmqBroker()
    yield broker
    broker.close()
