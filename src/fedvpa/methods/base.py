"""The seam between the maths of a method and the federated runtime that drives it.

A method says what the server holds, what each client is sent, what a client does with its own
data, and how the server folds the replies back in. The runtime (Flower, or the in-process loop
used by tests) only moves these objects around: it never needs to know which method it runs.

Everything that crosses the client/server boundary is a ``dict[str, numpy.ndarray]`` (so it maps
one-to-one onto Flower ``ArrayRecord`` / ``MetricRecord`` contents and can be measured in bytes),
plus plain scalars in ``metrics``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from fedvpa.embeddings.tensors import ClientTensors, PairTensors
from fedvpa.methods import validation

if TYPE_CHECKING:  # local_config -> server_optimiser imports this module
    from fedvpa.methods.local_config import LocalConfig

Arrays = dict[str, np.ndarray]


@dataclass
class ClientUpdate:
    """What a client sends back after local training: never text, embeddings or labels."""

    arrays: Arrays  # updated shared weights
    num_examples: int  # FedAvg weight n_i
    stats: Arrays = field(default_factory=dict)  # e.g. {"mu": [d], "sigma2": [d]} (2d floats)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainRequest:
    """One client's share of a training message: its pairs, payload, private state and seed."""

    client: ClientTensors
    payload: Arrays
    state: Arrays
    seed: int


@dataclass
class ServerState:
    """Everything the server keeps between rounds (checkpointed as a whole)."""

    arrays: Arrays  # the global shared weights
    extra: Arrays = field(default_factory=dict)  # e.g. prior store, prototype labels
    info: dict[str, Any] = field(default_factory=dict)  # JSON-able bookkeeping


AVERAGE_PREFIX = "average/"


def average_or_global(state: ServerState) -> Arrays:
    """The moving average of the global weights kept in ``state.extra``, if there is one."""
    average = {
        k[len(AVERAGE_PREFIX) :]: v for k, v in state.extra.items() if k.startswith(AVERAGE_PREFIX)
    }
    return average if average and set(average) == set(state.arrays) else state.arrays


class Predictor(Protocol):
    """The evaluation seam any method plugs into.

    ``prob_a_preferred(client, pairs)`` returns P(A preferred) for ``pairs`` of ``client``. A
    personalised method may read ``client.context`` (labelled pairs) but never ``pairs``' labels.
    """

    def prob_a_preferred(self, client: ClientTensors, pairs: PairTensors) -> torch.Tensor: ...


class FederatedMethod(ABC):
    """One federated learning method. Pure with respect to I/O: the runtime does the messaging."""

    name: str = "method"
    local: LocalConfig | None = None  # client-side settings, for the methods that have them
    #: Whether client-level DP (``privacy/``) protects every exchange of this method: its
    #: ``aggregate`` folds the shared weights as a ``num_examples``-weighted mean of the arrays
    #: each update holds (the guard sets equal weights and noises each update), and every
    #: ``stats`` and ``locate`` array is a float vector the server may clip and noise. Under DP a
    #: method without it is refused at start-up rather than run unprotected.
    dp_supported: bool = False
    #: Positive statistics (variances): clipped and noised in log space.
    log_scale_stats: frozenset[str] = frozenset()

    @abstractmethod
    def init_server_state(self, seed: int) -> ServerState:
        """Fresh global weights and server-side stores, deterministic in ``seed``."""

    def effective_config(self) -> dict[str, Any]:
        """Every setting that changes what the method computes, defaults filled in.

        Run fingerprints hash this, so a changed default can never reuse a stale result. A
        method without settings returns ``{}``.
        """
        return {}

    def needs_locate(self, server_round: int) -> bool:
        """Whether the runtime must ask this round's sampled clients for ``locate`` first.

        A locate exchange costs one extra message pair per client; a method asks for it only
        when the server must decide something from where the current shared model puts each
        client (FedVPA-GP's prototype labels).
        """
        return False

    def stats_releases(self, server_round: int) -> int:
        """Statistics each sampled client reveals in ``server_round`` besides its weight update
        (its ``stats`` after training, its ``locate`` reply): the privacy accountant charges
        each one. A method whose updates carry ``stats`` counts them here."""
        return int(self.needs_locate(server_round))

    def stats_shapes(self, server_round: int) -> dict[str, tuple[int, ...]] | None:
        """The statistics a training reply of ``server_round`` must carry, by name and shape;
        the round protocol rejects a reply with others (one missing key used to crash
        ``aggregate`` with a ``KeyError``). ``None``: not declared, not checked (a plug-in
        method that predates this)."""
        return None

    def locate_shapes(self, server_round: int) -> dict[str, tuple[int, ...]] | None:
        """What a locate reply of ``server_round`` must hold, by name and shape (finite floats);
        ``None``: not declared, not checked."""
        return None

    def locate(self, global_arrays: Arrays, client: ClientTensors) -> Arrays:
        """Client side of the locate exchange: small statistics under the current shared model
        (never raw data); ``{}`` if the method does not use it."""
        return {}

    @property
    def takes_census(self) -> bool:
        """Whether the method's settings ask for a census at some round (``census_arrays``);
        under DP the round protocol skips it and the run says so at start-up."""
        return False

    def census_arrays(self, state: ServerState, server_round: int) -> Arrays | None:
        """What a census sends every seen client before ``server_round`` is planned, or
        ``None`` (no census; the default). Each client answers with ``locate`` on these arrays,
        and :meth:`take_census` decides from the answers. FedVPA-GP uses it once, to choose
        its number of groups from where every client is placed under one model."""
        return None

    def take_census(
        self, state: ServerState, placements: Mapping[int, Arrays], server_round: int
    ) -> ServerState:
        """The state after a census's ``placements`` (``locate`` replies by client id)."""
        return state

    def plan_round(
        self,
        state: ServerState,
        client_ids: Sequence[int],
        server_round: int,
        located: Mapping[int, Arrays] | None = None,
    ) -> ServerState:
        """Called once per round with the sampled clients, before any payload is built.

        A method that coordinates the sampled clients (FedBiscuit's balanced groups, FedVPA-GP's
        prototype labels) decides here and keeps the decision in the returned state; ``located``
        holds the ``locate`` replies by client id when ``needs_locate`` asked for them. A plan that
        changes shared weights returns them in a new dict (never edits ``state.arrays`` in place):
        the runtime resends weights to located clients only when the dict is a new one.
        """
        return state

    def evaluation_arrays(self, state: ServerState) -> Arrays:
        """The weights the run evaluates and reports: the global weights, a method's average
        of them over recent rounds (``model-average-decay``), or, with a validation share, the
        global weights with the best validation likelihood so far (``methods/validation.py``)."""
        if self.validation_share > 0:
            chosen = validation.selected_arrays(state)
            if chosen is not None:
                return chosen
        return average_or_global(state)

    @property
    def validation_share(self) -> float:
        """Share of each client's labelled pairs held out of training for model selection
        (``validation-share``); 0 (none) for a method without local settings."""
        return self.local.validation_share if self.local is not None else 0.0

    def train_on_client(
        self,
        global_arrays: Arrays,
        payload: Arrays,
        client: ClientTensors,
        client_state: Arrays,
        server_round: int,
        seed: int,
    ) -> tuple[ClientUpdate, Arrays]:
        """What every runtime calls on a client: ``client_train`` on the client's pairs less
        its validation share, with the received model's validation scores added to the
        reply's metrics (two sums and a count; see ``methods/validation.py``)."""
        held, val = validation.hold_out(client, self.validation_share)
        scores: dict[str, float] = {}
        if val is not None:
            scores = validation.validation_scores(
                self.predictor(global_arrays, client_state or None), held, val
            )
        update, new_state = self.client_train(
            global_arrays, payload, held, client_state, server_round, seed
        )
        update.metrics.update(scores)
        return update, new_state

    def train_batch(
        self, global_arrays: Arrays, requests: Sequence[TrainRequest], server_round: int
    ) -> list[tuple[ClientUpdate, Arrays] | Exception] | None:
        """Train several clients of one message together, if the method can (a result or an
        exception per request, in order); ``None``, the default, has the runtime call
        ``train_on_client`` for each in turn."""
        return None

    def batching_note(self) -> str | None:
        """A start-up line for a run with ``batched-clients`` on whose clients will train one at
        a time anyway (``None``: nothing to say), so that the setting never does nothing
        silently. Only the variational family batches; the others say so here."""
        if self.local is None or not self.local.batched_clients:
            return None
        return (
            f"batched-clients is on, but {self.name} has no batched pass: its clients train one "
            "at a time (it applies to FedVPL and FedVPA-GP)"
        )

    def aggregate_round(
        self, state: ServerState, updates: Sequence[tuple[int, ClientUpdate]], server_round: int
    ) -> ServerState:
        """What every runtime calls on the server: ``aggregate``, then model selection on the
        round's validation scores when the method holds a validation share."""
        after = self.aggregate(state, updates, server_round)
        if self.validation_share <= 0:
            return after
        score = validation.round_validation_nll(updates)
        return validation.keep_best(state, after, score, server_round)

    def round_info(self, state: ServerState) -> dict[str, Any]:
        """Scalars the run log records each round (e.g. the number of groups in use); ``{}``
        by default, plus the model selection's when there is a validation share. The runtime
        writes them without knowing what they mean."""
        return validation.selection_info(state) if self.validation_share > 0 else {}

    def latent_anchors(self, state: ServerState) -> np.ndarray | None:
        """Points in latent space the method draws clients towards (FedVPA-GP's prototypes in
        use), for the latent plot; ``None`` for a method without any."""
        return None

    def latent_stats(
        self, global_arrays: Arrays, client: ClientTensors, predictor: Predictor | None = None
    ) -> Arrays:
        """Evaluation-time latent of a client (``{"mu", "logvar"}``) for diagnostics; ``{}`` if
        the method has no latent. ``predictor``: the one that just scored the client on
        ``global_arrays`` (``evaluate_step``), whose model and ``z`` need not be built again."""
        return {}

    def client_payload(self, state: ServerState, client_id: int, server_round: int) -> Arrays:
        """Per-client extras sent with the shared weights (prior components, prototype label)."""
        return {}

    @abstractmethod
    def client_train(
        self,
        global_arrays: Arrays,
        payload: Arrays,
        client: ClientTensors,
        client_state: Arrays,
        server_round: int,
        seed: int,
    ) -> tuple[ClientUpdate, Arrays]:
        """Local steps on the client's own data.

        ``client_state`` is the client's private state from earlier rounds (empty at first); the
        second return value replaces it. It stays on the client (Flower ``Context.state``).
        """

    @abstractmethod
    def aggregate(
        self, state: ServerState, updates: Sequence[tuple[int, ClientUpdate]], server_round: int
    ) -> ServerState:
        """Fold the replies of one round (client id, update) into a new server state."""

    @abstractmethod
    def predictor(self, global_arrays: Arrays, client_state: Arrays | None = None) -> Predictor:
        """A predictor built from the global weights (and, if given, a client's private state)."""
