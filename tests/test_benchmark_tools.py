"""The measuring tools in benchmarks/: they must measure what they say (a sweep variant that
silently runs the defaults, or a timing table that compares the wrong trees, would publish a
wrong number)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedvpa.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import fed_sweep  # noqa: E402
import gpu_backbone  # noqa: E402
import local_step  # noqa: E402
import selector_diagnosis  # noqa: E402


def test_a_sweep_variant_that_a_method_fixes_is_refused_not_measured_as_the_default() -> None:
    # fedvpa-gp fixes use-ortho = true: this variant once ran the default under another name.
    with pytest.raises(ConfigError, match="fedvpa-gp fixes use-ortho"):
        fed_sweep.run_one({"data": "synthetic-2", "use-ortho": False}, "fedvpa-gp", 0, 5)


def _fed_sweep_stderr_lines(*args: str) -> list[str]:
    """``fed_sweep.py``'s standard error, one entry a line, after checking it exited with 2."""
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "fed_sweep.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    return out.stderr.strip().splitlines()


def test_a_refused_sweep_setting_is_one_line_and_exit_code_2() -> None:
    config = str(REPO / "conf" / "synthetic-4.toml")
    lines = _fed_sweep_stderr_lines(
        "--config", config, "--method", "fedvpa-gp", "--variant", "x:use-ortho=false"
    )
    assert lines == [
        "fed_sweep: field 'use-ortho': fedvpa-gp fixes use-ortho = True (given: False); "
        "choose the method that has it"
    ]


def _sweep_row(variant: str, seed: int, seen: float, unseen: float, last10: float) -> str:
    return json.dumps(
        {
            "config": "conf/plural-4.toml",
            "method": "fedvpl",
            "variant": variant,
            "seed": seed,
            "final": {"seen": seen, "unseen": unseen},
            "last10_mean": last10,
        }
    )


def test_paired_changes_are_seed_by_seed_differences_with_their_standard_error(
    tmp_path: Path,
) -> None:
    base = tmp_path / "base.json"
    base.write_text(
        "\n".join(
            _sweep_row("default", seed, *figures)
            for seed, figures in enumerate(
                [(70.0, 60.0, 71.0), (80.0, 65.0, 79.0), (75.0, 70.0, 75.0)]
            )
        )
    )
    # "new" measured seeds 0 and 1 only (seed 2 is left out of the pairing), and seed 1 twice:
    # the re-run replaces the first line.
    new = tmp_path / "new.json"
    new.write_text(
        "\n".join(
            _sweep_row("new", seed, *figures)
            for seed, figures in [
                (0, (71.0, 62.0, 72.0)),
                (1, (0.0, 0.0, 0.0)),
                (1, (84.0, 65.0, 80.0)),
            ]
        )
        + "\n"
    )
    groups = fed_sweep.load_rows([str(base), str(new)])
    seeds, diffs = fed_sweep.paired_differences(
        groups[("plural-4", "fedvpl", "new")], groups[("plural-4", "fedvpl", "default")]
    )
    assert seeds == [0, 1]
    # differences: seen 1 and 4 (mean 2.5, sd 2.121, se 1.5); unseen 2 and 0; last 10: 1 and 1
    assert diffs["seen"] == pytest.approx((2.5, 1.5))
    assert diffs["unseen"] == pytest.approx((1.0, 1.0))
    assert diffs["seen, last 10 evals"] == pytest.approx((1.0, 0.0))


def test_summarise_refuses_a_malformed_sweep_line_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "sweep.json"
    bad.write_text(_sweep_row("default", 0, 70.0, 60.0, 71.0) + '\n{"seed": 1}\n')
    lines = _fed_sweep_stderr_lines("--summarise", str(bad), "--against", "default")
    assert lines == [f"fed_sweep: {bad}:2: not a sweep row (KeyError: 'config')"]
    good = tmp_path / "good.json"
    good.write_text(_sweep_row("new", 0, 70.0, 60.0, 71.0) + "\n")
    lines = _fed_sweep_stderr_lines("--summarise", str(good), "--against", "default")
    assert lines == ["fed_sweep: no setting 'default' in the sweep files (settings: new)"]


def test_local_step_times_every_method_on_one_client() -> None:
    args = local_step.argparse.Namespace(pairs=6, components=20, repeats=1, batch=1)
    for name in local_step.METHODS:
        seconds = local_step.measure(name, args)
        assert 0 < seconds < 60, name


def test_local_step_times_a_batch_of_clients_per_client() -> None:
    args = local_step.argparse.Namespace(pairs=6, components=20, repeats=1, batch=3)
    for name in ("fedavg-bt", "fedvpa-gp", "fedvpa-gp+batched"):
        seconds = local_step.measure(name, args)
        assert 0 < seconds < 60, name


def test_local_step_compares_source_trees_in_one_invocation() -> None:
    src = str(REPO / "src")
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "local_step.py"), "--src", src, "--src", src]
        + ["--rounds", "1", "--repeats", "1", "--pairs", "6", "--methods", "fedavg-bt"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    rows = [line for line in out.stdout.splitlines() if line.startswith(f"| {src} |")]
    assert len(rows) == 2
    assert "x)" in rows[1] and "x)" not in rows[0]  # ratios against the first tree


def test_the_unmasked_embedding_pass_gives_the_masked_ones_vectors() -> None:
    """gpu_backbone's no-mask variants time a faster kernel path, not other embeddings: on a
    batch without padding, the backbone's forward gives the same last-token states."""
    import torch

    model = gpu_backbone.build_model(gpu_backbone.TINY, torch.float32, "cpu", causal_lm=False)
    ids = torch.randint(4, gpu_backbone.TINY["vocab"], (3, 12), generator=torch.Generator())
    masked = gpu_backbone.embed_call(model, ids, use_mask=True)()
    unmasked = gpu_backbone.embed_call(model, ids, use_mask=False)()
    assert masked.shape == (3, gpu_backbone.TINY["hidden"])
    torch.testing.assert_close(unmasked, masked, rtol=1e-5, atol=1e-5)


def test_gpu_benchmark_smoke_run_on_the_cpu(tmp_path: Path) -> None:
    """The prepared GPU script runs end to end (tiny model, CPU) and writes every section."""
    import json

    out = tmp_path / "gpu.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_backbone.py"), "--tiny"]
        + ["--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert {r["variant"] for r in result["embed"]} == {"eager", "eager-nomask"}
    assert all(r["tokens_per_s"] > 0 for r in result["embed"])
    assert result["selector"]["seconds_per_client_round"] > 0
    assert "embedding pass:" in run.stdout and "selector update:" in run.stdout
    try:
        import peft  # noqa: F401
        import trl  # noqa: F401
    except ImportError:
        assert "skipped" in result["dpo"]
    else:
        assert result["dpo"]["seconds_per_step"] > 0


def _opposed_types(n_clients: int = 20, pairs: int = 12, dim: int = 16):
    """Two user types that label the same kind of pairs in opposite ways: no single preference
    fits both, a preference conditioned on the type fits both."""
    from types import SimpleNamespace

    import torch

    from fedvpa.embeddings.tensors import PairTensors

    gen = torch.Generator().manual_seed(0)
    axis = torch.randn(dim, generator=gen)
    rows = []
    for cid in range(n_clients):
        a, b = torch.randn(pairs, dim, generator=gen), torch.randn(pairs, dim, generator=gen)
        prefers_a = ((a - b) @ axis > 0).float()
        t = cid % 2
        label = prefers_a if t == 0 else 1 - prefers_a
        rows.append((SimpleNamespace(client_id=cid), PairTensors(a, b, label), t))
    return rows


def test_a_selector_given_the_type_fits_opposed_types_and_a_constant_z_cannot() -> None:
    import torch

    from fedvpa.model.config import ModelConfig

    cfg = ModelConfig(input_dim=16, feature_dim=8)
    rows = _opposed_types()
    one_hot = {c.client_id: torch.eye(2)[t] for c, _, t in rows}
    same = {c.client_id: torch.ones(2) for c, _, _ in rows}

    def train_accuracy(latent: dict) -> float:
        model = selector_diagnosis.fit_fixed_latent(
            [(c, p, latent[c.client_id]) for c, p, _ in rows], cfg, seed=0, steps=300, lr=1e-2
        )
        predictor = selector_diagnosis.FixedLatentPredictor(model, latent)
        hits = [
            ((predictor.prob_a_preferred(c, p) > 0.5).float() == p.label).float().mean()
            for c, p, _ in rows
        ]
        return float(torch.stack(hits).mean())

    assert train_accuracy(one_hot) > 0.9
    assert train_accuracy(same) < 0.65


def test_axis_separability_reads_each_axis_from_the_means() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    names = [f"{t}-{d}" for t in ("formal", "casual") for d in ("brief", "thorough")] * 10
    means = np.array(
        [[1.0 if n.startswith("formal") else -1.0, 0.0] for n in names]
    ) + 0.1 * rng.standard_normal((len(names), 2))
    tone, depth = selector_diagnosis.axis_separability(means, names)
    assert tone == 1.0  # the first coordinate is the tone pole
    assert depth < 0.75  # nothing in the means says the depth pole


def test_selector_diagnosis_refuses_a_missing_config_in_one_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "selector_diagnosis.py")]
        + ["--config", str(tmp_path / "missing.toml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"selector_diagnosis: {tmp_path / 'missing.toml'}: config file not found"
    ]


def test_group_choice_places_every_seen_client_both_ways_and_scores_the_true_types() -> None:
    import group_choice

    flat = {"data": "synthetic-4", "num-clients": 24, "synthetic-pairs-per-type": 100}
    flat |= {"clients-per-round": 6, "num-server-rounds": 3, "latent-dim": 4}
    rows = group_choice.run(flat, "fedvpa-gp", 0, [1, 2])
    assert [r["round"] for r in rows] == [1, 2]  # stops after the last asked round
    for row in rows:  # after a round's aggregation the server holds its clients' posteriors
        for placement in ("encoder", "population"):
            found = row[placement]
            assert 2 <= found["chosen_k"] <= 4  # at most latent-dim groups
            assert set(found["silhouette_per_k"]) <= {"2", "3", "4"}
    with pytest.raises(ConfigError, match="no latent z"):
        group_choice.run({**flat, "baseline": ""}, "fedavg-bt", 0, [1])
    with pytest.raises(ConfigError, match=r"rounds must lie in 1 \.\. 3"):
        group_choice.run(flat, "fedvpa-gp", 0, [2, 4])  # round 4 would never be reached


def test_group_choice_scores_separated_types_as_found_and_mixed_ones_as_not() -> None:
    import group_choice
    import numpy as np

    rng = np.random.default_rng(0)
    centres = np.eye(4)[:, :3] * 10.0  # four types, far apart in 3 dimensions
    types = np.repeat(np.arange(4), 15)
    points = centres[types] + rng.normal(scale=0.3, size=(60, 3))
    found = group_choice.describe(points, types, k_max=6, seed=0)
    assert found["chosen_k"] == 4 and found["ari_at_true_k"] == 1.0
    assert found["silhouette_of_types"] > 0.8
    shuffled = group_choice.describe(points, rng.permutation(types), k_max=6, seed=0)
    assert abs(shuffled["ari_at_true_k"]) < 0.2 and shuffled["silhouette_of_types"] < 0.1


def test_group_z_scores_both_group_means_and_the_clients_own_z() -> None:
    import group_z

    flat = {"data": "synthetic-4", "num-clients": 24, "synthetic-pairs-per-type": 100}
    flat |= {"clients-per-round": 6, "num-server-rounds": 2, "latent-dim": 4}
    row = group_z.run(flat, "fedvpa-gp", 0)
    assert row["round"] == 2  # the run went to its last round, where evaluation reads z
    # after round 1 the server holds posteriors, so both placements exist; conflict pairs of
    # seen clients are scored (NaN would mean none were)
    assert set(row) == {"data", "seed", "round", "own", "encoder", "population"}
    for name in ("own", "encoder", "population"):
        assert len(row[name]) == 3 and np.isfinite(row[name]).all(), (name, row[name])
    with pytest.raises(ConfigError, match="no latent z"):
        group_z.run({**flat, "baseline": ""}, "fedavg-bt", 0)


def test_group_predictor_reads_its_types_z() -> None:
    import group_z
    import torch

    from fedvpa.embeddings.tensors import PairTensors
    from fedvpa.model.config import ModelConfig
    from fedvpa.model.vpl import VariationalPreferenceModel

    model = VariationalPreferenceModel(ModelConfig(input_dim=6, latent_dim=2)).eval()
    torch.nn.init.normal_(model.selector.bias.weight)  # so that z moves the logit
    zs = {0: torch.tensor([3.0, 0.0]), 1: torch.tensor([-3.0, 1.0])}
    predictor = group_z.GroupPredictor(model, zs)
    pairs = PairTensors(torch.randn(5, 6), torch.randn(5, 6), torch.ones(5))

    class Client:
        def __init__(self, type_index: int) -> None:
            self.type_index = type_index

    for t, z in zs.items():
        with torch.no_grad():
            want = torch.sigmoid(model.logit(pairs.emb_a, pairs.emb_b, z))
        got = predictor.prob_a_preferred(Client(t), pairs)  # type: ignore[arg-type]
        torch.testing.assert_close(got, want)
    assert not torch.allclose(
        predictor.prob_a_preferred(Client(0), pairs),  # type: ignore[arg-type]
        predictor.prob_a_preferred(Client(1), pairs),  # type: ignore[arg-type]
    )


def test_group_z_group_means_average_each_types_seen_placements() -> None:
    import group_z

    points = np.array([[0.0, 2.0], [2.0, 0.0], [4.0, 4.0], [10.0, 10.0]], dtype=np.float32)
    means = group_z.group_means(points, np.array([0, 0, 1, 1]))
    assert sorted(means) == [0, 1]
    assert means[0].tolist() == [1.0, 1.0] and means[1].tolist() == [7.0, 7.0]


def test_faults_benchmark_draws_other_failing_clients_per_faulty_run(tmp_path: Path) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(
        "num-clients = 8\npairs-per-client = 8\nfraction-unseen = 0.25\nnum-server-rounds = 2\n"
        "clients-per-round = 4\neval-every = 1\n"
    )
    rows = tmp_path / "faults.jsonl"
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "faults.py"), "--config", str(config)]
        + ["--methods", "fedavg-bt", "--seeds", "3", "--fault-draws", "2", "--last", "1"]
        + ["--json", str(rows)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    (row,) = [json.loads(line) for line in rows.read_text().splitlines()]
    assert [row[k]["fault_seed"] for k in ("clean", "faulty", "faulty1")] == [3, 3, 1003]
    assert row["clean"]["failures"] == 0
    assert row["faulty"]["failures"] == row["faulty1"]["failures"] == 2  # 1 of 4, 2 rounds
    assert "faulty runs apart by" in out.stdout
    assert "(faulty1)" in out.stdout
    # with --last 1 the last-k mean is the final evaluation itself
    for k in ("clean", "faulty", "faulty1"):
        assert row[k]["seen_last"] == row[k]["seen"]
        assert row[k]["unseen_last"] == row[k]["unseen"]
