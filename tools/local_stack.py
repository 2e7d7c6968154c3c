"""A production-like stack on one machine, without containers: the deploy/ configuration run for real.

    python -m tools.local_stack start|stop|status [--state .mdp/stack]     (deploy/local-stack.sh)

It starts, each as its own process (and process group), recording every PID under <state>/pids:

- Postgres: a private cluster (Debian's postgresql) in <state>/postgres, listening on 127.0.0.1 only;
  run, event-log and schedule storage of the instance (deploy/dagster.yaml);
- an S3 HTTP server on 127.0.0.1 (moto's), holding the landing bucket and the service policy's bucket;
- the code location as a gRPC server (`dagster api grpc -m mdp_assets.locations.service`);
- `dagster-daemon` (intake sensor, schedules, run queue) and `dagster-webserver`.

`stop` stops them in reverse order by PID (SIGTERM to the process group, then SIGKILL after a grace period)
and checks that none is left. The database password and S3 keys are generated at start and handed to the
processes in their environment; they are kept only in <state>/secrets.env (mode 600), outside the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mdp_assets.errors import MdpError

REPOSITORY = Path(__file__).resolve().parent.parent
DEPLOY = REPOSITORY / "deploy"
LANDING_BUCKET = "mdp-landing"
LANDING_PREFIX = "incoming/"
DATA_BUCKET = "mdp-data"  # the bucket of policies/service.yaml
PROCESSES = ("postgres", "s3", "code-server", "daemon", "webserver")  # start order; stop is the reverse


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if found:
        return found[-1].parent
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        return Path(pg_ctl).parent
    raise MdpError("Postgres is not installed (apt-get install postgresql)")


def _tool(name: str) -> str:
    """A console script of this Python environment (dagster, dagster-daemon, moto_server, ...)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise MdpError(f"{name} is not installed in this environment (pip install -e '.[test]')")
    return found


@dataclass
class LocalStack:
    state: Path
    ports: dict[str, int] = field(default_factory=dict)
    quiet_period_seconds: int = 60

    def __post_init__(self) -> None:
        self.state = Path(self.state).resolve()
        self.ports = {"postgres": 5433, "s3": 9100, "code-server": 4266, "webserver": 3000, **self.ports}

    # -- paths and settings -----------------------------------------------------------------------------
    @property
    def dagster_home(self) -> Path:
        return self.state / "dagster_home"

    @property
    def workspace(self) -> Path:
        return self.state / "workspace.yaml"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def webserver_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['webserver']}"

    def _pid_file(self, name: str) -> Path:
        return self.state / "pids" / f"{name}.pid"

    def _secrets(self) -> dict[str, str]:
        path = self.state / "secrets.env"
        if not path.exists():
            values = {"DAGSTER_PG_PASSWORD": secrets.token_urlsafe(18), "AWS_ACCESS_KEY_ID": "mdp" + secrets.token_hex(6),
                      "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(24)}
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)

    def environment(self) -> dict[str, str]:
        """What the service processes see: every setting deploy/README.md lists, for this machine."""
        return {
            **self._secrets(),
            "DAGSTER_HOME": str(self.dagster_home),
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(self.ports["postgres"]),
            "DAGSTER_PG_DB": "dagster",
            "DAGSTER_PG_USERNAME": "mdp",
            "MDP_DATA_ROOT": str(self.state / "data"),
            "MDP_LANDING_BUCKET": LANDING_BUCKET,
            "MDP_LANDING_PREFIX": LANDING_PREFIX,
            "MDP_S3_ENDPOINT_URL": self.s3_endpoint,
            "MDP_QUIET_PERIOD_SECONDS": str(self.quiet_period_seconds),
            "AWS_REGION": "us-east-1",
            "MDP_CONFIG": str(DEPLOY / "mdp.yaml"),
            "MDP_WORKSPACE": str(self.workspace),
            "MDP_CELLPROFILER_ENVIRONMENT": str(REPOSITORY / ".mdp" / "cellprofiler"),
        }

    # -- processes --------------------------------------------------------------------------------------
    def _spawn(self, name: str, command: list[str], env: dict[str, str], user: str | None = None) -> int:
        if user:
            command = ["runuser", "-u", user, "--", *command]
        # Its own session, so that a signal reaches it (and its children) and only it; and signals not ignored,
        # so that it stops when told to. The child keeps its own copy of the log's descriptor.
        with (self.state / "logs" / f"{name}.log").open("ab") as log, _signals_not_ignored():
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                       cwd=REPOSITORY, start_new_session=True)
        self._pid_file(name).write_text(str(process.pid))
        return process.pid

    def pid(self, name: str) -> int | None:
        path = self._pid_file(name)
        if not path.exists():
            return None
        pid = int(path.read_text())
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid if not _is_zombie(pid) else None

    def status(self) -> dict[str, int | None]:
        return {name: self.pid(name) for name in PROCESSES}

    def start(self, timeout: float = 120) -> None:
        for folder in ("pids", "logs", "data"):
            (self.state / folder).mkdir(parents=True, exist_ok=True)
        running = {n: p for n, p in self.status().items() if p}
        if running:
            raise MdpError(f"the stack in {self.state} is already running: {running}; stop it first")
        try:
            self._start_postgres(timeout)
            self._start_s3(timeout)
            self._write_instance()
            env = self.environment()
            # On SIGTERM the gRPC server waits for calls in flight (a sensor tick the stopped daemon left
            # behind) up to this grace period, 60 s by default; stop() allows 30.
            self._spawn("code-server", [_tool("dagster"), "api", "grpc", "-m", "mdp_assets.locations.service",
                                        "-h", "127.0.0.1", "-p", str(self.ports["code-server"])],
                        {**env, "DAGSTER_GRPC_SHUTDOWN_GRACE_PERIOD": "10"})
            _wait(lambda: _grpc_ready(self.ports["code-server"]), timeout, "the code server")
            self._spawn("daemon", [_tool("dagster-daemon"), "run", "-w", str(self.workspace)], env)
            self._spawn("webserver", [_tool("dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.ports["webserver"]),
                                      "-w", str(self.workspace)], env)
            _wait(lambda: _http_ok(f"{self.webserver_url}/server_info"), timeout, "the webserver")
        except BaseException:
            self.stop()
            raise

    def _start_postgres(self, timeout: float) -> None:
        binaries, cluster = _postgres_bin(), self.state / "postgres"
        user = "postgres" if os.geteuid() == 0 else None  # initdb refuses to run as root
        if user:
            closed = [str(p) for p in [self.state, *self.state.parents] if not p.stat().st_mode & 0o001]
            if closed:
                raise MdpError(f"Postgres runs as user postgres, which cannot enter {closed[0]}; "
                               "put the stack's state in a folder everyone may traverse (chmod o+x)")
        if not (cluster / "PG_VERSION").exists():
            cluster.mkdir(parents=True, exist_ok=True)
            password_file = self.state / ".pgpass-init"
            password_file.touch(mode=0o600)
            password_file.write_text(self._secrets()["DAGSTER_PG_PASSWORD"])
            if user:
                shutil.chown(cluster, user)
                shutil.chown(password_file, user)
            try:
                command = [str(binaries / "initdb"), "-D", str(cluster), "-U", "mdp", "-A", "scram-sha-256",
                           f"--pwfile={password_file}", "-E", "UTF8"]
                subprocess.run(["runuser", "-u", user, "--", *command] if user else command, check=True,
                               capture_output=True, cwd="/")
            finally:
                password_file.unlink(missing_ok=True)
        sockets = self.state / "postgres-socket"
        sockets.mkdir(exist_ok=True)
        if user:
            shutil.chown(sockets, user)
        self._spawn("postgres", [str(binaries / "postgres"), "-D", str(cluster), "-h", "127.0.0.1",
                                 "-p", str(self.ports["postgres"]), "-k", str(sockets)], {}, user=user)
        _wait(lambda: _port_open(self.ports["postgres"]), timeout, "Postgres")
        _wait(self._create_database, timeout, "the dagster database")
        if user:  # runuser is the recorded PID; record the postmaster's own, which the cluster writes down
            self._pid_file("postgres").write_text((cluster / "postmaster.pid").read_text().splitlines()[0])

    def _create_database(self) -> bool:
        import psycopg2

        secrets_ = self._secrets()
        try:
            connection = psycopg2.connect(host="127.0.0.1", port=self.ports["postgres"], user="mdp",
                                          password=secrets_["DAGSTER_PG_PASSWORD"], dbname="postgres")
        except psycopg2.OperationalError:
            return False
        connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = 'dagster'")
                if cursor.fetchone() is None:
                    cursor.execute("CREATE DATABASE dagster")
        finally:
            connection.close()
        return True

    def _start_s3(self, timeout: float) -> None:
        self._spawn("s3", [_tool("moto_server"), "-H", "127.0.0.1", "-p", str(self.ports["s3"])], {})
        _wait(lambda: _http_ok(f"{self.s3_endpoint}/moto-api/"), timeout, "the S3 server")
        client = self.s3_client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        for bucket in (LANDING_BUCKET, DATA_BUCKET):
            if bucket not in existing:
                client.create_bucket(Bucket=bucket)
        client.put_bucket_versioning(Bucket=DATA_BUCKET, VersioningConfiguration={"Status": "Enabled"})

    def s3_client(self):
        import boto3

        secrets_ = self._secrets()
        return boto3.client("s3", endpoint_url=self.s3_endpoint, region_name="us-east-1",
                            aws_access_key_id=secrets_["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=secrets_["AWS_SECRET_ACCESS_KEY"])

    def _write_instance(self) -> None:
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DEPLOY / "dagster.yaml", self.dagster_home / "dagster.yaml")
        self.workspace.write_text(
            "load_from:\n  - grpc_server:\n      host: 127.0.0.1\n"
            f"      port: {self.ports['code-server']}\n      location_name: mdp\n"
        )
        (self.state / "ports.json").write_text(json.dumps(self.ports))

    def stop(self, grace: float = 30) -> dict[str, str]:
        """Stop every process by PID, newest first; returns how each one ended."""
        ended = {}
        for name in reversed(PROCESSES):
            pid = self.pid(name)
            if pid is None:
                ended[name] = "not running"
                self._pid_file(name).unlink(missing_ok=True)
                continue
            # Postgres: SIGINT is its fast shutdown. The others: SIGTERM to the whole group (run workers too).
            if name == "postgres":
                os.kill(pid, signal.SIGINT)
            else:
                _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self.pid(name) is not None and time.monotonic() < deadline:
                time.sleep(0.2)
            if self.pid(name) is not None:
                self._record_stragglers(name, pid)
                _signal_group(pid, signal.SIGKILL)
                ended[name] = "killed after the grace period"
            else:
                ended[name] = "stopped"
            self._pid_file(name).unlink(missing_ok=True)
        return ended


    def _record_stragglers(self, name: str, group: int) -> None:
        """Before a kill: which processes of the group were still there, and in what state (logs/stop.log)."""
        lines = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == group:
                    command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    wchan = (stat.parent / "wchan").read_text() if (stat.parent / "wchan").exists() else "?"
                    lines.append(f"  pid {stat.parent.name} state {fields[0]} wchan {wchan}: {command[:200]}")
            except (OSError, IndexError, ValueError):
                continue
        spy = shutil.which("py-spy") or (Path(sys.executable).parent / "py-spy")
        if Path(spy).exists():  # where each thread of the leader is stuck, when py-spy is installed
            dump = subprocess.run([str(spy), "dump", "--pid", str(group)], capture_output=True, text=True, timeout=30)
            lines.append(dump.stdout + dump.stderr)
        with (self.state / "logs" / "stop.log").open("a") as log:
            log.write(f"{time.strftime('%H:%M:%S')} {name} (group {group}) outlived SIGTERM:\n" + "\n".join(lines) + "\n")


@contextmanager
def _signals_not_ignored() -> Iterator[None]:
    """Children start with SIGINT, SIGTERM, SIGHUP and SIGQUIT at their defaults.

    A shell's `&` (and nohup, and make under them) leaves SIGINT ignored, and an ignored signal stays ignored
    across exec. Dagster's servers map SIGTERM to SIGINT's handler, so they would ignore SIGTERM too and never
    stop. A handled signal, unlike an ignored one, is reset to its default by exec: handle them for the
    moment of the fork."""
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be changed on the main thread; children then inherit what this process has
        return
    saved = {sig: signal.getsignal(sig) for sig in signals}
    try:
        for sig in signals:
            if saved[sig] == signal.SIG_IGN:
                signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _is_zombie(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, IndexError):
        return False
    if fields[0] == "Z":
        try:
            os.waitpid(pid, os.WNOHANG)  # our own child: reap it
        except ChildProcessError:
            pass
        return True
    return False


def _wait(ready, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.3)
    raise MdpError(f"{what} did not start within {timeout:.0f} s; see the logs in the stack's state folder")


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:  # refused, reset, or an HTTP error while the server starts
        return False


def _grpc_ready(port: int) -> bool:
    result = subprocess.run([_tool("dagster"), "api", "grpc-health-check", "-p", str(port)], capture_output=True)
    return result.returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop", "status", "env"])
    parser.add_argument("--state", default=str(REPOSITORY / ".mdp" / "stack"), help="where the stack keeps its data")
    parser.add_argument("--quiet-period", type=int, default=60, help="seconds a plate folder must stay unchanged")
    args = parser.parse_args(argv)
    state = Path(args.state)
    saved = state / "ports.json"
    stack = LocalStack(state, ports=json.loads(saved.read_text()) if saved.exists() else {},
                       quiet_period_seconds=args.quiet_period)
    if args.action == "start":
        stack.start()
        print(f"mdp stack running: UI {stack.webserver_url}, S3 {stack.s3_endpoint} "
              f"(drop plates under s3://{LANDING_BUCKET}/{LANDING_PREFIX}), state {stack.state}")
    elif args.action == "stop":
        for name, how in stack.stop().items():
            print(f"{name}: {how}")
    elif args.action == "env":  # for a shell that wants to talk to the stack: eval "$(... env)"
        print("\n".join(f"export {k}={v}" for k, v in stack.environment().items()))
    else:
        for name, pid in stack.status().items():
            print(f"{name}: {'running, pid ' + str(pid) if pid else 'stopped'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
