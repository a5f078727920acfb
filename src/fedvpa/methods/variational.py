"""FedVPL, FedVPA-GP and their ablations: one latent model, two switches.

``prior="mixture"`` turns on the Federated Mixture Prior (the server's store of last round's
client posteriors, Gumbel-Softmax weights with a private ``pi`` per client) and ``use_ortho`` the
orthogonal prototypes with server-side balanced k-means labels. FedVPL is both off; FedVPA-GP both
on. Keeping the variants in one class guarantees the ablations differ in exactly those switches.
"""

from __future__ import annotations

import hashlib
import logging
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
from fedvpa.methods.base import (
    Arrays,
    ClientUpdate,
    FederatedMethod,
    Predictor,
    ServerState,
    TrainRequest,
)
from fedvpa.methods.local_config import LocalConfig
from fedvpa.methods.posterior_store import (
    PRIOR_KEYS,
    compress_prior_rows,
    merge_components,
    update_store,
    without_population,
)
from fedvpa.model.config import ModelConfig
from fedvpa.model.priors import (
    FederatedMixturePrior,
    Prior,
    StandardNormalPrior,
    prior_reading_points,
)
from fedvpa.model.prototypes import (
    assign_prototype_labels,
    balanced_kmeans_with_centroids,
    choose_num_groups,
    nearest_orthogonal_prototypes,
    order_clusters_by_prototypes,
)
from fedvpa.model.vpl import VariationalPreferenceModel
from fedvpa.training.batched import (
    ClientJob,
    batch_reason,
    settings_batch_reason,
    train_local_batched,
)
from fedvpa.training.local import (
    LocalResult,
    PopulationPredictor,
    VPLPredictor,
    infer_posterior,
    train_local,
)

PROTOTYPES_KEY = "prototypes.weight"
UNKNOWN = -1

log = logging.getLogger(__name__)


class VariationalMethod(FederatedMethod):
    """The latent-preference family; see the module docstring for the switches."""

    dp_supported = True
    log_scale_stats = frozenset({"sigma2"})
    _prior_cache: tuple[bytes, Arrays] | None = None  # the last merged prior (_prior_rows)
    _frozen_cache: tuple[bytes, VariationalPreferenceModel] | None = None  # _frozen_model
    # a batch that could not share a pass was logged (train_batch): once per process holding
    # the method, which Flower's ClientApp caches per worker (simulation) or per message
    _fallback_said = False

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

    def _frozen_model(self, arrays: Arrays) -> VariationalPreferenceModel:
        """The shared model for reading only (evaluation, locate, latent statistics), built
        once per set of weights. A node reads many clients with the same weights, and building
        the modules was half of a client's evaluation (cProfile, main job's data). Keyed by the
        weights' content, so weights changed in place cannot be served stale; never trained."""
        digest = hashlib.blake2b(digest_size=16)
        for key in sorted(arrays):
            value = np.ascontiguousarray(arrays[key])
            digest.update(f"{key}|{value.dtype}|{value.shape}|".encode())
            digest.update(value.tobytes())
        if self._frozen_cache is None or self._frozen_cache[0] != digest.digest():
            model = self._model(arrays)
            model.eval()
            self._frozen_cache = (digest.digest(), model)
        return self._frozen_cache[1]

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

    @property
    def uses_stats(self) -> bool:
        """Whether the server needs each client's posterior after training: for the mixture
        prior's components and the prototype store. FedVPL needs neither, so its clients keep
        their posteriors (less to protect, and under DP one release a round fewer to pay for),
        unless ``latent-inference = "population"`` asks for the population of posteriors."""
        return (
            self.cfg.prior == "mixture"
            or self.cfg.use_ortho
            or self.cfg.latent_inference == "population"
        )

    def stats_shapes(self, server_round: int) -> dict[str, tuple[int, ...]]:
        d = self.cfg.latent_dim
        return {"mu": (d,), "sigma2": (d,)} if self.uses_stats else {}

    def locate_shapes(self, server_round: int) -> dict[str, tuple[int, ...]]:
        return {"mu": (self.cfg.latent_dim,)}

    def stats_releases(self, server_round: int) -> int:
        # the posterior after training (if used), and the locate reply
        return int(self.uses_stats) + int(self.needs_locate(server_round))

    def locate(self, global_arrays: Arrays, client: ClientTensors) -> Arrays:
        """The client's posterior mean under the round's shared model (``d`` floats): the
        encoder's, or, when the arrays carry the population (a census), the population
        posterior mean that evaluation reads."""
        population = self._population_predictor(global_arrays)
        if population is not None:
            return {"mu": population.latent(client).numpy().astype(np.float32)}
        mu, _ = infer_posterior(self._frozen_model(global_arrays), client.labelled)
        return {"mu": mu.numpy().astype(np.float32)}

    def census_arrays(self, state: ServerState, server_round: int) -> Arrays | None:
        """The shared weights and the population rows, once: in the first pull round, while
        ``num-prototypes = "auto"`` has not chosen (``group-census``).

        The store of latest encoder means that the choice used otherwise holds means from up to
        ten different models, and the encoder places a client from a dozen pairs far less
        consistently with its user type than the population does (``benchmarks/group_choice.py``:
        adjusted Rand index 0.03-0.14 against 0.32-0.59 at round 10 on ``synthetic-4``)."""
        wanted = (
            self.takes_census
            and self.needs_locate(server_round)
            and int(state.extra["num_groups"][0]) == 0
            and state.extra.get("prior_n", np.zeros(0)).size > 0
        )
        return self._with_population(state.arrays, state.extra) if wanted else None

    @property
    def takes_census(self) -> bool:
        """``group-census`` where it has something to choose (``num-prototypes = "auto"`` with
        the prototype pull) and a population to place clients by."""
        cfg = self.cfg
        return cfg.group_census and cfg.auto_groups and cfg.use_ortho and self.population_inference

    def take_census(
        self, state: ServerState, placements: Mapping[int, Arrays], server_round: int
    ) -> ServerState:
        """Choose the number of groups from the census (in client-id order, so the k-means
        restarts do not depend on the order replies arrived in); ``plan_round`` then uses it."""
        if not placements or int(state.extra["num_groups"][0]) != 0:
            return state
        mus = np.stack([placements[c]["mu"] for c in sorted(placements)]).astype(np.float32)
        extra, info = dict(state.extra), {**state.info, "group_census": len(placements)}
        self._choose_groups(mus, server_round, extra, info)
        return ServerState(arrays=state.arrays, extra=extra, info=info)

    def _choose_groups(
        self, points: np.ndarray, server_round: int, extra: Arrays, info: dict[str, Any]
    ) -> int:
        """``num-prototypes = "auto"``: the silhouette's group count for ``points``, kept in
        ``extra`` (and its scores in ``info``); returned."""
        k, scores = choose_num_groups(
            points, min(self.cfg.max_groups, self.cfg.latent_dim), server_round
        )
        extra["num_groups"] = np.array([k])
        info["group_scores"] = {str(j): round(v, 4) for j, v in scores.items()}
        return k

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
            k = self._choose_groups(extra["store_mu"], server_round, extra, info)
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
        """For the run log: the number of prototype groups in use (0 before it is chosen) and
        the mixture components the round's clients received (``prior-max-components``)."""
        info = super().round_info(state)
        if self.cfg.use_ortho:
            info["num_groups"] = int(state.extra.get("num_groups", np.zeros(1))[0])
        if "prior_components_sent" in state.info:
            info["prior_components_sent"] = int(state.info["prior_components_sent"])
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
        if self.sends_prior(server_round):
            exclude = client_id if self.cfg.exclude_own_component else None
            payload.update(self._prior_rows(extra, exclude))
        return payload

    def sends_prior(self, server_round: int) -> bool:
        return self.cfg.prior == "mixture" and server_round > self.cfg.prior_warmup_rounds

    def _prior_rows(self, extra: Arrays, exclude: int | None = None) -> Arrays:
        """``compress_prior_rows`` with the round's result kept: every client of a round (and
        ``aggregate``'s count) gets the same merge, which costs ~0.1 s at J = 10,000, so it is
        computed once per store rather than once per client. Keyed by the store's content."""
        k = self.cfg.prior_max_components
        if k == 0 or extra["prior_n"].size <= k:
            return compress_prior_rows(extra, k, self.cfg.prior_var_floor, exclude)
        digest = hashlib.blake2b(repr((k, self.cfg.prior_var_floor, exclude)).encode())
        for key in PRIOR_KEYS:
            digest.update(np.ascontiguousarray(extra[key]).tobytes())
        if self._prior_cache is not None and self._prior_cache[0] == digest.digest():
            return self._prior_cache[1]
        sent = compress_prior_rows(extra, k, self.cfg.prior_var_floor, exclude)
        self._prior_cache = (digest.digest(), sent)
        return sent

    def aggregate(
        self, state: ServerState, updates: Sequence[tuple[int, ClientUpdate]], server_round: int
    ) -> ServerState:
        updates = sorted(updates, key=lambda item: item[0])  # reply order must not matter
        mean = weighted_average([(u.arrays, float(u.num_examples)) for _, u in updates])
        arrays, extra = apply_server_step(
            state.arrays, mean, dict(state.extra), self.local.server_step, server_round
        )
        extra = update_model_average(extra, arrays, self.local.model_average_decay)
        if not self.uses_stats:
            return ServerState(arrays=arrays, extra=extra, info=dict(state.info))
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
        if self.sends_prior(server_round):  # what this round's clients received (no exclusion)
            sent = self._prior_rows(state.extra)
            info["prior_components_sent"] = int(sent["prior_n"].size)
        else:
            info.pop("prior_components_sent", None)
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

    def _prepare(
        self,
        model: VariationalPreferenceModel,
        payload: Arrays,
        client: ClientTensors,
        client_state: Arrays,
        server_round: int,
    ) -> tuple[Prior, int | None]:
        """A client's prior and prototype label for this round's local steps."""
        prior = self._prior(payload, client.client_id, client_state)
        label: int | None = None
        if self.cfg.use_ortho and server_round > self.cfg.ortho_warmup_rounds:
            label = int(payload.get("proto_label", np.array([UNKNOWN]))[0])
            if label == UNKNOWN:
                label = self._fallback_label(model, client, payload)
        return prior, label

    def _round_cfg(self, server_round: int) -> ModelConfig:
        return replace(self.cfg, ortho_lambda=self.cfg.ortho_lambda_at(server_round))

    def _reply(
        self,
        arrays: Arrays,
        result: LocalResult,
        pi_logits: torch.Tensor | None,
        label: int | None,
        payload: Arrays,
        client_state: Arrays,
    ) -> tuple[ClientUpdate, Arrays]:
        """The update a client sends and the private state it keeps, after its local steps."""
        new_state = dict(client_state)
        if pi_logits is not None:
            merged = dict(
                zip(
                    client_state.get("pi_ids", np.zeros(0, np.int64)).tolist(),
                    client_state.get("pi_logits", np.zeros(0, np.float32)).tolist(),
                    strict=True,
                )
            )
            logits = pi_logits.detach().numpy()
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
        stats = (
            {
                "mu": result.mu_bar.numpy().astype(np.float32),
                "sigma2": result.sigma2_bar.numpy().astype(np.float32),
            }
            if self.uses_stats
            else {}
        )
        update = ClientUpdate(
            arrays=arrays, num_examples=result.num_examples, stats=stats, metrics=metrics
        )
        return update, new_state

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
        prior, label = self._prepare(model, payload, client, client_state, server_round)
        result = train_local(
            model,
            prior,
            client,
            label,
            self._round_cfg(server_round),
            steps=self.local.local_steps,
            lr=self.local.lr,
            batch_size=self.local.batch_size,
            seed=seed,
            latent_first_steps=self.local.latent_only_steps,
            prox_mu=self.local.prox_mu,
            num_groups=self._groups(payload),
            optimiser_kind=self.local.local_optimiser,
        )
        pi = prior.pi_logits if isinstance(prior, FederatedMixturePrior) else None
        return self._reply(model.shared_state(), result, pi, label, payload, client_state)

    def batching_note(self) -> str | None:
        if not self.local.batched_clients:
            return None
        reason = settings_batch_reason(self.cfg, self.local.prox_mu, self.validation_share)
        if reason is None:
            return None
        return f"batched-clients is on, but {reason}: {self.name}'s clients train one at a time"

    def train_batch(
        self, global_arrays: Arrays, requests: Sequence[TrainRequest], server_round: int
    ) -> list[tuple[ClientUpdate, Arrays] | Exception] | None:
        """With ``batched-clients``, a node's clients train in one vectorised pass
        (``training/batched.py``): the same steps and random numbers as one at a time, other
        floating-point rounding. ``None`` (train them one at a time) when the setting is off or
        the clients cannot share a pass (``batch_reason``)."""
        static = settings_batch_reason(self.cfg, self.local.prox_mu, self.validation_share)
        if not self.local.batched_clients or len(requests) < 2 or static is not None:
            return None  # a reason the settings give was said at start-up (batching_note)
        model = self._model(global_arrays)
        jobs: list[ClientJob] = []
        for req in requests:
            prior, label = self._prepare(model, req.payload, req.client, req.state, server_round)
            jobs.append(ClientJob(req.client, prior, label, req.seed))
        cfg = self._round_cfg(server_round)
        groups = {self._groups(req.payload) for req in requests}
        reason = batch_reason(cfg, self.local.prox_mu, jobs)
        if len(groups) > 1:
            reason = "the clients were sent different group counts"
        if reason is not None:
            if not self._fallback_said:
                self._fallback_said = True
                log.warning(
                    "batched-clients: %s; such clients train one at a time (said once here)", reason
                )
            return None
        results = train_local_batched(
            model,
            jobs,
            cfg,
            steps=self.local.local_steps,
            lr=self.local.lr,
            batch_size=self.local.batch_size,
            latent_first_steps=self.local.latent_only_steps,
            num_groups=groups.pop(),
            optimiser_kind=self.local.local_optimiser,
        )
        replies: list[tuple[ClientUpdate, Arrays] | Exception] = []
        for out, job, req in zip(results, jobs, requests, strict=True):
            pi, label = out.pi_logits, job.proto_label
            replies.append(self._reply(out.arrays, out.result, pi, label, req.payload, req.state))
        return replies

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

    @property
    def latent_reading(self) -> str:
        """How evaluation (and stage 2) reads a client's ``z``: "population", "prior" or
        "encoder" (``latent-inference``, with "auto" resolved). "auto" reads the population
        wherever the server keeps it; else the model's own prior, which needs no message and
        brought FedVPL 1-8 points closer to the ideal than its encoder (README); the Laplace
        encoder already reads the selector's posterior, so it keeps its own."""
        mode = self.cfg.latent_inference
        if mode != "auto":
            return mode
        if self.uses_stats:
            return "population"
        return "encoder" if self.cfg.encoder == "laplace" else "prior"

    @property
    def population_inference(self) -> bool:
        """Whether evaluation reads ``z`` from the population of posterior means."""
        return self.latent_reading == "population"

    def inference_points(self, arrays: Arrays) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The points (``[J, d]``) and weights (``[J]``) a client's pairs choose among when its
        ``z`` is read (``population_latent``): the population rows the evaluation arrays carry,
        the prior's fixed draws under "prior" (nothing travels for them), or None where the
        encoder is read."""
        if "population_mu" in arrays:
            return (
                torch.as_tensor(np.asarray(arrays["population_mu"], np.float32)),
                torch.as_tensor(np.asarray(arrays["population_n"], np.float32)),
            )
        if self.latent_reading != "prior":
            return None
        draws = prior_reading_points(self.cfg.latent_dim, self.cfg.prior_draws)
        return draws, torch.ones(len(draws))

    def evaluation_arrays(self, state: ServerState) -> Arrays:
        """The evaluated weights, and under population inference the prior rows (as the
        round's clients receive them, ``prior-max-components`` included); before the first
        posterior reaches the server there are none and evaluation reads the encoder. The rows
        are the current store's also when a validation share selected an earlier round's
        weights (the store of that round is not kept)."""
        arrays = super().evaluation_arrays(state)
        if not self.population_inference or state.extra.get("prior_n", np.zeros(0)).size == 0:
            return arrays
        return self._with_population(arrays, state.extra)

    def _with_population(self, arrays: Arrays, extra: Arrays) -> Arrays:
        """``arrays`` and the prior rows as the round's clients receive them
        (``prior-max-components`` included), under the names population inference reads."""
        rows = self._prior_rows(extra)
        return {**arrays, "population_mu": rows["prior_mu"], "population_n": rows["prior_n"]}

    def predictor(self, global_arrays: Arrays, client_state: Arrays | None = None) -> Predictor:
        population = self._population_predictor(global_arrays)
        if population is not None:
            return population
        return VPLPredictor(self._frozen_model(without_population(global_arrays)))

    def _population_predictor(self, global_arrays: Arrays) -> PopulationPredictor | None:
        """The predictor of population or prior inference, or None where the encoder is read
        (``inference_points``)."""
        points = self.inference_points(global_arrays)
        if points is None:
            return None
        return PopulationPredictor(self._frozen_model(without_population(global_arrays)), *points)

    def latent_stats(
        self, global_arrays: Arrays, client: ClientTensors, predictor: Predictor | None = None
    ) -> Arrays:
        """The evaluation posterior of a client (for KL, active units and the latent plot):
        the encoder's, whichever ``z`` the predictor reads; under population inference also
        that ``z`` (``d`` floats), which stage 2's group ``z`` averages: the mean of a group's
        encoder means serves the group far worse than the mean of the ``z`` the evaluation
        read (README, "Stage 2"). The evaluation's own ``predictor`` is reused: it holds the
        model and, having just scored the client, its ``z`` (building them again was half of a
        client's evaluation time)."""
        if not isinstance(predictor, VPLPredictor) or predictor.z_override is not None:
            predictor = self.predictor(global_arrays)
        assert isinstance(predictor, VPLPredictor)
        mu, logvar = infer_posterior(predictor.model, client)
        out = {"mu": mu.numpy().astype(np.float32), "logvar": logvar.numpy().astype(np.float32)}
        if isinstance(predictor, PopulationPredictor):
            out["z"] = predictor.latent(client).numpy().astype(np.float32)
        return out


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
