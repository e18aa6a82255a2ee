"""A PostgreSQL-backed MLflow tracking server on one machine: a team's first server, and the tests' server.

``python -m medtl.tracking.local_server --root /srv/medtl-mlflow --host 0.0.0.0 --port 5000`` creates (once) a
PostgreSQL cluster in ``<root>/postgres`` (Debian's ``postgresql`` package; listening on loopback only) and an
artefact store in ``<root>/artifacts``, then runs ``mlflow server`` against both until Ctrl-C. Clients then train
with ``tracking=server MLFLOW_TRACKING_URI=http://<host>:5000``: params, metrics and the model registry live
in PostgreSQL, artefacts and models are uploaded through the server (``--serve-artifacts``), so clients need no
access to the artefact folder. A managed PostgreSQL works the same way: pass its URI to ``mlflow server``.

When run as root, PostgreSQL's commands run as the ``postgres`` system user (PostgreSQL refuses root).
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from medtl.errors import MedtlError

__all__ = ["LocalPostgres", "MlflowServer", "free_port", "health_problem", "main"]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _postgres_bin(name: str) -> str:
    """Path of a PostgreSQL program (``initdb``, ``pg_ctl``...): on PATH, or in Debian's versioned folder."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise MedtlError(f"PostgreSQL's {name} was not found; install the server (apt-get install postgresql)")
    return found


@dataclass
class LocalPostgres:
    """A PostgreSQL cluster in ``data_dir``, listening on ``127.0.0.1:port`` only (no Unix socket elsewhere).

    Local connections are trusted (``initdb --auth=trust``): fit for one machine or a test; a server that other
    machines reach should be a PostgreSQL with passwords, whose URI you pass to ``mlflow server`` yourself.
    """

    data_dir: Path
    port: int = field(default_factory=free_port)
    user: str = "mlflow"
    database: str = "mlflow"

    @property
    def uri(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> LocalPostgres:
        """Create the cluster and database if they are new, start the server and wait until it answers."""
        self.data_dir = Path(self.data_dir).resolve()
        if not (self.data_dir / "PG_VERSION").is_file():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._own(self.data_dir)
            self._run("initdb", "-D", str(self.data_dir), "-U", self.user, "--auth=trust", "-E", "UTF8")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.data_dir}"
        self._run("pg_ctl", "-D", str(self.data_dir), "-o", options, "-l", str(self.data_dir / "server.log"),
                  "-w", "-t", "60", "start")
        exists = self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", "postgres",
                           "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'")
        if exists.strip() != "1":
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, self.database)
        return self

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").is_file():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")

    def _run(self, program: str, *args: str) -> str:
        command = [_postgres_bin(program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise MedtlError(f"PostgreSQL {program} failed in {self.data_dir}: {result.stderr.strip()[-500:]}")
        return result.stdout

    @staticmethod
    def _own(path: Path) -> None:
        """As root: give ``path`` to the ``postgres`` user, who runs the server."""
        if os.geteuid() == 0:
            shutil.chown(path, "postgres", "postgres")
            path.chmod(0o700)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


@dataclass
class MlflowServer:
    """``mlflow server`` on ``host:port`` with ``backend_uri`` as its store and ``artifacts_dir`` served by it."""

    backend_uri: str
    artifacts_dir: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    workers: int = 2
    log_file: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://{'127.0.0.1' if self.host in ('0.0.0.0', '::') else self.host}:{self.port}"

    def start(self, timeout_s: float = 180.0) -> MlflowServer:
        """Start the server and wait for its ``/health`` answer; a server that exits first is an error with its log."""
        Path(self.artifacts_dir).mkdir(parents=True, exist_ok=True)
        log_path = self.log_file or Path(self.artifacts_dir).parent / "mlflow-server.log"
        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend_uri,
                   "--artifacts-destination", str(Path(self.artifacts_dir).resolve()), "--serve-artifacts",
                   "--host", self.host, "--port", str(self.port), "--workers", str(self.workers)]
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise MedtlError(f"mlflow server exited with {self.process.returncode}; see {log_path}: "
                                 f"{log_path.read_text(errors='replace')[-500:]}")
            if health_problem(self.uri) is None:
                return self
            time.sleep(0.5)
        self.stop()
        raise MedtlError(f"mlflow server did not answer on {self.uri} within {timeout_s:.0f} s; see {log_path}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the server and its workers
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


def health_problem(uri: str, timeout_s: float = 2.0) -> str | None:
    """``None`` when the MLflow server at ``uri`` answers its ``/health`` check, else why not (one phrase)."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as response:
            return None if response.status == 200 else f"HTTP {response.status}"
    except OSError as exc:
        return str(getattr(exc, "reason", exc))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="folder for the PostgreSQL cluster and artefacts")
    parser.add_argument("--host", default="127.0.0.1", help="interface to serve on (0.0.0.0: the whole network)")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # stop both servers on the way out
    with LocalPostgres(args.root / "postgres") as postgres, \
            MlflowServer(postgres.uri, args.root / "artifacts", args.host, args.port) as server:
        print(f"MLflow tracking server on {server.uri} (store {postgres.uri}, artefacts {args.root / 'artifacts'});\n"
              f"train with: MLFLOW_TRACKING_URI={server.uri} python -m medtl.train +experiment=chest_xray tracking=server")
        try:
            server.process.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
