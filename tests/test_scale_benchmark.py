"""benchmarks/scale.py's floor and its measurements, without Ray (the benchmark itself runs on
Flower; these check that its floor does no training and that its monitor reads rounds right)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

from method_loop import run_in_process  # noqa: E402
from scale import BATCHED_VARIANT, NOOP, Monitor, NoOpClients, plan_runs  # noqa: E402
from toy_method import make_clients  # noqa: E402

from fedvpa.methods.reward_heads import FedAvgBT  # noqa: E402


def test_the_no_op_floor_sends_the_same_weights_and_never_moves_them() -> None:
    clients = make_clients(6, 0, dim=8)
    floor, trained = NoOpClients(model={"input_dim": 8}), FedAvgBT(model={"input_dim": 8})
    start = floor.init_server_state(0).arrays
    state, _, _ = run_in_process(floor, clients, rounds=3, per_round=3)
    assert state.arrays.keys() == start.keys()
    for key in start:
        np.testing.assert_array_equal(state.arrays[key], start[key])
    moved, _, _ = run_in_process(trained, clients, rounds=3, per_round=3)
    assert any(not np.array_equal(moved.arrays[k], start[k]) for k in start)  # the real one does


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the monitor never saw the row"
        time.sleep(0.01)


def test_the_monitor_times_each_new_row_and_sees_its_own_memory(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    with Monitor(metrics, interval=0.02) as mon:
        time.sleep(0.1)
        with metrics.open("ab") as fh:
            fh.write(b"{}\n{")  # a whole row and half of the next
        _wait_for(lambda: len(mon.row_times) == 1)
        time.sleep(0.05)
        assert len(mon.row_times) == 1  # half a row is not a row
        with metrics.open("ab") as fh:
            fh.write(b"}\n{}\n")  # two rows complete at once: both get the same time
        _wait_for(lambda: len(mon.row_times) == 3)
    assert len(mon.row_times) == 3
    assert mon.row_times[0] - mon.start >= 0.09
    assert mon.row_times[1] == mon.row_times[2] and mon.row_times[1] > mon.row_times[0]
    assert mon.peak_rss > 10 * 2**20  # this Python process alone holds more than 10 MiB


def test_bad_arguments_end_in_one_line_before_any_work(tmp_path: Path) -> None:
    import subprocess

    def scale(*args: str) -> subprocess.CompletedProcess[str]:
        script = str(REPO / "benchmarks" / "scale.py")
        return subprocess.run([sys.executable, script, *args], capture_output=True, text=True)

    unknown = scale("--methods", "no-such-method", "--out", str(tmp_path / "a"))
    assert unknown.returncode == 2 and "no-such-method" in unknown.stderr
    assert "Traceback" not in unknown.stderr and not (tmp_path / "a").exists()
    used = tmp_path / "b" / "fedavg-bt"
    used.mkdir(parents=True)
    (used / "metrics.jsonl").write_text("{}\n")
    again = scale("--out", str(tmp_path / "b"))
    assert again.returncode == 2 and "already holds runs" in again.stderr
    assert "Traceback" not in again.stderr
    assert scale("--rounds", "0").returncode == 2
    assert scale("--clients-per-node", "1", "-1").returncode == 2
    assert scale("--deployment", "-1").returncode == 2
    for bad in ("x:no-such-key=1", "x", "x:prior-max-components=many"):
        refused = scale("--variant", bad, "--out", str(tmp_path / "c"))
        last = refused.stderr.strip().splitlines()[-1]
        assert refused.returncode == 2 and last.startswith("scale.py: error: --variant"), bad
        assert "Traceback" not in refused.stderr and not (tmp_path / "c").exists()


def test_variants_run_right_after_their_latent_method_and_not_for_fedavg_bt() -> None:
    small = ("small", {"prior-max-components": 16})
    assert plan_runs(["fedvpa-gp", "fedavg-bt"], True, [BATCHED_VARIANT, small]) == [
        (NOOP, None),
        ("fedvpa-gp", None),
        ("fedvpa-gp", BATCHED_VARIANT),
        ("fedvpa-gp", small),
        ("fedavg-bt", None),
    ]
    assert plan_runs(["fedavg-bt"], False, [small]) == [("fedavg-bt", None)]
    only = plan_runs(["fedvpa-gp", "fedavg-bt"], False, [small], variants_only=True)
    assert only == [("fedvpa-gp", small), ("fedavg-bt", None)]
