"""The methods' tests run rounds through the real round protocol, in process (no Flower).

A thin shim over ``fedvpa.protocol.in_process`` that returns what the tests look at: the final
server state, each client's private state, and the evaluation of the global weights.
"""

from __future__ import annotations

from fedvpa.config import FederationSettings
from fedvpa.embeddings.tensors import ClientTensors
from fedvpa.evaluation.accuracy import evaluate
from fedvpa.methods.base import Arrays, FederatedMethod, ServerState
from fedvpa.protocol.in_process import run_in_process as run_rounds


def run_in_process(
    method: FederatedMethod,
    clients: list[ClientTensors],
    rounds: int,
    per_round: int,
    seed: int = 0,
) -> tuple[ServerState, dict[int, Arrays], dict]:
    settings = FederationSettings(
        method=method.name,
        seed=seed,
        num_server_rounds=rounds,
        clients_per_round=per_round,
        eval_every=rounds,
    )
    protocol, transport, _ = run_rounds(method, clients, settings)
    report = evaluate(method.predictor(protocol.state.arrays), clients)
    return protocol.state, transport.private, report
