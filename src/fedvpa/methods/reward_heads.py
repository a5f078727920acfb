"""Baselines without a latent: FedAvg-BT (one reward head) and FedBiscuit (U heads).

Both share the frozen-backbone pair feature ``g`` and the Bradley-Terry likelihood of the
centralised references (``fedvpa.training.centralised.BradleyTerry``), so a gap between them and
the latent methods is due to personalisation, not to a different network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from fedvpa.embeddings.tensors import ClientTensors, PairTensors
from fedvpa.methods.aggregation import (
    apply_server_step,
    update_model_average,
    weighted_average,
)
from fedvpa.methods.base import Arrays, ClientUpdate, FederatedMethod, Predictor, ServerState
from fedvpa.methods.local_config import LocalConfig
from fedvpa.model.config import ModelConfig
from fedvpa.training.centralised import BradleyTerry, BTPredictor
from fedvpa.training.local import make_optimiser

PAIRS_PER_VIEW = 16  # a reward-head step sees batch_size x 16 pairs (or all the client has)


def _bt_model(cfg: ModelConfig, arrays: Arrays | None = None, seed: int = 0) -> BradleyTerry:
    model = BradleyTerry(cfg, seed)
    if arrays is not None:
        model.load_state_dict({k: torch.as_tensor(v) for k, v in arrays.items()})
    return model


def _state(model: nn.Module) -> Arrays:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def bt_loss(model: BradleyTerry, pairs: PairTensors) -> float:
    with torch.no_grad():
        logits = model(pairs.emb_a, pairs.emb_b)
        return float(nn.functional.binary_cross_entropy_with_logits(logits, pairs.label))


def local_bt_steps(
    model: BradleyTerry, pairs: PairTensors, local: LocalConfig, seed: int
) -> dict[str, float]:
    """``local_steps`` Adam steps of the Bradley-Terry loss on a client's own labelled pairs."""
    gen = torch.Generator().manual_seed(seed)
    optimiser = make_optimiser(local.local_optimiser, list(model.parameters()), local.lr)
    size = min(len(pairs), local.batch_size * PAIRS_PER_VIEW)
    total, correct = 0.0, 0.0
    anchor = [(p, p.detach().clone()) for p in model.parameters()] if local.prox_mu > 0 else []
    model.train()
    for _ in range(local.local_steps):
        idx = torch.randperm(len(pairs), generator=gen)[:size]
        logits = model(pairs.emb_a[idx], pairs.emb_b[idx])
        loss = nn.functional.binary_cross_entropy_with_logits(logits, pairs.label[idx])
        if anchor:  # FedProx, as in training/local.py
            loss = loss + 0.5 * local.prox_mu * sum(((p - p0) ** 2).sum() for p, p0 in anchor)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        total += float(loss.detach())
        correct += float(((logits > 0).float() == pairs.label[idx]).float().mean())
    model.eval()
    return {"nll": total / local.local_steps, "accuracy": correct / local.local_steps}


def _configs(model: ModelConfig | dict[str, Any] | None, local: LocalConfig | dict | None):
    cfg = model if isinstance(model, ModelConfig) else ModelConfig.from_dict(model or {})
    loc = local if isinstance(local, LocalConfig) else LocalConfig.from_dict(local or {})
    return cfg, loc


class FedAvgBT(FederatedMethod):
    """The monolithic baseline: one reward head, FedAvg (FedBis with a frozen backbone)."""

    name = "fedavg-bt"
    dp_supported = True

    def __init__(
        self, model: ModelConfig | dict | None = None, local: LocalConfig | dict | None = None
    ):
        self.cfg, self.local = _configs(model, local)

    def effective_config(self) -> dict[str, Any]:
        return {"model": self.cfg.to_dict(), "local": self.local.to_dict()}

    def stats_shapes(self, server_round: int) -> dict[str, tuple[int, ...]]:
        return {}  # the weights only

    def init_server_state(self, seed: int) -> ServerState:
        return ServerState(arrays=_state(_bt_model(self.cfg, seed=seed)))

    def client_train(self, global_arrays, payload, client, client_state, server_round, seed):
        model = _bt_model(self.cfg, global_arrays)
        metrics = local_bt_steps(model, client.labelled, self.local, seed)
        update = ClientUpdate(_state(model), client.num_examples, metrics=metrics)
        return update, client_state

    def aggregate(self, state, updates, server_round):
        updates = sorted(updates, key=lambda item: item[0])
        mean = weighted_average([(u.arrays, float(u.num_examples)) for _, u in updates])
        arrays, extra = apply_server_step(
            state.arrays, mean, dict(state.extra), self.local.server_step, server_round
        )
        extra = update_model_average(extra, arrays, self.local.model_average_decay)
        return ServerState(arrays=arrays, extra=extra, info=state.info)

    def predictor(self, global_arrays: Arrays, client_state: Arrays | None = None) -> Predictor:
        return BTPredictor(_bt_model(self.cfg, global_arrays))


def balanced_head_assignment(losses: np.ndarray) -> np.ndarray:
    """Assign each client to a head, minimising total loss with group sizes within 1.

    ``losses [N, U]``; each head offers ``ceil(N / U)`` slots and the Hungarian algorithm picks the
    cheapest assignment, which is how FedBiscuit keeps every head trained by a balanced group.
    """
    n, u = losses.shape
    slots = int(np.ceil(n / u))
    cost = np.repeat(losses, slots, axis=1)  # column j -> head j // slots
    rows, cols = linear_sum_assignment(cost)
    heads = np.empty(n, np.int64)
    heads[rows] = cols // slots
    return heads


class MajorityVote:
    """FedBiscuit's prediction: each head votes; ties go to the mean probability."""

    def __init__(self, heads: list[BradleyTerry]):
        self.heads = heads

    def prob_a_preferred(self, client: ClientTensors, pairs: PairTensors) -> torch.Tensor:
        with torch.no_grad():
            probs = torch.stack([torch.sigmoid(h(pairs.emb_a, pairs.emb_b)) for h in self.heads])
        votes = (probs > 0.5).float().mean(0)
        return torch.where(votes == 0.5, probs.mean(0), votes)


class FedBiscuit(FederatedMethod):
    """U reward heads: warm-up trains head k in turn, then balanced groups by local loss."""

    name = "fedbiscuit"
    dp_supported = True  # each head is a weighted mean over its group; losses are a vector

    def __init__(
        self,
        model: ModelConfig | dict | None = None,
        local: LocalConfig | dict | None = None,
        num_heads: int = 2,
        warmup_rounds: int = 0,
    ):
        self.cfg, self.local = _configs(model, local)
        self.num_heads = int(num_heads)
        # Default warm-up: two rounds per head, as a fixed share of short runs.
        self.warmup_rounds = int(warmup_rounds) or 2 * self.num_heads

    def effective_config(self) -> dict[str, Any]:
        return {
            "model": self.cfg.to_dict(),
            "local": self.local.to_dict(),
            "num_heads": self.num_heads,
            "warmup_rounds": self.warmup_rounds,
        }

    def _split(self, arrays: Arrays) -> list[Arrays]:
        return [
            {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(f"head{h}.")}
            for h in range(self.num_heads)
        ]

    def init_server_state(self, seed: int) -> ServerState:
        arrays: Arrays = {}
        for h in range(self.num_heads):
            for k, v in _state(_bt_model(self.cfg, seed=seed + 7919 * h)).items():
                arrays[f"head{h}.{k}"] = v
        extra = {"loss_ids": np.zeros(0, np.int64), "losses": np.zeros((0, self.num_heads))}
        return ServerState(arrays=arrays, extra=extra)

    def _assign(self, state: ServerState, client_ids: Sequence[int]) -> dict[int, int]:
        known = dict(zip(state.extra["loss_ids"].tolist(), state.extra["losses"], strict=True))
        # Clients never seen are indifferent (zero cost everywhere): they fill the balance.
        losses = np.stack([known.get(c, np.zeros(self.num_heads)) for c in client_ids])
        return dict(zip(client_ids, balanced_head_assignment(losses).tolist(), strict=True))

    def plan_round(
        self,
        state: ServerState,
        client_ids: Sequence[int],
        server_round: int,
        located: Mapping[int, Arrays] | None = None,
    ) -> ServerState:
        ids = sorted(client_ids)
        if server_round <= self.warmup_rounds:
            heads = [(server_round - 1) % self.num_heads] * len(ids)
        else:
            heads = [self._assign(state, ids)[c] for c in ids]
        extra = dict(state.extra)
        extra["plan_ids"] = np.array(ids, np.int64)
        extra["plan_heads"] = np.array(heads, np.int64)
        return ServerState(arrays=state.arrays, extra=extra, info=state.info)

    def stats_releases(self, server_round: int) -> int:
        return 1  # every update carries its loss under each head

    def stats_shapes(self, server_round: int) -> dict[str, tuple[int, ...]]:
        return {"losses": (self.num_heads,)}

    def client_payload(self, state: ServerState, client_id: int, server_round: int) -> Arrays:
        ids = state.extra.get("plan_ids", np.zeros(0, np.int64))
        hits = np.flatnonzero(ids == client_id)
        if hits.size:
            head = int(state.extra["plan_heads"][hits[0]])
        else:  # not planned (e.g. an external caller): warm-up order, then the cheapest head
            head = (server_round - 1) % self.num_heads
        return {"head": np.array([head], np.int64)}

    def client_train(self, global_arrays, payload, client, client_state, server_round, seed):
        heads = self._split(global_arrays)
        labelled = client.labelled
        models = [_bt_model(self.cfg, a) for a in heads]
        losses = np.array([bt_loss(m, labelled) for m in models], np.float32)
        h = int(payload["head"][0])
        metrics = local_bt_steps(models[h], labelled, self.local, seed)
        metrics["head"] = float(h)
        arrays = {f"head{h}.{k}": v for k, v in _state(models[h]).items()}
        update = ClientUpdate(
            arrays, client.num_examples, stats={"losses": losses}, metrics=metrics
        )
        return update, client_state

    def aggregate(self, state, updates, server_round):
        updates = sorted(updates, key=lambda item: item[0])
        mean: Arrays = {}
        for h in range(self.num_heads):
            group = [u for _, u in updates if any(k.startswith(f"head{h}.") for k in u.arrays)]
            if group:
                mean.update(weighted_average([(u.arrays, float(u.num_examples)) for u in group]))
        arrays, moved = apply_server_step(
            state.arrays, mean, dict(state.extra), self.local.server_step, server_round
        )
        known = dict(zip(state.extra["loss_ids"].tolist(), state.extra["losses"], strict=True))
        known.update({cid: u.stats["losses"] for cid, u in updates})
        order = sorted(known)
        moved = update_model_average(moved, arrays, self.local.model_average_decay)
        extra = {
            **moved,
            "loss_ids": np.array(order, np.int64),
            "losses": np.stack([known[c] for c in order]).astype(np.float64),
        }
        return ServerState(arrays=arrays, extra=extra, info=state.info)

    def predictor(self, global_arrays: Arrays, client_state: Arrays | None = None) -> Predictor:
        return MajorityVote([_bt_model(self.cfg, a) for a in self._split(global_arrays)])
