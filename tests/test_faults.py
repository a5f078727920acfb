"""Faults: 30% of each round's sampled clients crash, time out or send a malformed (NaN) reply;
the run completes, nothing malformed reaches the mean, and the model stays close to the
fault-free one."""

from __future__ import annotations

import numpy as np
import pytest

from fedvpa.config import FederationSettings
from fedvpa.methods.base import ClientUpdate
from fedvpa.methods.reward_heads import FedAvgBT
from fedvpa.methods.variational import fedvpa_gp
from fedvpa.protocol.faults import FaultyTransport, faults_for
from fedvpa.protocol.in_process import InProcessTransport, client_records, run_in_process
from fedvpa.protocol.round import FederationError, RoundProtocol, malformed_reason
from tests.helpers import make_toy_clients

DIM = 16
SMALL = {"input_dim": DIM, "latent_dim": 4, "hidden_dim": 16, "num_prototypes": 2}


def _settings(name: str, rounds: int = 6) -> FederationSettings:
    return FederationSettings(
        method=name, num_server_rounds=rounds, clients_per_round=8, eval_every=rounds
    )


@pytest.mark.parametrize(
    "make", [lambda: FedAvgBT({"input_dim": DIM}), lambda: fedvpa_gp(SMALL, {"local_steps": 5})]
)
def test_a_run_with_30_percent_faulty_clients_completes_close_to_the_clean_one(make) -> None:
    clients = make_toy_clients(16, pairs=16, dim=DIM)
    method = make()
    clean = run_in_process(method, clients, _settings(method.name))[2]
    faulty_transport = FaultyTransport(make(), clients, share=0.3, seed=0)
    protocol, _, rows = run_in_process(
        make(), clients, _settings(method.name), transport=faulty_transport
    )
    expected = [len(faults_for(0, row["round"], row["sampled"], 0.3)) for row in rows]
    assert [row["failures"] for row in rows] == expected == [2] * len(rows)  # round(0.3 * 8)
    assert all(np.all(np.isfinite(v)) for v in protocol.state.arrays.values())
    acc_clean = clean[-1]["eval"]["eval/seen/macro"]
    acc_faulty = rows[-1]["eval"]["eval/seen/macro"]
    assert acc_faulty >= acc_clean - 0.1


def test_malformed_replies_never_reach_the_mean() -> None:
    sent = {"w": np.zeros(3, np.float32)}
    good = ClientUpdate({"w": np.ones(3, np.float32)}, 4)
    assert malformed_reason(good, sent) is None
    cases = {
        "NaN": ClientUpdate({"w": np.array([0, np.nan, 0], np.float32)}, 4),
        "shape": ClientUpdate({"w": np.ones(4, np.float32)}, 4),
        "not sent": ClientUpdate({"v": np.ones(3, np.float32)}, 4),
        "num_examples": ClientUpdate({"w": np.ones(3, np.float32)}, 0),
        "statistic": ClientUpdate(sent, 4, stats={"mu": np.array([np.inf])}),
    }
    for what, update in cases.items():
        assert malformed_reason(update, sent), what


def test_statistics_other_than_the_declared_ones_are_malformed() -> None:
    # Bug: a FedVPA-GP reply without "mu" passed the checks and crashed aggregate (KeyError).
    sent = {"w": np.zeros(3, np.float32)}
    declared = {"mu": (2,), "sigma2": (2,)}
    good = {"mu": np.zeros(2, np.float32), "sigma2": np.ones(2, np.float32)}
    assert malformed_reason(ClientUpdate(sent, 4, stats=good), sent, declared) is None
    cases = {
        "missing": {"mu": good["mu"]},
        "extra": {**good, "labels": np.zeros(2, np.float32)},
        "shape": {**good, "mu": np.zeros(3, np.float32)},
    }
    for what, stats in cases.items():
        assert malformed_reason(ClientUpdate(sent, 4, stats=stats), sent, declared), what
    # undeclared (a plug-in method): anything finite passes, as before
    assert malformed_reason(ClientUpdate(sent, 4, stats=cases["extra"]), sent) is None


def test_replies_without_their_posterior_are_rejected_not_a_crash() -> None:
    class Forgetful(InProcessTransport):
        """Client 0 drops its posterior mean from every training reply; client 1 locates
        itself at NaN (before the checks, the server's k-means raised on it)."""

        def locate(self, server_round, client_ids, arrays):
            replies = super().locate(server_round, client_ids, arrays)
            if 1 in replies.ok:
                replies.ok[1] = {"mu": np.full_like(replies.ok[1]["mu"], np.nan)}
            return replies

        def train(self, server_round, arrays, jobs):
            replies = super().train(server_round, arrays, jobs)
            for cid, update in replies.ok.items():
                if cid == 0:
                    update.stats.pop("mu")
            return replies

    method = fedvpa_gp({**SMALL, "ortho_warmup_rounds": 1}, {"local_steps": 1})
    clients = make_toy_clients(6, pairs=12, dim=DIM)
    settings = FederationSettings(
        method=method.name, seed=0, num_server_rounds=2, clients_per_round=6, eval_every=2
    )
    protocol = RoundProtocol(method, settings, client_records(clients))
    transport = Forgetful(method, clients)
    rows = [protocol.run_round(r, transport) for r in (1, 2)]
    assert [row["failures"] for row in rows] == [1, 1]
    assert "locate_replies" not in rows[0]
    assert rows[1]["locate_replies"] == 5 and rows[1]["locate_failures"] == 1
    assert protocol.state.extra["prior_ids"].tolist() == [1, 2, 3, 4, 5]


def test_too_many_faults_stop_the_run_with_a_clear_error() -> None:
    clients = make_toy_clients(16, pairs=16, dim=DIM)
    transport = FaultyTransport(FedAvgBT({"input_dim": DIM}), clients, share=0.6, seed=0)
    with pytest.raises(FederationError, match="clients replied"):
        run_in_process(
            FedAvgBT({"input_dim": DIM}), clients, _settings("fedavg-bt"), transport=transport
        )
