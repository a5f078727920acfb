"""Run-folder files as hostile input (issue 13): checkpoints and client private-state files carry
their own SHA-256, are never unpickled, and a damaged one is skipped for the newest intact one or
refused in one line, never half-loaded."""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedvpa.errors import ConfigError
from fedvpa.methods.base import ServerState
from fedvpa.protocol import client as client_state
from fedvpa.protocol import run_folder, seeds
from fedvpa.protocol.run_folder import Checkpoint, DamagedFileError, RunFolder

TESTS_DIR = Path(__file__).resolve().parent
ROOT = TESTS_DIR.parent
IDENTITY = {"method": "toy", "seed": 3, "run_dir": "x"}


def draw() -> tuple[Any, ...]:
    """A few draws from every global generator the checkpoint restores."""
    return (
        random.random(),
        random.gauss(0.0, 1.0),
        np.random.normal(size=3).tolist(),
        np.random.randint(0, 1000, size=3).tolist(),
        torch.rand(3).tolist(),
        torch.randn(2).tolist(),
    )


def make_checkpoint(server_round: int) -> Checkpoint:
    random.gauss(0.0, 1.0)  # leaves a cached gaussian in both generators' states
    np.random.normal()
    return Checkpoint(
        server_round=server_round,
        state=ServerState(
            arrays={
                "w": np.arange(6, dtype=np.float32).reshape(2, 3) * server_round,
                "b": np.array(0.5, dtype=np.float64),
                "k": np.array([1, -2, 3], dtype=np.int64),
                "empty": np.zeros((0, 4), dtype=np.float16),
            },
            extra={
                "average/w": np.ones((2, 3), dtype=np.float32),
                "mask": np.array([True, False]),
                "file": np.array([7], dtype=np.uint8),  # a name np.savez(**kw) would choke on
            },
            info={"trained": {"1": [0, 2]}, "num_groups": 2, "note": None, "x": 0.1},
        ),
        metrics=[{"round": r, "train": {"loss": 1.0 / r}, "eval": None} for r in range(1, 3)],
        rng=seeds.capture_rng_state(),
        config=dict(IDENTITY),
    )


def save_rounds(run_dir: Path, rounds: range) -> dict[int, Checkpoint]:
    saved = {r: make_checkpoint(r) for r in rounds}
    for checkpoint in saved.values():
        run_folder.save_checkpoint(run_dir, checkpoint)
    return saved


def assert_same(a: Checkpoint, b: Checkpoint) -> None:
    assert a.server_round == b.server_round and a.version == b.version
    assert a.state.info == b.state.info and a.metrics == b.metrics
    assert a.config == b.config and a.rng == b.rng
    for left, right in ((a.state.arrays, b.state.arrays), (a.state.extra, b.state.extra)):
        assert list(left) == list(right)
        for key in left:
            assert left[key].dtype == right[key].dtype and left[key].shape == right[key].shape
            np.testing.assert_array_equal(left[key], right[key])


def warnings_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ------------------------------------------------------------------ round trip


def test_every_field_round_trips_and_rng_states_draw_alike(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(4)
    expected = draw()  # what the generators give right after the capture
    run_folder.save_checkpoint(tmp_path, checkpoint)
    draw()  # move every generator on
    loaded = run_folder.load_checkpoint(tmp_path)
    assert loaded is not None
    assert_same(loaded, checkpoint)
    json.dumps(loaded.rng)  # the RNG states are plain JSON
    seeds.restore_rng_state(loaded.rng)
    assert draw() == expected


def test_begin_restores_the_rng_and_record_keeps_the_newest_two(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path, IDENTITY, num_rounds=5)
    assert folder.begin(resume=False, record={"a": 1}) is None
    history: list[dict[str, Any]] = []
    for r in range(1, 4):
        history.append({"round": r})
        folder.record(r, make_checkpoint(r).state, history)
    expected = draw()
    assert [r for r, _ in run_folder.checkpoint_files(tmp_path)] == [2, 3]
    found = RunFolder(tmp_path, IDENTITY, num_rounds=5).begin(resume=True, record={"a": 1})
    assert found is not None and found.server_round == 3 and found.metrics == history
    assert draw() == expected
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        RunFolder(tmp_path, IDENTITY, num_rounds=5).check(resume=False)
    with pytest.raises(ConfigError, match=r"differs .*\['seed'\]") as err:
        RunFolder(tmp_path, {**IDENTITY, "seed": 4}, num_rounds=5).check(resume=True)
    assert err.value.path == str(run_folder.checkpoint_file(tmp_path, 3))


def test_object_arrays_are_refused_at_write_time(tmp_path: Path) -> None:
    bad = make_checkpoint(1)
    bad.state.extra["obj"] = np.array([{"a": 1}], dtype=object)
    with pytest.raises(TypeError, match="obj"):
        run_folder.save_checkpoint(tmp_path, bad)
    assert run_folder.checkpoint_files(tmp_path) == []
    with pytest.raises(TypeError, match="obj"):
        client_state.save_client_state(tmp_path, 1, 1, {"obj": bad.state.extra["obj"]})


# ------------------------------------------------------------------ damaged checkpoints


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def reseal_manifest(data: bytes, change: Any) -> bytes:
    """``data`` with its manifest edited by ``change`` and its self-digest recomputed: only a
    part digest (or size) then disagrees with the content."""
    start = len(run_folder.CHECKPOINT_MAGIC)
    end = data.index(b"\n", start)
    manifest = json.loads(data[start:end])
    manifest.pop("manifest_sha256")
    change(manifest)
    manifest["manifest_sha256"] = run_folder.sha256_hex(run_folder._canonical(manifest))
    return data[:start] + run_folder._canonical(manifest) + data[end:]


def wrong_digest(manifest: dict[str, Any]) -> None:
    manifest["parts"][1]["sha256"] = run_folder.sha256_hex(b"something else")


def wrong_size(manifest: dict[str, Any]) -> None:
    manifest["parts"][0]["bytes"] -= 1
    manifest["parts"][1]["bytes"] += 1


DAMAGE = {
    "truncated": lambda data: data[: len(data) // 2],
    "truncated in the manifest": lambda data: data[:40],
    "one byte short": lambda data: data[:-1],
    "empty": lambda data: b"",
    "flipped byte in the arrays": lambda data: flip(data, len(data) - 100),
    "flipped byte in the manifest": lambda data: flip(data, 30),
    "trailing bytes": lambda data: data + b"\0",
    "manifest digest does not match a part": lambda data: reseal_manifest(data, wrong_digest),
    "manifest sizes do not match the parts": lambda data: reseal_manifest(data, wrong_size),
    "a pickle": lambda data: pickle.dumps({"version": 1, "server_round": 4}),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_is_skipped_for_the_previous_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    saved = save_rounds(tmp_path, range(1, 5))
    newest = run_folder.checkpoint_file(tmp_path, 4)
    newest.write_bytes(DAMAGE[damage](newest.read_bytes()))
    with pytest.raises(DamagedFileError, match="round_4.ckpt"):
        run_folder.read_checkpoint(newest)
    with caplog.at_level(logging.WARNING):
        found = RunFolder(tmp_path, IDENTITY, num_rounds=9).check(resume=True)
    assert found is not None
    assert_same(found, saved[3])
    (message,) = warnings_in(caplog)
    assert "round_4.ckpt" in message and "round_3.ckpt" in message and "\n" not in message


def test_every_single_flipped_byte_is_detected(tmp_path: Path) -> None:
    data = run_folder.encode_checkpoint(make_checkpoint(2))
    assert run_folder.decode_checkpoint(data, 2).server_round == 2
    for index in range(len(data)):
        with pytest.raises(DamagedFileError):
            run_folder.decode_checkpoint(flip(data, index), 2)


def test_a_checkpoint_renamed_to_another_round_is_refused(tmp_path: Path) -> None:
    save_rounds(tmp_path, range(1, 3))
    os.replace(run_folder.checkpoint_file(tmp_path, 1), run_folder.checkpoint_file(tmp_path, 7))
    with pytest.raises(DamagedFileError, match="round 1, not 7"):
        run_folder.read_checkpoint(run_folder.checkpoint_file(tmp_path, 7))


def test_malformed_rng_state_with_matching_digests_is_damaged() -> None:
    checkpoint = make_checkpoint(1)
    checkpoint.rng = {**checkpoint.rng, "torch": "00"}
    data = run_folder.encode_checkpoint(checkpoint)
    with pytest.raises(DamagedFileError, match="RNG"):
        run_folder.decode_checkpoint(data, 1)


def test_no_intact_checkpoint_is_a_one_line_config_error(tmp_path: Path) -> None:
    save_rounds(tmp_path, range(1, 4))
    run_folder.checkpoint_file(tmp_path, 3).write_bytes(b"")
    path = run_folder.checkpoint_file(tmp_path, 2)
    path.write_bytes(flip(path.read_bytes(), 500))
    with pytest.raises(ConfigError) as err:
        RunFolder(tmp_path, IDENTITY, num_rounds=9).check(resume=True)
    line = err.value.one_line()
    assert "\n" not in line and str(run_folder.checkpoint_dir(tmp_path)) in line
    assert "round_3.ckpt (empty file)" in line and "round_2.ckpt" in line
    assert "no intact checkpoint" in line
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        RunFolder(tmp_path, IDENTITY, num_rounds=9).check(resume=False)


def test_saving_keeps_the_newest_intact_earlier_checkpoint(tmp_path: Path) -> None:
    save_rounds(tmp_path, range(1, 4))
    run_folder.checkpoint_file(tmp_path, 3).write_bytes(b"junk")
    stray = run_folder.checkpoint_dir(tmp_path) / ".round_4.ckpt.abc123.tmp"  # a killed write
    stray.write_bytes(b"half")
    run_folder.save_checkpoint(tmp_path, make_checkpoint(3))  # the resumed run redoes round 3
    assert [r for r, _ in run_folder.checkpoint_files(tmp_path)] == [2, 3]
    run_folder.checkpoint_file(tmp_path, 3).write_bytes(b"junk")
    run_folder.save_checkpoint(tmp_path, make_checkpoint(4))
    assert [r for r, _ in run_folder.checkpoint_files(tmp_path)] == [2, 4]
    assert not stray.exists()


# ------------------------------------------------------------------ older pickles


class Payload:
    """Unpickling this creates ``marker``: proof that a file's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def plant_pickle(run_dir: Path, name: str) -> Path:
    marker = run_dir.parent / f"{run_dir.name}-pwned"
    path = run_folder.checkpoint_dir(run_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(Payload(marker)))
    return marker


@pytest.mark.parametrize("resume", [True, False])
def test_an_old_pickle_checkpoint_is_refused_unread(tmp_path: Path, resume: bool) -> None:
    run_dir = tmp_path / "run"
    save_rounds(run_dir, range(1, 3))  # even next to intact checkpoints
    marker = plant_pickle(run_dir, run_folder.LEGACY_CHECKPOINT_FILE)
    with pytest.raises(ConfigError, match="older fedvpa.*start a new run folder") as err:
        RunFolder(run_dir, IDENTITY, num_rounds=9).check(resume=resume)
    assert "\n" not in err.value.one_line() and "latest.pkl" in err.value.one_line()
    with pytest.raises(ConfigError, match="older fedvpa"):
        run_folder.load_checkpoint(run_dir)
    assert not marker.exists()


def test_a_pickle_under_a_checkpoint_name_is_damaged_not_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    save_rounds(run_dir, range(1, 3))
    marker = plant_pickle(run_dir, "round_3.ckpt")
    with caplog.at_level(logging.WARNING):
        found = run_folder.load_checkpoint(run_dir)
    assert found is not None and found.server_round == 2
    assert "not a fedvpa checkpoint" in warnings_in(caplog)[0]
    assert not marker.exists()


# ------------------------------------------------------------------ client private state


def state_of(r: int) -> dict[str, np.ndarray]:
    return {"count": np.array([r]), "bias": np.full((2,), r / 3, dtype=np.float32)}


@pytest.mark.parametrize(
    "damage",
    ["truncated", "empty", "flipped byte in the arrays", "trailing bytes", "a pickle"],
)
def test_damaged_client_state_falls_back_to_the_previous_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    for r in (1, 2, 3):
        client_state.save_client_state(tmp_path, 5, r, state_of(r))
    newest = tmp_path / "client_5" / "round_3.npz"
    newest.write_bytes(DAMAGE[damage](newest.read_bytes()))
    with caplog.at_level(logging.WARNING):
        found = client_state.load_client_state(tmp_path, 5, max_round=3)
    assert found is not None and found[0] == 2
    for key, value in state_of(2).items():
        np.testing.assert_array_equal(found[1][key], value)
        assert found[1][key].dtype == value.dtype
    assert set(found[1]) == set(state_of(2))
    (message,) = warnings_in(caplog)
    assert "client 5" in message and "round_3.npz" in message


def test_client_state_files_are_ordinary_npz_with_a_digest_at_the_end(tmp_path: Path) -> None:
    client_state.save_client_state(tmp_path, 2, 1, {"file": np.array([1.5]), **state_of(1)})
    path = tmp_path / "client_2" / "round_1.npz"
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["bias", "count", "file"]
    assert path.read_bytes()[-78:-64] == run_folder.SEAL_TAG
    data = path.read_bytes()
    for index in range(len(data)):
        with pytest.raises(DamagedFileError):
            run_folder.unseal_arrays(flip(data, index), path)


def test_client_state_without_a_digest_or_with_pickled_objects_is_skipped(
    tmp_path: Path,
) -> None:
    client_state.save_client_state(tmp_path, 1, 1, state_of(1))
    folder = tmp_path / "client_1"
    np.savez(folder / "round_2.npz", count=np.array([2]))  # an older fedvpa's file
    marker = tmp_path / "pwned"
    np.savez(folder / "round_3.npz", evil=np.array([Payload(marker)], dtype=object))
    found = client_state.load_client_state(tmp_path, 1, max_round=9)
    assert found is not None and found[0] == 1
    assert not marker.exists()


def test_client_state_saving_keeps_an_intact_earlier_file(tmp_path: Path) -> None:
    for r in (1, 2, 3):
        client_state.save_client_state(tmp_path, 5, r, state_of(r))
    (tmp_path / "client_5" / "round_3.npz").write_bytes(b"")
    client_state.save_client_state(tmp_path, 5, 4, state_of(4))
    assert sorted(p.name for p in (tmp_path / "client_5").iterdir()) == [
        "round_2.npz",
        "round_4.npz",
    ]
    (tmp_path / "client_5" / "round_2.npz").write_bytes(b"x")
    assert client_state.load_client_state(tmp_path, 5, max_round=3) is None


# ------------------------------------------------------------------ the command line

# ``fedvpa run`` with data preparation replaced by the toy clients (no backbone, no download),
# everything else real: the experiment folder, the Flower simulation and the resume rules.
BOOT = """
import sys, types
from pathlib import Path
sys.path.insert(0, {tests!r})
import fedvpa.runner
from fedvpa.embeddings.pipeline import save_client_tensors
from fedvpa.experiment import PreparedData
from toy_method import make_clients

def prepare(data_cfg, emb_cfg, seed, *, progress=True):
    clients = make_clients(4, 2, dim=8)
    path = Path({data!r})
    save_client_tensors(clients, path)
    partition = types.SimpleNamespace(user_types=["helpful", "harmless"], config={{}})
    return PreparedData(partition, clients, path)

fedvpa.runner.prepare_clients = prepare
from fedvpa.cli import main
main()
"""


def fedvpa(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    code = BOOT.format(tests=str(TESTS_DIR), data=str(tmp_path / "clients.pt"))
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env={**os.environ, "FEDVPA_CACHE": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=600,
    )


def start_args(out: Path, rounds: int) -> list[str]:
    return [
        "--out",
        str(out),
        "run",
        "--method",
        "fedavg-bt",
        "--baseline",
        "",
        "--num-clients",
        "6",
        "--rounds",
        str(rounds),
        "--clients-per-round",
        "2",
        "--set",
        "local-steps=2",
        "--set",
        "eval-every=1",
    ]


def fake_experiment_folder(tmp_path: Path) -> Path:
    """An experiment folder as ``fedvpa run`` starts it, without training anything."""
    from fedvpa.experiment import ExperimentConfig

    exp = ExperimentConfig.from_flat(
        {"method": "fedavg-bt", "baseline": "", "num-clients": 6, "clients-per-round": 2}
    )
    out = tmp_path / "exp"
    run_folder.write_json(
        out / "config.json",
        {"config": exp.to_flat(), "explicit": [], "seed": 0, "versions": {}},
    )
    return out


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_cli_resume_with_nothing_intact_exits_2_in_one_line(tmp_path: Path) -> None:
    out = fake_experiment_folder(tmp_path)
    checkpoints = run_folder.checkpoint_dir(out / "fedavg-bt")
    checkpoints.mkdir(parents=True)
    (checkpoints / "round_2.ckpt").write_bytes(b"")
    (checkpoints / "round_1.ckpt").write_bytes(b"FEDVPA-CHECK")
    result = fedvpa(tmp_path, "run", "--resume", str(out))
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result)
    assert "no intact checkpoint" in line and str(checkpoints) in line
    assert "Traceback" not in result.stderr


def test_cli_refuses_an_old_pickle_checkpoint_without_running_it(tmp_path: Path) -> None:
    out = fake_experiment_folder(tmp_path)
    marker = plant_pickle(out / "fedavg-bt", run_folder.LEGACY_CHECKPOINT_FILE)
    result = fedvpa(tmp_path, "run", "--resume", str(out))
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result)
    assert "older fedvpa" in line and "latest.pkl" in line
    assert not marker.exists()


@pytest.mark.slow
def test_cli_resume_skips_a_damaged_newest_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    first = fedvpa(tmp_path, *start_args(out, rounds=3))
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = out / "fedavg-bt"
    before = json.loads((run_dir / "final.json").read_text())
    assert [r for r, _ in run_folder.checkpoint_files(run_dir)] == [2, 3]
    # As if killed after round 3's checkpoint was written, which then got damaged.
    (run_dir / "final.json").unlink()
    newest = run_folder.checkpoint_file(run_dir, 3)
    newest.write_bytes(newest.read_bytes()[:-10])
    result = fedvpa(tmp_path, "run", "--resume", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    skipped = [line for line in result.stderr.splitlines() if "damaged checkpoint" in line]
    assert len(skipped) == 1 and "round_3.ckpt" in skipped[0] and "round_2.ckpt" in skipped[0]
    after = json.loads((run_dir / "final.json").read_text())
    assert after["resumed_from"] == 2 and after["eval"] == before["eval"]
    assert [r for r, _ in run_folder.checkpoint_files(run_dir)] == [2, 3]
    assert run_folder.read_checkpoint(newest).server_round == 3


def test_a_run_resumes_only_on_the_data_it_started_with(tmp_path: Path) -> None:
    """The client tensors' path stays when their data file is edited in place (they are rebuilt
    under it), so the identity carries their digest: another digest is refused, and a checkpoint
    of a version before the digest (none recorded) still resumes."""
    old = tmp_path / "old"
    folder = RunFolder(old, IDENTITY, num_rounds=5)  # an earlier version: no data digest
    folder.begin(resume=False, record={})
    folder.record(1, make_checkpoint(1).state, [{"round": 1}])
    assert RunFolder(old, {**IDENTITY, "data_digest": "d1"}, 5).check(resume=True) is not None
    new = tmp_path / "new"
    folder = RunFolder(new, {**IDENTITY, "data_digest": "d1"}, num_rounds=5)
    folder.begin(resume=False, record={})
    folder.record(1, make_checkpoint(1).state, [{"round": 1}])
    assert RunFolder(new, {**IDENTITY, "data_digest": "d1"}, 5).check(resume=True) is not None
    with pytest.raises(ConfigError, match=r"differs .*\['data_digest'\]"):
        RunFolder(new, {**IDENTITY, "data_digest": "d2"}, 5).check(resume=True)
    with pytest.raises(ConfigError, match=r"differs .*\['seed'\]"):  # other keys stay strict
        RunFolder(old, {**IDENTITY, "seed": 9, "data_digest": "d1"}, 5).check(resume=True)


def test_the_identity_carries_the_tensors_digest_where_they_have_one(tmp_path: Path) -> None:
    from fedvpa.config import FederationSettings
    from fedvpa.federation.run_config import FederationConfig

    tensors = tmp_path / "clients.pt"
    config = FederationConfig(
        settings=FederationSettings(method="fedavg-bt"),
        method_kwargs={},
        data_path=str(tensors),
        run_dir=str(tmp_path / "run"),
        num_clients=4,
    )
    assert "data_digest" not in config.identity()  # tensors prepared elsewhere
    (tmp_path / "clients.pt.partition").write_text("abc\n")
    assert config.identity()["data_digest"] == "abc"
