"""Flower's deployment engine on localhost: a SuperLink, two SuperNodes, ``flwr run``.

Two runs, about a minute each, so that CI stays short: two ``--insecure`` SuperNodes of which
one is killed after round 1 (round 1 is the plain two-node run), and, over TLS with SuperNode
authentication (throw-away certificates and keys from ``certificates.py``), one registered
SuperNode holding both clients (``clients-per-node`` 2) next to an unregistered intruder.
docs/deployment.md shows the same commands.

Every process this test starts is stopped by its PID (process group) in ``finally``, including
the ServerApp/ClientApp subprocesses the SuperLink and SuperNodes spawn.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(TESTS_DIR))

from certificates import make_node_key, make_tls_files  # noqa: E402
from toy_method import make_clients  # noqa: E402

ROUNDS = 2
# generous: a busy 2-core machine took 110 s for the 2 rounds, and CI runs a second test
# worker beside this one
TIMEOUT_S = 420.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before opening {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"port {port} not open after {timeout} s")


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (the SuperLink detaches its SuperExec and app processes
    into their own sessions, so a process-group kill alone would miss them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the process group this test created (the process and its app subprocesses)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            except ProcessLookupError:
                pass
    else:  # the leader exited: its children may not have
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def json_output(done: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    """The JSON object a ``flwr ... --format json`` command printed."""
    text = done.stdout.decode()
    return json.loads(text[text.index("{") : text.rindex("}") + 1])


class Federation:
    """The files, environment and processes of one localhost federation (2 clients, toy method).

    ``connection`` holds the lines of the ``[superlink.test]`` connection besides its address
    (``insecure = true`` or ``root-certificates = "..."``).
    """

    def __init__(
        self,
        tmp_path: Path,
        connection: list[str],
        rounds: int = ROUNDS,
        client_timeout: float = 60.0,
        clients_per_node: int = 1,
        eval_every: int = 1,
    ) -> None:
        from fedvpa.embeddings.pipeline import save_client_tensors

        self.tmp_path = tmp_path
        self.data = tmp_path / "clients.pt"
        save_client_tensors(make_clients(2, 0, dim=8), self.data)
        self.run_dir = tmp_path / "run"
        home = tmp_path / "flwr_home"
        home.mkdir()
        self.link_port = free_port()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "test"\n\n[superlink.test]\n'
            f'address = "127.0.0.1:{self.link_port}"\n' + "".join(f"{x}\n" for x in connection)
        )
        self.run_config = tmp_path / "run.toml"
        self.run_config.write_text(
            "\n".join(
                [
                    # round 2 opens with a locate exchange; its train messages carry only
                    # the weights' digest, so Context.state must survive between the two
                    'method = "toy_method:toy_from_config"',
                    f'data-path = "{self.data}"',
                    f'run-dir = "{self.run_dir}"',
                    "num-clients = 2",
                    f"num-server-rounds = {rounds}",
                    "clients-per-round = 2",
                    f"eval-every = {eval_every}",
                    "node-wait-timeout = 60.0",
                    f"client-timeout = {client_timeout}",
                    f"clients-per-node = {clients_per_node}",
                ]
            )
            + "\n"
        )
        self.env = {
            **os.environ,
            "FLWR_HOME": str(home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
            "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
        }
        self.logs = tmp_path / "logs"
        self.logs.mkdir()
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            args,
            cwd=self.tmp_path,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def start_superlink(self, extra: list[str]) -> subprocess.Popen[bytes]:
        link = self.start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                *extra,
                "--disable-runtime-dependency-installation",
                "--port",
                str(self.link_port),
            ],
        )
        wait_port(self.link_port, link)
        return link

    def start_supernode(
        self, name: str, partition: int, extra: list[str]
    ) -> subprocess.Popen[bytes]:
        return self.start(
            name,
            [
                str(BIN / "flower-supernode"),
                *extra,
                "--superlink",
                f"127.0.0.1:{self.link_port}",
                "--port",
                str(free_port()),
                "--node-config",
                f'partition-id={partition} num-partitions=2 data-path="{self.data}"',
            ],
        )

    def flwr(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(BIN / "flwr"), *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            timeout=timeout,
        )

    def detail(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.logs.iterdir()))

    def submit(self) -> None:
        done = self.flwr(["run", str(REPO), "test", "--run-config", str(self.run_config)])
        assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()

    def metrics(self) -> list[dict[str, Any]]:
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]

    def wait_final(self, timeout: float = TIMEOUT_S) -> dict[str, Any]:
        final = self.run_dir / "final.json"
        deadline = time.monotonic() + timeout
        while not final.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert final.exists(), f"no results after {timeout} s:\n{self.detail()}"
        return dict(json.loads(final.read_text()))

    def run_and_check(self) -> None:
        """``flwr run`` the toy method for ``ROUNDS`` rounds and check its results."""
        self.submit()
        result = self.wait_final()
        assert result["final_round"] == ROUNDS and result["failures_total"] == 0
        assert result["seen_clients"] == [0, 1]
        rows = self.metrics()
        assert [r["round"] for r in rows] == [1, 2]
        assert all(r["replies"] == 2 and "eval" in r for r in rows)
        assert "locate_replies" not in rows[0] and rows[0]["weights_reused"] == 0
        assert rows[1]["locate_replies"] == 2 and rows[1]["weights_reused"] == 2
        assert result["eval"]["eval/num_clients"] == 2

    def stop_all(self) -> None:
        spawned = [child for proc in self.procs for child in descendants(proc.pid)]
        for proc in reversed(self.procs):
            stop(proc)
        for pid in spawned:
            kill_pid(pid)


@pytest.mark.slow
def test_a_supernode_that_disappears_does_not_hang_the_server(tmp_path: Path) -> None:
    """One of two SuperNodes is killed (SIGKILL, with its ClientApp) after round 1: the server
    waits at most ``client-timeout`` per exchange for it, counts it as timed out, goes on with
    the other client (``min-reply-fraction`` 0.5) and finishes every round."""
    # Evaluation in the last round only: round 2 then waits out two exchanges (locate, train)
    # for the dead node, round 3 three. A ClientApp's start and reply take a few seconds alone,
    # but over 15 s with three test workers on 2 cores (both nodes then timed out in round 1).
    rounds, client_timeout = 3, 25.0
    fed = Federation(
        tmp_path, ["insecure = true"], rounds=rounds, client_timeout=client_timeout, eval_every=3
    )
    try:
        fed.start_superlink(["--insecure"])
        nodes = [fed.start_supernode(f"supernode{i}", i, ["--insecure"]) for i in range(2)]
        fed.submit()
        deadline = time.monotonic() + TIMEOUT_S
        while not fed.metrics() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert fed.metrics(), f"round 1 did not finish in {TIMEOUT_S} s:\n{fed.detail()}"
        victim = nodes[1]
        doomed = descendants(victim.pid)
        os.killpg(victim.pid, signal.SIGKILL)
        for pid in doomed:
            kill_pid(pid)
        victim.wait(timeout=10)
        # each later round has at most three exchanges (locate, train, evaluate) to wait out
        result = fed.wait_final(TIMEOUT_S + 3 * rounds * client_timeout)
    finally:
        fed.stop_all()
    rows = fed.metrics()
    assert [r["round"] for r in rows] == list(range(1, rounds + 1)), fed.detail()
    assert result["final_round"] == rounds
    assert rows[0]["replies"] == 2 and rows[0]["failures"] == 0
    # The killed node may still have answered the round that was in flight; after that it is gone.
    assert rows[-1]["replies"] == 1 and rows[-1]["failures"] == 1, rows[-1]
    assert rows[-1]["eval_replies"] == 1 and rows[-1]["eval_failures"] == 1, rows[-1]
    assert result["failures_total"] >= 1
    assert result["eval"]["eval/num_clients"] == 1


@pytest.mark.slow
def test_tls_and_supernode_auth_on_localhost(tmp_path: Path) -> None:
    """A federation over TLS with SuperNode authentication (Flower 1.42).

    A throw-away CA and a server certificate for 127.0.0.1/localhost are made at test time. The
    SuperLink serves its Fleet, Control and Runtime APIs over HTTPS (``--ssl-ca-certfile
    --ssl-certfile --ssl-keyfile``) and, with ``--enable-supernode-auth``, refuses SuperNodes
    registering themselves: each node's public key (P-384, OpenSSH format) is added beforehand with
    ``flwr supernode register <key.pub> test`` (over the TLS Control API), and the node signs its
    requests with the private key (``--auth-supernode-private-key``). A SuperNode whose key was
    not registered is refused deterministically: its activation gets HTTP 412 "Failed to
    activate SuperNode" (API error 2004), which Flower does not retry, and the process logs
    exit code 305 (``SUPERNODE_CONNECTION_ERROR``) and ends with a non-zero status before the run
    starts.

    The registered node holds both clients (``clients-per-node`` 2): it gets one message per
    phase for the two (each ClientApp process of the deployment engine serves the whole batch),
    and the locate-then-train round still finds each client's kept weights and private state.
    """
    certs = tmp_path / "certificates"
    ca, server_cert, server_key = make_tls_files(certs)
    keys = [make_node_key(certs, "supernode0")]
    intruder_key, _ = make_node_key(certs, "intruder")  # never registered
    fed = Federation(tmp_path, [f'root-certificates = "{ca}"'], clients_per_node=2)
    try:
        fed.start_superlink(
            [
                "--ssl-ca-certfile",
                str(ca),
                "--ssl-certfile",
                str(server_cert),
                "--ssl-keyfile",
                str(server_key),
                "--enable-supernode-auth",
            ]
        )
        registered = set()
        for _, public in keys:
            reg = fed.flwr(["supernode", "register", str(public), "test", "--format", "json"])
            assert reg.returncode == 0, reg.stdout.decode() + reg.stderr.decode()
            registered.add(str(json_output(reg)["node-id"]))
        assert len(registered) == 1

        intruder = fed.start_supernode(
            "intruder",
            0,
            ["--root-certificates", str(ca), "--auth-supernode-private-key", str(intruder_key)],
        )
        try:
            code = intruder.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"unregistered SuperNode still running after 90 s:\n{fed.detail()}")
        log = (fed.logs / "intruder.log").read_text()
        # flwr_exit logs code 305; the process itself ends with 1 through uvicorn's shutdown
        assert code != 0, log
        assert "Exit Code: 305" in log and "Failed to activate SuperNode" in log, log

        for i, (private, _) in enumerate(keys):
            fed.start_supernode(
                f"supernode{i}",
                i,
                ["--root-certificates", str(ca), "--auth-supernode-private-key", str(private)],
            )
        fed.run_and_check()
        # only the registered key is known to the SuperLink, and its node is online
        listed = fed.flwr(["supernode", "list", "test", "--format", "json"])
        assert listed.returncode == 0, listed.stdout.decode() + listed.stderr.decode()
        nodes = json_output(listed)["nodes"]
        assert {n["node-id"] for n in nodes} == registered, nodes
        assert all(n["status"] == "online" for n in nodes), nodes
    finally:
        fed.stop_all()
