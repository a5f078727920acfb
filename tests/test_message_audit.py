"""What leaves a client, audited: every reply the server receives in a run of every built-in
method holds only the shared weights it was sent (same names, shapes, dtypes), the statistics the
method declares, and a few scalar metrics: no text, no embeddings, no labels, no per-pair values.

"No per-pair values" is checked by running each method twice, on clients with 12 and with 24
pairs: every reply must have the same names and shapes in both runs. The table of what leaves a
client in the README ("Privacy") is this test's ``shape_summary``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from fedvpa.config import FederationSettings
from fedvpa.federation.registry import create_method
from fedvpa.methods import BUILTIN_METHODS
from fedvpa.methods.base import Arrays, ClientUpdate
from fedvpa.protocol.in_process import InProcessTransport, client_records
from fedvpa.protocol.round import EvalReply, Replies, RoundProtocol, TrainJob
from tests.helpers import make_toy_clients

DIM = 16
KWARGS = {
    # Locate and the mixture prior from round 2, so a short run audits every exchange.
    "model": {
        "input_dim": DIM,
        "latent_dim": 4,
        "hidden_dim": 16,
        "num_prototypes": 2,
        "ortho_warmup_rounds": 1,
        "prior_warmup_rounds": 1,
    },
    "local": {"local_steps": 2},
}
ROUNDS = 4
# The rest: the posterior. FedVPL's server uses no posterior (no mixture prior, no prototypes),
# so its clients keep theirs.
DECLARED_STATS = {"fedavg-bt": set(), "fedbiscuit": {"losses"}, "fedvpl": set()}
MAX_METRICS = 16


class RecordingTransport(InProcessTransport):
    """The in-process transport, keeping every reply the server receives."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.seen: list[tuple[str, Any]] = []

    def locate(self, server_round: int, client_ids: Sequence[int], arrays: Arrays) -> Replies:
        replies = super().locate(server_round, client_ids, arrays)
        self.seen += [("locate", (server_round, r)) for r in replies.ok.values()]
        return replies

    def train(self, server_round: int, arrays: Arrays, jobs: Sequence[TrainJob]) -> Replies:
        replies = super().train(server_round, arrays, jobs)
        self.seen += [("train", (server_round, arrays, u)) for u in replies.ok.values()]
        return replies

    def evaluate(self, server_round: int, arrays: Arrays, seeds: Mapping[int, int]) -> Replies:
        replies = super().evaluate(server_round, arrays, seeds)
        self.seen += [("evaluate", r) for r in replies.ok.values()]
        return replies


def _check_array(where: str, value: Any) -> tuple[int, ...]:
    assert isinstance(value, np.ndarray), f"{where}: {type(value).__name__}, not an array"
    assert value.dtype.kind in "fiub", f"{where}: dtype {value.dtype} (text or objects)"
    return tuple(value.shape)


def _check_metrics(where: str, metrics: Mapping[str, Any]) -> tuple[str, ...]:
    assert len(metrics) <= MAX_METRICS, f"{where}: {len(metrics)} metrics"
    for key, value in metrics.items():
        assert isinstance(value, float | int) and not isinstance(value, bool), (where, key)
    return tuple(sorted(metrics))


def shape_summary(name: str, pairs: int) -> dict[str, set]:
    """Run ``name`` and describe every reply: (phase, part, array name, shape) or metric names."""
    method = create_method(name, KWARGS)
    clients = make_toy_clients(10, pairs=pairs, dim=DIM, num_unseen=2)
    settings = FederationSettings(
        method=name, num_server_rounds=ROUNDS, clients_per_round=4, eval_every=2
    )
    transport = RecordingTransport(method, clients)
    protocol = RoundProtocol(method, settings, client_records(clients))
    for server_round in range(1, ROUNDS + 1):
        protocol.run_round(server_round, transport)
    summary: dict[str, set] = {"arrays": set(), "stats": set(), "metrics": set(), "other": set()}
    for phase, reply in transport.seen:
        if phase == "train":
            server_round, sent, update = reply
            assert isinstance(update, ClientUpdate)
            # what the round protocol checks replies against is what an honest client sends
            declared = {k: tuple(np.shape(v)) for k, v in update.stats.items()}
            assert method.stats_shapes(server_round) == declared, (name, server_round)
            for key, value in update.arrays.items():
                assert key in sent, f"{name}: update array {key!r} was never sent"
                shape = _check_array(f"{name} train {key}", value)
                assert shape == sent[key].shape and value.dtype == sent[key].dtype
                summary["arrays"].add((key, shape))
            for key, value in update.stats.items():
                summary["stats"].add((key, _check_array(f"{name} stats {key}", value)))
            summary["metrics"].add(_check_metrics(f"{name} train", update.metrics))
            assert isinstance(update.num_examples, int)
        elif phase == "locate":
            server_round, reply = reply
            declared = {k: tuple(np.shape(v)) for k, v in reply.items()}
            assert method.locate_shapes(server_round) == declared, (name, server_round)
            for key, value in reply.items():
                summary["other"].add(("locate", key, _check_array(f"{name} locate", value)))
        else:
            assert isinstance(reply, EvalReply)
            assert not {"type_index", "unseen"} & set(reply.counts), "the server knows these"
            summary["metrics"].add(_check_metrics(f"{name} eval", reply.counts))
            for key, value in reply.latent.items():
                summary["other"].add(("eval", key, _check_array(f"{name} eval {key}", value)))
    return summary


@pytest.mark.parametrize("name", sorted(BUILTIN_METHODS))
def test_replies_hold_only_declared_arrays_and_no_per_pair_values(name: str) -> None:
    small, large = shape_summary(name, 12), shape_summary(name, 24)
    assert small == large, f"{name}: what a client sends depends on how many pairs it holds"
    declared = DECLARED_STATS.get(name, {"mu", "sigma2"})
    assert {key for key, _ in small["stats"]} == declared
    for key, shape in small["stats"] | {(k, s) for _, k, s in small["other"]}:
        assert len(shape) == 1 and shape[0] <= 8, f"{name}: {key} {shape} is not a summary"
    located = {key for phase, key, _ in small["other"] if phase == "locate"}
    assert located == ({"mu"} if create_method(name, KWARGS).needs_locate(ROUNDS) else set())
