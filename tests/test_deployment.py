"""Flower's deployment engine on localhost: a SuperLink, two SuperNodes, ``flwr run``.

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

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(TESTS_DIR))

from toy_method import make_clients  # noqa: E402

ROUNDS = 2
TIMEOUT_S = 120.0


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


@pytest.mark.slow
def test_two_supernodes_on_localhost(tmp_path: Path) -> None:
    from fedvpa.embeddings.pipeline import save_client_tensors

    data = tmp_path / "clients.pt"
    save_client_tensors(make_clients(2, 0, dim=8), data)
    run_dir = tmp_path / "run"
    home = tmp_path / "flwr_home"
    home.mkdir()
    link_port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\n'
        f'address = "127.0.0.1:{link_port}"\ninsecure = true\n'
    )
    run_config = tmp_path / "run.toml"
    run_config.write_text(
        "\n".join(
            [
                # round 2 opens with a locate exchange; its train messages carry only
                # the weights' digest, so Context.state must survive between the two
                'method = "toy_method:toy_from_config"',
                f'data-path = "{data}"',
                f'run-dir = "{run_dir}"',
                "num-clients = 2",
                f"num-server-rounds = {ROUNDS}",
                "clients-per-round = 2",
                "eval-every = 1",
                "node-wait-timeout = 60.0",
                "client-timeout = 60.0",
            ]
        )
        + "\n"
    )
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            args,
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(proc)
        return proc

    try:
        link = start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--insecure",
                "--disable-runtime-dependency-installation",
                "--port",
                str(link_port),
            ],
        )
        wait_port(link_port, link)
        for i in range(2):
            node_port = free_port()
            start(
                f"supernode{i}",
                [
                    str(BIN / "flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{link_port}",
                    "--port",
                    str(node_port),
                    "--node-config",
                    f'partition-id={i} num-partitions=2 data-path="{data}"',
                ],
            )
        submit = subprocess.run(
            [str(BIN / "flwr"), "run", str(REPO), "test", "--run-config", str(run_config)],
            cwd=REPO,
            env=env,
            capture_output=True,
            timeout=60,
        )
        assert submit.returncode == 0, submit.stdout.decode() + submit.stderr.decode()
        final = run_dir / "final.json"
        deadline = time.monotonic() + TIMEOUT_S
        while not final.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        detail = "\n".join(p.read_text()[-3000:] for p in sorted(logs.iterdir()))
        assert final.exists(), f"no results after {TIMEOUT_S} s:\n{detail}"
        result = json.loads(final.read_text())
        assert result["final_round"] == ROUNDS and result["failures_total"] == 0
        assert result["seen_clients"] == [0, 1]
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rows] == [1, 2]
        assert all(r["replies"] == 2 and "eval" in r for r in rows)
        assert "locate_replies" not in rows[0] and rows[0]["weights_reused"] == 0
        assert rows[1]["locate_replies"] == 2 and rows[1]["weights_reused"] == 2
        assert result["eval"]["eval/num_clients"] == 2
    finally:
        spawned = [child for proc in procs for child in descendants(proc.pid)]
        for proc in reversed(procs):
            stop(proc)
        for pid in spawned:
            kill_pid(pid)
