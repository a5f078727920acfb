"""A minimal in-process federated loop for unit tests of the methods' maths (no Flower).

The real runtime is ``fedvpa.federation``; this loop exists so a method's behaviour (learning,
private state, aggregation) can be tested in a second, without simulation start-up.
"""

from __future__ import annotations

import random

from fedvpa.embeddings.tensors import ClientTensors
from fedvpa.evaluation.accuracy import evaluate
from fedvpa.methods.base import Arrays, FederatedMethod, ServerState


def run_in_process(
    method: FederatedMethod,
    clients: list[ClientTensors],
    rounds: int,
    per_round: int,
    seed: int = 0,
) -> tuple[ServerState, dict[int, Arrays], dict]:
    state = method.init_server_state(seed)
    private: dict[int, Arrays] = {}
    seen = [c for c in clients if not c.unseen]
    rng = random.Random(seed)
    for r in range(1, rounds + 1):
        chosen = sorted(rng.sample([c.client_id for c in seen], per_round))
        located = None
        if method.needs_locate(r):
            by_id = {c.client_id: c for c in clients}
            located = {cid: method.locate(state.arrays, by_id[cid]) for cid in chosen}
        state = method.plan_round(state, chosen, r, located)
        updates = []
        for cid in chosen:
            client = next(c for c in clients if c.client_id == cid)
            payload = method.client_payload(state, cid, r)
            update, private[cid] = method.train_on_client(
                state.arrays, payload, client, private.get(cid, {}), r, seed * 1000 + r * 100 + cid
            )
            updates.append((cid, update))
        state = method.aggregate_round(state, updates, r)
    report = evaluate(method.predictor(state.arrays), clients)
    return state, private, report
