"""A small, real FederatedMethod for testing the runtime: linear Bradley-Terry with FedAvg.

``P(A preferred) = sigmoid(w . (h_A - h_B) + b_i)`` where ``w`` is shared (FedAvg) and ``b_i``
is a private per-client bias, learnt locally and kept in the client's private state together with
a counter of how often the client trained. The server sends every client a payload that names it
(``tag = [client_id, round]``), so tests can check that messages really are per client, and the
server records in ``info`` which clients trained in which round.

From round ``locate_from`` on, the method asks for a locate exchange before training: each
sampled client answers ``[client_id, round]`` computed under the global weights it was sent, the
plan records who answered, and ``tag[2]`` tells a client whether the server located it (a
located client that is not told so raises), so tests can see the exchange end to end.

Failure injection for tests: ``fail_clients`` raise in ``client_train`` (in ``fail_rounds`` only,
when given).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fedvpa.embeddings.tensors import ClientTensors, PairTensors
from fedvpa.methods.base import Arrays, ClientUpdate, FederatedMethod, Predictor, ServerState


class ToyPredictor:
    def __init__(self, w: np.ndarray, bias: float) -> None:
        self.w = torch.as_tensor(w, dtype=torch.float32)
        self.bias = bias

    def prob_a_preferred(self, client: ClientTensors, pairs: PairTensors) -> torch.Tensor:
        return torch.sigmoid((pairs.emb_a - pairs.emb_b) @ self.w + self.bias)


class ToyMethod(FederatedMethod):
    name = "toy"

    def __init__(
        self,
        dim: int,
        local_steps: int = 5,
        lr: float = 0.5,
        fail_clients: Sequence[int] = (),
        fail_rounds: Sequence[int] | None = None,
        locate_from: int | None = None,
    ) -> None:
        self.locate_from = locate_from
        self.dim = dim
        self.local_steps = local_steps
        self.lr = lr
        self.fail_clients = set(fail_clients)
        self.fail_rounds = None if fail_rounds is None else set(fail_rounds)

    def init_server_state(self, seed: int) -> ServerState:
        rng = np.random.default_rng(seed)
        w = rng.normal(0.0, 0.01, size=self.dim).astype(np.float32)
        return ServerState(arrays={"w": w}, info={"trained": {}, "located": {}})

    def needs_locate(self, server_round: int) -> bool:
        return self.locate_from is not None and server_round >= self.locate_from

    def locate(self, global_arrays: Arrays, client: ClientTensors) -> Arrays:
        return {"where": np.array([client.client_id, global_arrays["w"].size], np.int64)}

    def plan_round(
        self,
        state: ServerState,
        client_ids: Sequence[int],
        server_round: int,
        located: Mapping[int, Arrays] | None = None,
    ) -> ServerState:
        found = sorted(int(c) for c, v in (located or {}).items() if int(v["where"][0]) == c)
        info = dict(state.info)
        info["located"] = {**state.info.get("located", {}), str(server_round): found}
        return ServerState(arrays=state.arrays, extra={"located": found}, info=info)

    def client_payload(self, state: ServerState, client_id: int, server_round: int) -> Arrays:
        located = int(client_id in state.extra.get("located", []))
        return {"tag": np.array([client_id, server_round, located], dtype=np.int64)}

    def client_train(
        self,
        global_arrays: Arrays,
        payload: Arrays,
        client: ClientTensors,
        client_state: Arrays,
        server_round: int,
        seed: int,
    ) -> tuple[ClientUpdate, Arrays]:
        if client.client_id in self.fail_clients and (
            self.fail_rounds is None or server_round in self.fail_rounds
        ):
            raise RuntimeError(f"injected failure of client {client.client_id}")
        tag = payload["tag"]
        if int(tag[0]) != client.client_id or int(tag[1]) != server_round:
            raise RuntimeError(f"client {client.client_id} got the payload {tag.tolist()}")
        if self.needs_locate(server_round) and int(tag[2]) != 1:
            raise RuntimeError(f"client {client.client_id} was not located in round {server_round}")
        gen = torch.Generator().manual_seed(seed)
        pairs = client.labelled
        diff = pairs.emb_a - pairs.emb_b
        w = torch.tensor(global_arrays["w"], requires_grad=True)
        bias = torch.tensor(float(client_state.get("bias", np.zeros(1))[0]), requires_grad=True)
        opt = torch.optim.SGD([w, bias], lr=self.lr)
        loss = torch.tensor(0.0)
        for _ in range(self.local_steps):
            batch = torch.randperm(len(pairs), generator=gen)[: max(1, len(pairs) // 2)]
            logits = diff[batch] @ w + bias
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, pairs.label[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        count = int(client_state.get("count", np.zeros(1, dtype=np.int64))[0]) + 1
        new_state = {
            "bias": np.array([bias.item()], dtype=np.float32),
            "count": np.array([count], dtype=np.int64),
        }
        update = ClientUpdate(
            arrays={"w": w.detach().numpy().astype(np.float32)},
            num_examples=len(pairs),
            stats={"mean_diff": diff.mean(0).numpy()[:2].astype(np.float32)},
            metrics={"loss": float(loss.item()), "count": float(count), "seed": float(seed)},
        )
        return update, new_state

    def aggregate(
        self, state: ServerState, updates: Sequence[tuple[int, ClientUpdate]], server_round: int
    ) -> ServerState:
        total = sum(u.num_examples for _, u in updates)
        w = sum(u.arrays["w"].astype(np.float64) * (u.num_examples / total) for _, u in updates)
        trained: dict[str, Any] = dict(state.info["trained"])
        trained[str(server_round)] = {
            str(cid): {"count": u.metrics["count"], "seed": u.metrics["seed"]} for cid, u in updates
        }
        info = {**state.info, "trained": trained}
        return ServerState(arrays={"w": np.asarray(w, dtype=np.float32)}, info=info)

    def predictor(self, global_arrays: Arrays, client_state: Arrays | None = None) -> Predictor:
        bias = 0.0 if not client_state else float(client_state["bias"][0])
        return ToyPredictor(global_arrays["w"], bias)


def make_clients(
    num_seen: int, num_unseen: int, dim: int = 8, pairs: int = 24, seed: int = 0
) -> list[ClientTensors]:
    """Two user types with opposite true reward directions; ids 0..n-1, unseen ones last."""
    rng = np.random.default_rng(seed)
    true_w = rng.normal(size=dim).astype(np.float32)
    clients = []
    for cid in range(num_seen + num_unseen):
        type_index = cid % 2
        w = true_w if type_index == 0 else -true_w

        def split(n: int, w: np.ndarray = w) -> PairTensors:
            a = torch.tensor(rng.normal(size=(n, dim)), dtype=torch.float32)
            b = torch.tensor(rng.normal(size=(n, dim)), dtype=torch.float32)
            label = (((a - b) @ torch.tensor(w)) > 0).float()
            return PairTensors(a, b, label)

        clients.append(
            ClientTensors(
                client_id=cid,
                user_type="helpful" if type_index == 0 else "harmless",
                type_index=type_index,
                unseen=cid >= num_seen,
                context=split(pairs // 3),
                train=split(pairs),
                test=split(pairs // 2),
            )
        )
    return clients


def toy_from_config(model: dict | None = None, local: dict | None = None) -> ToyMethod:
    """The toy method as ``flwr run`` builds it: from the model and local settings of the run
    config (the embedding size comes from the data); it locates from round 2."""
    return ToyMethod(dim=int((model or {})["input_dim"]), locate_from=2)
