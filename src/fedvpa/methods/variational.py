"""FedVPL, FedVPA-GP and their ablations: one latent model, two switches.

``prior="mixture"`` turns on the Federated Mixture Prior (the server's store of last round's
client posteriors, Gumbel-Softmax weights with a private ``pi`` per client) and ``use_ortho`` the
orthogonal prototypes with server-side balanced k-means labels. FedVPL is both off; FedVPA-GP both
on. Keeping the variants in one class guarantees the ablations differ in exactly those switches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from fedvpa.embeddings.tensors import ClientTensors
from fedvpa.methods.aggregation import (
    apply_server_step,
    update_model_average,
    weighted_average,
)
from fedvpa.methods.base import Arrays, ClientUpdate, FederatedMethod, Predictor, ServerState
from fedvpa.methods.local_config import LocalConfig
from fedvpa.model.config import ModelConfig
from fedvpa.model.priors import FederatedMixturePrior, Prior, StandardNormalPrior
from fedvpa.model.prototypes import (
    assign_prototype_labels,
    balanced_kmeans_with_centroids,
    choose_num_groups,
    nearest_orthogonal_prototypes,
    order_clusters_by_prototypes,
)
from fedvpa.model.vpl import VariationalPreferenceModel
from fedvpa.training.local import VPLPredictor, infer_posterior, train_local

PROTOTYPES_KEY = "prototypes.weight"
UNKNOWN = -1


PRIOR_KEYS = ("prior_mu", "prior_var", "prior_n", "prior_ids")


def latest_per_client(old: Arrays, new: Arrays, keys: Sequence[str]) -> Arrays:
    """Row-aligned arrays ``keys`` (the first holds client ids) with ``new``'s rows written over
    ``old``'s for the same client, sorted by client id. ``old`` may lack the keys (first round).
    """
    id_key = keys[0]
    rows: dict[int, tuple] = {}
    for source in (old, new):
        if id_key not in source:
            continue
        for i, cid in enumerate(source[id_key].tolist()):
            rows[int(cid)] = tuple(source[k][i] for k in keys)
    order = sorted(rows)
    out: Arrays = {}
    for j, key in enumerate(keys):
        values = [rows[c][j] for c in order]
        out[key] = np.stack(values).astype(new[key].dtype) if values else new[key][:0]
    return out


def merge_components(old: Arrays, new: Arrays, oldest_round: int) -> Arrays:
    """The prior store after a round: each client's latest posterior, if reported after
    ``oldest_round``.

    The paper's prior holds only the last round's participants: ten clients, often of two or
    three of the user types, so every other type is pulled towards them for a round and the
    global model swings (FedVPA-GP fell from 66 to 52-54 % on plural-4 in one such round,
    measured). Keeping every client's latest posterior for ``prior_max_age`` rounds makes the
    prior describe the population instead of one sample of it.
    """
    merged = latest_per_client(old, new, ("prior_ids", *PRIOR_KEYS[:3], "prior_round"))
    keep = merged["prior_round"] > oldest_round
    return {k: v[keep] for k, v in merged.items()}


def update_store(extra: Arrays, ids: np.ndarray, mus: np.ndarray) -> Arrays:
    """The server's latest posterior mean per client, with ``ids`` / ``mus`` written over it."""
    return latest_per_client(
        extra, {"store_ids": ids, "store_mu": mus.astype(np.float32)}, ("store_ids", "store_mu")
    )


class VariationalMethod(FederatedMethod):
    """The latent-preference family; see the module docstring for the switches."""

    def __init__(
        self,
        name: str,
        model: ModelConfig | dict[str, Any] | None = None,
        local: LocalConfig | dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.cfg = model if isinstance(model, ModelConfig) else ModelConfig.from_dict(model or {})
        self.local = local if isinstance(local, LocalConfig) else LocalConfig.from_dict(local or {})

    def effective_config(self) -> dict[str, Any]:
        return {"model": self.cfg.to_dict(), "local": self.local.to_dict()}

    # ----------------------------------------------------------------------------- server side
    def _model(self, arrays: Arrays | None = None, seed: int = 0) -> VariationalPreferenceModel:
        model = VariationalPreferenceModel(self.cfg, seed)
        if arrays is not None:
            model.load_shared_state(arrays)
        return model

    def init_server_state(self, seed: int) -> ServerState:
        d = self.cfg.latent_dim
        extra: Arrays = {
            "prior_mu": np.zeros((0, d), np.float32),
            "prior_var": np.zeros((0, d), np.float32),
            "prior_n": np.zeros((0,), np.float32),
            "prior_ids": np.zeros((0,), np.int64),
            "prior_round": np.zeros((0,), np.int64),  # when each component was reported
            "label_ids": np.zeros((0,), np.int64),  # this round's clients, labelled in plan_round
            "labels": np.zeros((0,), np.int64),  # their prototype labels
            # Latest posterior mean per client (from locate and train replies): what "auto"
            # chooses the number of groups from. 0 groups = not chosen yet.
            "store_ids": np.zeros((0,), np.int64),
            "store_mu": np.zeros((0, d), np.float32),
            "num_groups": np.array([0 if self.cfg.auto_groups else self.cfg.num_prototypes]),
        }
        return ServerState(arrays=self._model(seed=seed).shared_state(), extra=extra)

    def needs_locate(self, server_round: int) -> bool:
        return self.cfg.use_ortho and server_round > self.cfg.ortho_warmup_rounds

    def locate(self, global_arrays: Arrays, client: ClientTensors) -> Arrays:
        """The client's posterior mean under the round's shared model (``d`` floats)."""
        mu, _ = infer_posterior(self._model(global_arrays), client.labelled)
        return {"mu": mu.numpy().astype(np.float32)}

    def plan_round(
        self,
        state: ServerState,
        client_ids: Sequence[int],
        server_round: int,
        located: Mapping[int, Arrays] | None = None,
    ) -> ServerState:
        """Balanced k-means labels for this round's clients, from where the shared model they
        are about to receive puts them.

        Labels computed from an earlier round's posteriors are stale: one FedAvg round moves
        the encoder enough that last round's centroids put ~40% of next round's clients in the
        wrong group (measured), and the pull then drags each group towards both prototypes.
        """
        extra = dict(state.extra)
        extra["label_ids"] = np.zeros(0, np.int64)
        extra["labels"] = np.zeros(0, np.int64)
        extra.pop("centroids", None)
        info = dict(state.info)
        if not self.needs_locate(server_round) or not located:
            return ServerState(arrays=state.arrays, extra=extra, info=info)
        ids = np.array(sorted(located), np.int64)
        mus = np.stack([located[int(c)]["mu"] for c in ids]).astype(np.float32)
        extra.update(update_store(extra, ids, mus))
        k = int(extra["num_groups"][0])
        if k == 0:  # "auto", first pull round: choose from every client's latest mean
            k, scores = choose_num_groups(
                extra["store_mu"], min(self.cfg.max_groups, self.cfg.latent_dim), server_round
            )
            extra["num_groups"] = np.array([k])
            info["group_scores"] = {str(j): round(v, 4) for j, v in scores.items()}
        info["num_groups"] = k
        arrays = state.arrays
        extra["label_ids"] = ids
        if len(ids) <= k:  # too few to cluster
            extra["labels"] = assign_prototype_labels(mus, arrays[PROTOTYPES_KEY][:k])
            return ServerState(arrays=arrays, extra=extra, info=info)
        labels, centroids = balanced_kmeans_with_centroids(
            mus, k, seed=server_round, min_share=self.cfg.cluster_min_share
        )
        first = server_round == self.cfg.ortho_warmup_rounds + 1
        if self.cfg.prototype_init == "centroids" and first:
            # Put the prototypes where the clusters already are before the first pull.
            arrays = dict(arrays)
            protos = arrays[PROTOTYPES_KEY].copy()
            protos[:k] = nearest_orthogonal_prototypes(centroids, self.cfg.prototype_radius)
            arrays[PROTOTYPES_KEY] = protos
        extra["labels"], extra["centroids"] = order_clusters_by_prototypes(
            labels, centroids, arrays[PROTOTYPES_KEY][:k]
        )
        return ServerState(arrays=arrays, extra=extra, info=info)

    def round_info(self, state: ServerState) -> dict[str, Any]:
        """The number of prototype groups in use (0 before it is chosen), for the run log."""
        info = super().round_info(state)
        if self.cfg.use_ortho:
            info["num_groups"] = int(state.extra.get("num_groups", np.zeros(1))[0])
        return info

    def latent_anchors(self, state: ServerState) -> np.ndarray | None:
        """The prototypes, when the orthogonal loss pulls towards them (all rows until the
        number of groups is chosen)."""
        if not self.cfg.use_ortho:
            return None
        k = int(state.extra.get("num_groups", np.zeros(1))[0]) or None
        return state.arrays[PROTOTYPES_KEY][:k]

    def client_payload(self, state: ServerState, client_id: int, server_round: int) -> Arrays:
        extra = state.extra
        label = UNKNOWN
        hits = np.flatnonzero(extra.get("label_ids", np.zeros(0, np.int64)) == client_id)
        if self.cfg.use_ortho and hits.size:
            label = int(extra["labels"][hits[0]])
        payload: Arrays = {
            "proto_label": np.array([label], np.int64),
            "num_groups": np.asarray(extra.get("num_groups", np.zeros(1)), np.int64),
            "tau": np.array([self.cfg.tau_at(server_round, self.local.num_rounds)], np.float32),
        }
        if "centroids" in extra:
            payload["centroids"] = extra["centroids"]
        if self.cfg.prior == "mixture" and server_round > self.cfg.prior_warmup_rounds:
            for key in PRIOR_KEYS:
                payload[key] = extra[key]
        return payload

    def aggregate(
        self, state: ServerState, updates: Sequence[tuple[int, ClientUpdate]], server_round: int
    ) -> ServerState:
        updates = sorted(updates, key=lambda item: item[0])  # reply order must not matter
        mean = weighted_average([(u.arrays, float(u.num_examples)) for _, u in updates])
        arrays, extra = apply_server_step(
            state.arrays, mean, dict(state.extra), self.local.server_step, server_round
        )
        extra = update_model_average(extra, arrays, self.local.model_average_decay)
        ids = np.array([cid for cid, _ in updates], np.int64)
        mus = np.stack([u.stats["mu"] for _, u in updates]).astype(np.float32)
        new = {
            "prior_ids": ids,
            "prior_mu": mus,
            "prior_var": np.stack([u.stats["sigma2"] for _, u in updates]).astype(np.float32),
            "prior_n": np.array([u.num_examples for _, u in updates], np.float32),
            "prior_round": np.full(len(ids), server_round, np.int64),
        }
        if self.cfg.prior_max_age > 1:
            new = merge_components(extra, new, server_round - self.cfg.prior_max_age)
        extra.update(new)
        if "store_ids" in extra:
            extra.update(update_store(extra, ids, mus))
        info = dict(state.info)
        info["prior_components"] = len(ids)
        return ServerState(arrays=arrays, extra=extra, info=info)

    # ----------------------------------------------------------------------------- client side
    def _prior(self, payload: Arrays, client_id: int, client_state: Arrays) -> Prior:
        if self.cfg.prior != "mixture" or payload.get("prior_n", np.zeros(0)).size == 0:
            return StandardNormalPrior()
        ids = payload["prior_ids"]
        n = payload["prior_n"].astype(np.float64)
        # pi is private and indexed by component owner, so it survives the store changing
        # membership from round to round; a new component starts at log(n_j / sum n).
        init = np.log(n / n.sum())
        stored = dict(
            zip(
                client_state.get("pi_ids", np.zeros(0, np.int64)).tolist(),
                client_state.get("pi_logits", np.zeros(0, np.float32)).tolist(),
                strict=True,
            )
        )
        pi = np.array([stored.get(int(j), init[i]) for i, j in enumerate(ids)], np.float32)
        exclude = None
        if self.cfg.exclude_own_component:
            own = np.flatnonzero(ids == client_id)
            if own.size and ids.size > 1:
                exclude = int(own[0])
        return FederatedMixturePrior(
            torch.as_tensor(payload["prior_mu"]),
            torch.as_tensor(payload["prior_var"]),
            torch.as_tensor(payload["prior_n"]),
            tau=float(payload["tau"][0]),
            estimator=self.cfg.kl_estimator,
            num_samples=self.cfg.kl_samples,
            exclude=exclude,
            pi_init=torch.as_tensor(pi),
            var_floor=self.cfg.prior_var_floor,
        )

    def client_train(
        self,
        global_arrays: Arrays,
        payload: Arrays,
        client: ClientTensors,
        client_state: Arrays,
        server_round: int,
        seed: int,
    ) -> tuple[ClientUpdate, Arrays]:
        model = self._model(global_arrays)
        prior = self._prior(payload, client.client_id, client_state)
        label: int | None = None
        if self.cfg.use_ortho and server_round > self.cfg.ortho_warmup_rounds:
            label = int(payload.get("proto_label", np.array([UNKNOWN]))[0])
            if label == UNKNOWN:
                label = self._fallback_label(model, client, payload)
        result = train_local(
            model,
            prior,
            client,
            label,
            replace(self.cfg, ortho_lambda=self.cfg.ortho_lambda_at(server_round)),
            steps=self.local.local_steps,
            lr=self.local.lr,
            batch_size=self.local.batch_size,
            seed=seed,
            latent_first_steps=self.local.latent_only_steps,
            prox_mu=self.local.prox_mu,
            num_groups=self._groups(payload),
            optimiser_kind=self.local.local_optimiser,
        )
        new_state = dict(client_state)
        if isinstance(prior, FederatedMixturePrior):
            merged = dict(
                zip(
                    client_state.get("pi_ids", np.zeros(0, np.int64)).tolist(),
                    client_state.get("pi_logits", np.zeros(0, np.float32)).tolist(),
                    strict=True,
                )
            )
            logits = prior.pi_logits.detach().numpy()
            merged.update(
                {int(j): float(v) for j, v in zip(payload["prior_ids"], logits, strict=True)}
            )
            keys = sorted(merged)
            new_state["pi_ids"] = np.array(keys, np.int64)
            new_state["pi_logits"] = np.array([merged[k] for k in keys], np.float32)
        new_state["rounds_trained"] = np.array(
            [int(client_state.get("rounds_trained", np.zeros(1))[0]) + 1], np.int64
        )
        metrics = dict(result.metrics)
        if label is not None:
            metrics["proto_label"] = float(label)
        stats = {
            "mu": result.mu_bar.numpy().astype(np.float32),
            "sigma2": result.sigma2_bar.numpy().astype(np.float32),
        }
        update = ClientUpdate(
            arrays=model.shared_state(),
            num_examples=result.num_examples,
            stats=stats,
            metrics=metrics,
        )
        return update, new_state

    @staticmethod
    def _groups(payload: Arrays) -> int | None:
        k = int(payload.get("num_groups", np.zeros(1))[0])
        return k or None

    def _fallback_label(
        self, model: VariationalPreferenceModel, client: ClientTensors, payload: Arrays
    ) -> int:
        """A client the server has not labelled yet joins the group its posterior is nearest.

        Nearest k-means centroid (in prototype order) when the server has clustered, else the
        nearest prototype (the paper's rule before any assignment). Centroids follow the data,
        whereas at radius s every unstructured posterior is nearest the same prototype, which
        would send all new clients to one group.
        """
        mu, _ = infer_posterior(model, client.labelled)
        anchors = payload.get("centroids")
        if anchors is None or anchors.size == 0:
            return int(model.prototypes.nearest(mu.unsqueeze(0), self._groups(payload))[0])
        return int(((anchors - mu.numpy()[None]) ** 2).sum(-1).argmin())

    def predictor(self, global_arrays: Arrays, client_state: Arrays | None = None) -> Predictor:
        model = self._model(global_arrays)
        model.eval()
        return VPLPredictor(model)

    def latent_stats(self, global_arrays: Arrays, client: ClientTensors) -> Arrays:
        """The evaluation posterior of a client (for KL, active units and the latent plot)."""
        model = self._model(global_arrays)
        mu, logvar = infer_posterior(model, client)
        return {"mu": mu.numpy().astype(np.float32), "logvar": logvar.numpy().astype(np.float32)}


VARIANTS = {
    "fedvpl": {"prior": "standard", "use_ortho": False},
    "fedvpl+ortho": {"prior": "standard", "use_ortho": True},
    "fedvpl+gp": {"prior": "mixture", "use_ortho": False},
    "fedvpa-gp": {"prior": "mixture", "use_ortho": True},
}


def make_variant(
    variant: str, model: dict[str, Any] | None = None, local: dict[str, Any] | None = None
) -> VariationalMethod:
    cfg = ModelConfig.from_dict(model or {})
    cfg = replace(cfg, **VARIANTS[variant])
    return VariationalMethod(variant, cfg, local)


def fedvpl(model: dict[str, Any] | None = None, local: dict[str, Any] | None = None):
    return make_variant("fedvpl", model, local)


def fedvpl_ortho(model: dict[str, Any] | None = None, local: dict[str, Any] | None = None):
    return make_variant("fedvpl+ortho", model, local)


def fedvpl_gp(model: dict[str, Any] | None = None, local: dict[str, Any] | None = None):
    return make_variant("fedvpl+gp", model, local)


def fedvpa_gp(model: dict[str, Any] | None = None, local: dict[str, Any] | None = None):
    return make_variant("fedvpa-gp", model, local)
