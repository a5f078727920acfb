"""The round protocol in one process, without Flower: for tests, benchmarks and sweeps.

The same :class:`RoundProtocol` as the Flower runtime, the same client steps
(``protocol/client.py``) and the same seeds, so a run here gives the Flower run's numbers; only
the messaging is missing. Bytes are counted as the arrays' sizes (no record overhead).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fedvpa.config import FederationSettings
from fedvpa.embeddings.tensors import ClientTensors
from fedvpa.methods.base import Arrays, ClientUpdate, FederatedMethod, TrainRequest
from fedvpa.protocol.client import evaluate_step, train_steps
from fedvpa.protocol.round import ClientRecord, EvalReply, Replies, RoundProtocol, TrainJob


def _nbytes(*groups: Arrays) -> int:
    return int(sum(a.nbytes for arrays in groups for a in arrays.values()))


class InProcessTransport:
    """Calls the method directly on :class:`ClientTensors`; keeps each client's private state."""

    def __init__(self, method: FederatedMethod, clients: Sequence[ClientTensors]) -> None:
        self.method = method
        self.clients = {c.client_id: c for c in clients}
        self.private: dict[int, Arrays] = {}

    def locate(
        self, server_round: int, client_ids: Sequence[int], arrays: Arrays
    ) -> Replies[Arrays]:
        ok = {cid: self.method.locate(arrays, self.clients[cid]) for cid in client_ids}
        return Replies(
            ok,
            bytes_down={cid: _nbytes(arrays) for cid in client_ids},
            bytes_up={cid: _nbytes(stats) for cid, stats in ok.items()},
        )

    def train(
        self, server_round: int, arrays: Arrays, jobs: Sequence[TrainJob]
    ) -> Replies[ClientUpdate]:
        ok: dict[int, ClientUpdate] = {}
        down, up = {}, {}
        reasons = []
        requests = [
            TrainRequest(
                self.clients[job.client_id],
                job.payload,
                self.private.get(job.client_id, {}),
                job.seed,
            )
            for job in jobs
        ]
        for job, result in zip(
            jobs, train_steps(self.method, arrays, requests, server_round), strict=True
        ):
            if isinstance(result, Exception):  # a failing client is counted, as Flower does
                reasons.append(f"client {job.client_id}: {result}")
                continue
            update, new_state = result
            self.private[job.client_id] = new_state
            ok[job.client_id] = update
            weights = 0 if job.holds_weights else _nbytes(arrays)
            down[job.client_id] = _nbytes(job.payload) + weights
            up[job.client_id] = _nbytes(update.arrays, update.stats)
        return Replies(ok, len(reasons), 0, reasons, bytes_down=down, bytes_up=up)

    def evaluate(
        self, server_round: int, arrays: Arrays, client_seeds: Mapping[int, int]
    ) -> Replies[EvalReply]:
        ok = {
            cid: evaluate_step(
                self.method, arrays, self.clients[cid], self.private.get(cid, {}), seed
            )
            for cid, seed in client_seeds.items()
        }
        return Replies(ok, bytes_down={cid: _nbytes(arrays) for cid in client_seeds})


def client_records(clients: Sequence[ClientTensors]) -> dict[int, ClientRecord]:
    return {
        c.client_id: ClientRecord(c.client_id, c.user_type, c.type_index, c.unseen, c.num_examples)
        for c in clients
    }


def run_in_process(
    method: FederatedMethod,
    clients: Sequence[ClientTensors],
    settings: FederationSettings,
    on_round: Callable[[dict[str, Any], RoundProtocol], None] | None = None,
    transport: InProcessTransport | None = None,
) -> tuple[RoundProtocol, InProcessTransport, list[dict[str, Any]]]:
    """All ``settings.num_server_rounds`` rounds; returns the protocol (its final state), the
    transport (the clients' private states) and the run-log rows. ``on_round`` sees each row;
    ``transport`` replaces the plain one (e.g. ``protocol/faults.py``'s)."""
    protocol = RoundProtocol(method, settings, client_records(clients))
    transport = transport if transport is not None else InProcessTransport(method, clients)
    history = []
    for server_round in range(1, settings.num_server_rounds + 1):
        if not protocol.allows(server_round):
            break
        row = protocol.run_round(server_round, transport)
        history.append(row)
        if on_round is not None:
            on_round(row, protocol)
    return protocol, transport, history
