"""The round protocol, without Flower: sample -> (census) -> locate -> plan -> payload -> train ->
aggregate -> evaluate, and the row a round leaves in the run log.

Every runtime runs rounds through :class:`RoundProtocol`: the Flower transport
(``federation/transport.py``), the in-process loop of the tests and benchmarks
(``protocol/in_process.py``) and any future one. A runtime only supplies a :class:`Transport`,
which moves arrays to clients and replies back; what is sampled, planned, sent, folded and
reported is decided here, once. The protocol knows the method only through
``methods/base.py``: it never names a method or a method's array.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from fedvpa.config import FederationSettings
from fedvpa.evaluation.accuracy import flatten_report, merge_counts
from fedvpa.evaluation.latents import latent_report
from fedvpa.methods.base import Arrays, ClientUpdate, FederatedMethod, ServerState
from fedvpa.privacy.guard import ClientLevelDP
from fedvpa.protocol import seeds
from fedvpa.protocol.run_folder import finite_or_none

T = TypeVar("T")


class FederationError(RuntimeError):
    """The federation could not make progress (too few replies, missing nodes, no results)."""


@dataclass(frozen=True)
class ClientRecord:
    """What the server knows of a client: who it is, never what it holds."""

    client_id: int
    user_type: str
    type_index: int
    unseen: bool
    num_examples: int


@dataclass(frozen=True)
class TrainJob:
    """One client's share of a round: its payload, its seed, and whether it already holds the
    round's weights (kept from this round's locate message, so only their digest is sent)."""

    client_id: int
    payload: Arrays
    seed: int
    holds_weights: bool = False


@dataclass(frozen=True)
class EvalReply:
    """A client's evaluation: counts of correct predictions (by split of its test pairs) and,
    for a latent method, its evaluation posterior (2d floats; under population inference also
    the ``z`` the evaluation read, d floats)."""

    counts: dict[str, float]
    latent: Arrays = field(default_factory=dict)


@dataclass
class Replies(Generic[T]):
    """One phase's replies by client id, and what went wrong or over the wire."""

    ok: dict[int, T]
    errors: int = 0
    missing: int = 0
    error_reasons: list[str] = field(default_factory=list)
    bytes_down: dict[int, int] = field(default_factory=dict)
    bytes_up: dict[int, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # transport facts for the run log


class Transport(Protocol):
    """How a runtime reaches the clients. Each call returns the replies that came back."""

    def locate(
        self, server_round: int, client_ids: Sequence[int], arrays: Arrays
    ) -> Replies[Arrays]: ...

    def train(
        self, server_round: int, arrays: Arrays, jobs: Sequence[TrainJob]
    ) -> Replies[ClientUpdate]: ...

    def evaluate(
        self, server_round: int, arrays: Arrays, client_seeds: Mapping[int, int]
    ) -> Replies[EvalReply]: ...


def sample_clients(seed: int, server_round: int, seen_ids: Sequence[int], k: int) -> list[int]:
    """``k`` seen clients for ``server_round``; a pure function of (seed, round, the id set)."""
    rng = np.random.default_rng(seeds.derive_seed(seed, server_round, -1, seeds.STREAM_SAMPLE))
    pool = sorted(seen_ids)
    chosen = rng.choice(len(pool), size=min(k, len(pool)), replace=False)
    return sorted(pool[int(i)] for i in chosen)


def weighted_mean_metrics(rows: Sequence[tuple[float, Mapping[str, float]]]) -> dict[str, float]:
    """Average each metric over the clients that reported it, weighted by num-examples."""
    sums: dict[str, float] = defaultdict(float)
    weights: dict[str, float] = defaultdict(float)
    for weight, metrics in rows:
        for key, value in metrics.items():
            if math.isfinite(value):
                sums[key] += weight * value
                weights[key] += weight
    return {k: sums[k] / weights[k] for k in sorted(sums) if weights[k] > 0}


class RoundProtocol:
    """The server's side of a federated run, one round at a time; holds the ``ServerState``."""

    def __init__(
        self,
        method: FederatedMethod,
        settings: FederationSettings,
        clients: Mapping[int, ClientRecord],
        state: ServerState | None = None,
        completed_rounds: int = 0,
    ) -> None:
        self.method = method
        self.settings = settings
        self.clients = dict(clients)
        if not any(not c.unseen for c in self.clients.values()):
            raise FederationError("no seen client: nothing can train")
        self.state = state if state is not None else method.init_server_state(settings.seed)
        self.last_latents: dict[str, Any] | None = None
        # Client-level DP (privacy/guard.py); a resumed run is charged for its finished rounds.
        self.privacy: ClientLevelDP | None = None
        if settings.dp_enabled:
            self.privacy = ClientLevelDP(method, settings, len(self.seen_ids))
            self.privacy.replay(completed_rounds)
        self.stopped: str | None = None  # why the run ended before its last round, if it did

    @property
    def seen_ids(self) -> list[int]:
        return sorted(cid for cid, c in self.clients.items() if not c.unseen)

    def allows(self, server_round: int) -> bool:
        """Whether ``server_round`` may run: with ``dp-max-epsilon``, only if its spend fits
        (otherwise the run stops cleanly after the last checkpointed round)."""
        if self.privacy is None or self.privacy.allows(server_round):
            return True
        self.stopped = (
            f"dp-max-epsilon {self.settings.dp_max_epsilon:g} reached: round {server_round} "
            f"would spend more (epsilon {self.privacy.accountant.epsilon():.3f} after round "
            f"{server_round - 1})"
        )
        return False

    def evaluates(self, server_round: int) -> bool:
        s = self.settings
        return server_round % s.eval_every == 0 or server_round == s.num_server_rounds

    def require(self, replies: Replies[Any], sent: int, phase: str, server_round: int) -> None:
        """Stop the run when too few clients answered (``min-reply-fraction``)."""
        needed = max(1, math.ceil(self.settings.min_reply_fraction * sent))
        if len(replies.ok) < needed:
            detail = "; ".join(replies.error_reasons[:3])
            raise FederationError(
                f"round {server_round} {phase}: {len(replies.ok)} of {sent} clients replied "
                f"({replies.errors} errors, {replies.missing} timed out), need {needed}"
                f"{': ' + detail if detail else ''}"
            )

    # ------------------------------------------------------------------ one round

    def run_round(self, server_round: int, transport: Transport) -> dict[str, Any]:
        """Run round ``server_round`` through ``transport``; return its run-log row."""
        method, seed = self.method, self.settings.seed
        chosen = sample_clients(seed, server_round, self.seen_ids, self.settings.clients_per_round)
        located: dict[int, Arrays] | None = None
        phases: list[Replies[Any]] = []
        row: dict[str, Any] = {"round": server_round, "sampled": chosen}
        census = method.census_arrays(self.state, server_round)
        if census is not None and self.privacy is None:  # under DP: no census (privacy/guard.py)
            placed = reject_malformed_located(
                transport.locate(server_round, self.seen_ids, census),
                method.locate_shapes(server_round),
            )
            self.require(placed, len(self.seen_ids), "census", server_round)
            self.state = method.take_census(self.state, placed.ok, server_round)
            phases.append(placed)
            row["census_replies"] = len(placed.ok)
            row["census_failures"] = placed.errors + placed.missing
        if method.needs_locate(server_round):
            found = reject_malformed_located(
                transport.locate(server_round, chosen, self.state.arrays),
                method.locate_shapes(server_round),
            )
            self.require(found, len(chosen), "locate", server_round)
            located = (
                found.ok if self.privacy is None else self.privacy.located(server_round, found.ok)
            )
            phases.append(found)
            row["locate_replies"] = len(found.ok)
            row["locate_failures"] = found.errors + found.missing
        before = self.state.arrays
        self.state = method.plan_round(self.state, chosen, server_round, located)
        # A located client already holds the weights unless planning moved them (FedVPA-GP's
        # prototypes in its first pull round): then everyone gets the new ones.
        moved = self.state.arrays is not before
        jobs = [
            TrainJob(
                client_id=cid,
                payload=method.client_payload(self.state, cid, server_round),
                seed=seeds.derive_seed(seed, server_round, cid, seeds.STREAM_TRAIN),
                holds_weights=located is not None and not moved and cid in located,
            )
            for cid in chosen
        ]
        trained = reject_malformed(
            transport.train(server_round, self.state.arrays, jobs),
            self.state.arrays,
            method.stats_shapes(server_round),
        )
        self.require(trained, len(jobs), "train", server_round)
        phases.append(trained)
        updates = sorted(trained.ok.items())  # client-id order: sums must not depend on replies
        if self.privacy is not None:
            updates = self.privacy.updates(server_round, self.state.arrays, updates)
        seeds.seed_everything(seeds.derive_seed(seed, server_round, -1, seeds.STREAM_AGGREGATE))
        self.state = method.aggregate_round(self.state, updates, server_round)
        metrics = weighted_mean_metrics([(float(u.num_examples), u.metrics) for _, u in updates])
        row.update(
            {
                "trained": [cid for cid, _ in updates],
                "replies": len(trained.ok),
                "failures": trained.errors + trained.missing,
                "errors": trained.errors,
                "timeouts": trained.missing,
                **_traffic(phases),
                "train": {k: finite_or_none(v) for k, v in metrics.items()},
                **trained.info,
                **method.round_info(self.state),
            }
        )
        if self.privacy is not None:
            row["dp"] = self.privacy.charge(server_round)
        if self.evaluates(server_round):
            row.update(self.evaluate(server_round, transport))
        return row

    def evaluate(self, server_round: int, transport: Transport) -> dict[str, Any]:
        """Every client, seen and unseen, scores the evaluated weights on its own test pairs."""
        seed = self.settings.seed
        client_seeds = {
            cid: seeds.derive_seed(seed, server_round, cid, seeds.STREAM_EVAL)
            for cid in sorted(self.clients)
        }
        arrays = self.method.evaluation_arrays(self.state)
        replies = transport.evaluate(server_round, arrays, client_seeds)
        self.require(replies, len(client_seeds), "evaluate", server_round)
        return {
            "eval": self.evaluation_report(replies.ok),
            "eval_replies": len(replies.ok),
            "eval_failures": replies.errors + replies.missing,
            "eval_bytes_down": sum(replies.bytes_down.values()),
            "eval_bytes_up": sum(replies.bytes_up.values()),
        }

    def evaluation_report(self, replies: Mapping[int, EvalReply]) -> dict[str, float | None]:
        """Per-client counts -> per-type accuracy (seen / unseen, macro) and latent diagnostics."""
        rows, latents = [], []
        for cid in sorted(replies):
            info, reply = self.clients[cid], replies[cid]
            rows.append({**reply.counts, "type_index": info.type_index, "unseen": info.unseen})
            if "mu" in reply.latent:
                latents.append((info, reply.latent))
        if not rows:
            return {}
        names = {c.type_index: c.user_type for c in self.clients.values()}
        report = flatten_report(merge_counts(rows, names))
        if latents:
            report.update(latent_report(latents))
            self.last_latents = {
                "client_id": [info.client_id for info, _ in latents],
                "user_type": [info.user_type for info, _ in latents],
                "unseen": [bool(info.unseen) for info, _ in latents],
                "mu": [lat["mu"].astype(float).tolist() for _, lat in latents],
            }
            if all("z" in lat for _, lat in latents):  # the z evaluation read (population)
                self.last_latents["z"] = [lat["z"].astype(float).tolist() for _, lat in latents]
        return report

    # ------------------------------------------------------------------ the whole run

    def final_metrics(
        self, history: Sequence[Mapping[str, Any]], seconds: float, resumed_from: int
    ) -> dict[str, Any]:
        """What ``final.json`` holds: the last evaluation, totals over the run, the server info."""
        evals = [row for row in history if "eval" in row]
        last_eval = evals[-1] if evals else {}
        latent = None
        if self.last_latents is not None:
            anchors = self.method.latent_anchors(self.state)
            latent = {
                **self.last_latents,
                "prototypes": None if anchors is None else anchors.astype(float).tolist(),
            }
        return {
            "method": self.settings.method,
            "seed": self.settings.seed,
            "rounds": len(history),
            "resumed_from": resumed_from,
            "final_round": history[-1]["round"] if history else 0,
            "eval_round": last_eval.get("round"),
            "eval": last_eval.get("eval", {}),
            "train": history[-1]["train"] if history else {},
            "bytes_down_total": int(sum(r["bytes_down"] for r in history)),
            "bytes_up_total": int(sum(r["bytes_up"] for r in history)),
            "failures_total": int(sum(r["failures"] for r in history)),
            "seen_clients": self.seen_ids,
            "unseen_clients": sorted(c for c, i in self.clients.items() if i.unseen),
            "info": self.state.info,
            "latent": latent,
            "privacy": None if self.privacy is None else self.privacy.report(),
            "stopped": self.stopped,
            "seconds_this_process": seconds,
        }


def malformed_reason(
    update: ClientUpdate, sent: Arrays, stats: Mapping[str, tuple[int, ...]] | None = None
) -> str | None:
    """Why a training reply cannot be aggregated, or ``None``: an array the server did not send,
    of another shape, or holding a NaN / inf, a statistic that is not finite or (where the
    method declares them, ``stats``) missing, unexpected or of another shape, or a weight that
    is not a positive count. A client that crashed half-way, a corrupted message or a hostile
    client must not reach the mean (one NaN poisons every later round)."""
    if not isinstance(update, ClientUpdate):
        return f"reply is a {type(update).__name__}, not a client update"
    for key, value in update.arrays.items():
        if key not in sent:
            return f"array {key!r} was not sent"
        if not isinstance(value, np.ndarray) or value.shape != sent[key].shape:
            return (
                f"array {key!r} has shape {getattr(value, 'shape', None)}, sent {sent[key].shape}"
            )
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            return f"array {key!r} holds NaN or inf"
    if why := vectors_reason(update.stats, stats, "statistic"):
        return why
    if isinstance(update.num_examples, bool) or not isinstance(
        update.num_examples, int | np.integer
    ):
        return "num_examples is not an integer"
    if update.num_examples < 1:
        return f"num_examples is {update.num_examples}"
    return None


def vectors_reason(
    values: Any, shapes: Mapping[str, tuple[int, ...]] | None, what: str
) -> str | None:
    """Why a reply's small float vectors (statistics, a locate reply) cannot be used, or
    ``None``: not float arrays, not finite (one NaN poisons a mean; a NaN posterior mean ends
    the server's k-means in an exception), or, where the method declares ``shapes``, other
    names or shapes than declared (a missing one used to crash ``aggregate``)."""
    if not isinstance(values, Mapping):
        return f"{what}s are a {type(values).__name__}, not named arrays"
    if shapes is not None and set(values) != set(shapes):
        return f"{what}s {sorted(values)}, expected {sorted(shapes)}"
    for key, value in values.items():
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
            return f"{what} {key!r} is not a float array"
        if shapes is not None and value.shape != shapes[key]:
            return f"{what} {key!r} has shape {value.shape}, expected {shapes[key]}"
        if not np.all(np.isfinite(value)):
            return f"{what} {key!r} holds NaN or inf"
    return None


def reject_malformed_located(
    replies: Replies[Any], shapes: Mapping[str, tuple[int, ...]] | None
) -> Replies[Any]:
    """Locate ``replies`` less the malformed ones (where the method declares ``shapes``)."""
    if shapes is None:
        return replies
    bad = {
        cid: why
        for cid, r in replies.ok.items()
        if (why := vectors_reason(r, shapes, "locate value"))
    }
    return _without(replies, bad, "malformed locate reply")


def _without(replies: Replies[Any], bad: Mapping[int, str], what: str) -> Replies[Any]:
    """``replies`` less the clients in ``bad``, counted as errors with ``what`` and reason."""
    if not bad:
        return replies
    ok = {cid: r for cid, r in replies.ok.items() if cid not in bad}
    reasons = [*replies.error_reasons, *(f"client {c}: {what}: {w}" for c, w in bad.items())]
    return dataclasses.replace(
        replies, ok=ok, errors=replies.errors + len(bad), error_reasons=reasons
    )


def reject_malformed(
    replies: Replies[ClientUpdate],
    sent: Arrays,
    stats: Mapping[str, tuple[int, ...]] | None = None,
) -> Replies[ClientUpdate]:
    """``replies`` less the malformed ones, counted as errors with their reason."""
    bad = {cid: why for cid, u in replies.ok.items() if (why := malformed_reason(u, sent, stats))}
    return _without(replies, bad, "malformed reply")


def _traffic(phases: Sequence[Replies[Any]]) -> dict[str, Any]:
    """Bytes to and from each client over a round's phases (locate counts with training)."""
    out: dict[str, Any] = {}
    for key in ("down", "up"):
        per: dict[int, int] = defaultdict(int)
        for phase in phases:
            for cid, n in getattr(phase, f"bytes_{key}").items():
                per[cid] += int(n)
        out[f"bytes_{key}"] = int(sum(per.values()))
        out[f"bytes_{key}_per_client"] = {str(k): v for k, v in sorted(per.items())}
    return out
