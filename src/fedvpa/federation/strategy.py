"""The server side: a Flower Strategy that drives any ``FederatedMethod``.

Flower's FedAvg sends one identical message to every sampled node and averages whatever comes
back. A method here needs more: per-client messages (each client its own prior components and
prototype label), a server state richer than one ArrayRecord, seen and unseen clients, and exact
resume. So ``MethodStrategy`` implements Flower's ``Strategy`` hooks on top of the method and
replaces ``start`` with a loop that adds node discovery, failure accounting, checkpoints and the
run folder.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedvpa.config import FederationSettings, to_flat
from fedvpa.errors import ConfigError
from fedvpa.federation import checkpoint as ckpt
from fedvpa.federation.messages import (
    ARRAYS_KEY,
    CONFIG_KEY,
    GLOBAL_DIGEST,
    GLOBAL_KEY,
    META_KEY,
    METRICS_KEY,
    NUM_EXAMPLES,
    PAYLOAD_KEY,
    STATS_KEY,
    arrays_digest,
    arrays_to_record,
    encode_kwargs,
    finite_or_none,
    metrics_to_dict,
    record_dict_bytes,
    record_to_arrays,
)
from fedvpa.federation.registry import create_method, method_reference
from fedvpa.methods.base import Arrays, ClientUpdate, FederatedMethod, ServerState

if TYPE_CHECKING:
    from fedvpa.experiment import ExperimentConfig
from fedvpa.model.diagnostics import active_units, kl_per_dimension, latent_silhouette


class FederationError(RuntimeError):
    """The federation could not make progress (too few replies, missing nodes, no results)."""


@dataclass(frozen=True)
class FederationConfig:
    """One federated run, resolved: the user's federation keys plus what the caller worked out
    (the method's full settings, where the client tensors and the run folder are, how many
    clients). Built by :meth:`from_experiment` from the same keys whichever way a run starts."""

    settings: FederationSettings  # settings.method is the method this run trains
    method_kwargs: dict[str, Any]
    data_path: str
    run_dir: str
    num_clients: int

    def __post_init__(self) -> None:
        if not self.run_dir:
            raise ConfigError("must be non-empty", field="run-dir")
        if self.num_clients < 1:
            raise ConfigError("must be >= 1", field="num-clients")

    @classmethod
    def from_experiment(
        cls,
        exp: ExperimentConfig,
        *,
        method: str,
        input_dim: int,
        data_path: str | Path,
        run_dir: str | Path,
        num_clients: int,
        resume: bool = False,
    ) -> FederationConfig:
        settings = replace(exp.federation, method=method, baseline="", resume=bool(resume))
        return cls(
            settings=settings,
            method_kwargs=exp.method_kwargs(input_dim),
            data_path=str(Path(data_path).expanduser().resolve()),
            run_dir=str(Path(run_dir).expanduser().resolve()),
            num_clients=int(num_clients),
        )

    @property
    def method(self) -> str:
        return self.settings.method

    @property
    def seed(self) -> int:
        return self.settings.seed

    @property
    def num_rounds(self) -> int:
        return self.settings.num_server_rounds

    @property
    def state_dir(self) -> str:
        chosen = self.settings.client_state_dir
        if chosen.lower() == "none":
            return ""
        return chosen or str(Path(self.run_dir) / "client_state")

    def method_effective(self) -> dict[str, Any]:
        """The method's settings with its defaults filled in (JSON-normalised)."""
        method = create_method(self.method, self.method_kwargs)
        return json.loads(json.dumps(method.effective_config()))

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues, including the method's
        defaults: a checkpoint written under other defaults must not be continued."""
        s = self.settings
        return {
            "method": s.method,
            "seed": s.seed,
            "clients_per_round": s.clients_per_round,
            "eval_every": s.eval_every,
            "min_reply_fraction": s.min_reply_fraction,
            "client_state_dir": s.client_state_dir,
            "data_path": self.data_path,
            "run_dir": self.run_dir,
            "num_clients": self.num_clients,
            "method_effective": self.method_effective(),
        }

    def record(self) -> dict[str, Any]:
        """What the run folder's ``config.json`` holds: every key of the run, flat."""
        return {
            **to_flat(self.settings),
            "data-path": self.data_path,
            "run-dir": self.run_dir,
            "num-clients": self.num_clients,
            "method-kwargs": self.method_kwargs,
        }


@dataclass(frozen=True)
class ClientInfo:
    node_id: int
    client_id: int
    user_type: str
    type_index: int
    unseen: bool
    num_examples: int


@dataclass
class ReplyTally:
    """Replies of one phase: the good ones, and how many errored or never came."""

    ok: list[tuple[ClientInfo, Message]]
    errors: int
    missing: int
    error_reasons: list[str]
    bytes_down: dict[int, int]
    bytes_up: dict[int, int]


def sample_clients(seed: int, server_round: int, seen_ids: list[int], k: int) -> list[int]:
    """``k`` seen clients for ``server_round``; a pure function of (seed, round, the id set)."""
    rng = np.random.default_rng(ckpt.derive_seed(seed, server_round, -1, ckpt.STREAM_SAMPLE))
    pool = sorted(seen_ids)
    chosen = rng.choice(len(pool), size=min(k, len(pool)), replace=False)
    return sorted(pool[int(i)] for i in chosen)


def weighted_mean_metrics(rows: list[tuple[float, dict[str, float]]]) -> dict[str, float]:
    """Average each metric over the clients that reported it, weighted by num-examples."""
    sums: dict[str, float] = defaultdict(float)
    weights: dict[str, float] = defaultdict(float)
    for weight, metrics in rows:
        for key, value in metrics.items():
            if math.isfinite(value):
                sums[key] += weight * value
                weights[key] += weight
    return {k: sums[k] / weights[k] for k in sorted(sums) if weights[k] > 0}


def accuracy_by_type(
    rows: list[Mapping[str, float]], type_names: Mapping[int, str]
) -> dict[str, Any]:
    """Per-user-type accuracy, seen and unseen apart, macro over types.

    ``fedvpa.evaluation.accuracy.merge_counts`` is the report everyone else uses; this fallback
    (same shape, accuracy only) keeps the runtime usable without it.
    """
    try:
        from fedvpa.evaluation.accuracy import merge_counts
    except ImportError:
        merge_counts = None
    if merge_counts is not None:
        return merge_counts(rows, type_names)
    report: dict[str, Any] = {}
    for split, unseen in (("seen", False), ("unseen", True)):
        pooled: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for row in rows:
            if bool(row["unseen"]) == unseen:
                name = type_names.get(int(row["type_index"]), str(int(row["type_index"])))
                pooled[name][0] += row["correct"]
                pooled[name][1] += row["n"]
        accs = {name: c / n for name, (c, n) in sorted(pooled.items()) if n > 0}
        if accs:
            report[split] = {**accs, "macro": float(np.mean(list(accs.values())))}
    return report


def latent_report(latents: list[tuple[Any, Arrays]]) -> dict[str, float | None]:
    """Collapse diagnostics from the clients' evaluation posteriors (seen clients only).

    KL is to ``N(0, I)`` for every method, so it is comparable across priors; active units count
    latent dimensions whose posterior mean varies across clients.
    """
    seen = [(info, lat) for info, lat in latents if not info.unseen] or latents
    mu = torch.as_tensor(np.stack([lat["mu"] for _, lat in seen]), dtype=torch.float32)
    out: dict[str, float | None] = {"eval/active_units": float(active_units(mu))}
    if all("logvar" in lat for _, lat in seen):
        logvar = torch.as_tensor(np.stack([lat["logvar"] for _, lat in seen]), dtype=torch.float32)
        out["eval/kl"] = float(kl_per_dimension(mu, logvar).sum())
    silhouette = latent_silhouette(mu, [info.type_index for info, _ in seen])
    out["eval/silhouette"] = silhouette if math.isfinite(silhouette) else None
    return out


def flatten_report(report: Mapping[str, Any], prefix: str = "eval") -> dict[str, float | None]:
    """Nested report -> ``{"eval/seen/macro": 0.61, ...}`` (non-finite values become None)."""
    out: dict[str, float | None] = {}
    for key, value in report.items():
        name = f"{prefix}/{key}"
        if isinstance(value, Mapping):
            out.update(flatten_report(value, name))
        elif isinstance(value, (int, float, np.integer, np.floating)):
            out[name] = finite_or_none(float(value))
    return out


class MethodStrategy(Strategy):
    """Holds the method's ``ServerState``; one instance per run."""

    def __init__(self, config: FederationConfig, method: FederatedMethod | None = None) -> None:
        self.config = config
        self.method = method or create_method(config.method, config.method_kwargs)
        self.method_ref = method_reference(config.method)
        self.kwargs_json = encode_kwargs(config.method_kwargs)
        self.run_dir = Path(config.run_dir)
        self.state: ServerState = self.method.init_server_state(config.seed)
        self.clients: dict[int, ClientInfo] = {}  # by client id
        self.history: list[dict[str, Any]] = []
        self.last_train: dict[str, Any] = {}
        self.last_latents: dict[str, Any] | None = None
        self.last_locate: ReplyTally | None = None

    # ------------------------------------------------------------------ Flower Strategy hooks

    def summary(self) -> None:
        print(  # noqa: T201 - the progress display is the console
            f"[fedvpa] method={self.config.method} clients={self.config.num_clients} "
            f"per-round={self.config.settings.clients_per_round} rounds={self.config.num_rounds} "
            f"seed={self.config.seed} run-dir={self.run_dir}",
            flush=True,
        )

    def _base_config(self, server_round: int) -> dict[str, Any]:
        return {
            "server-round": server_round,
            "method-ref": self.method_ref,
            "method-kwargs": self.kwargs_json,
            "data-path": self.config.data_path,
            "client-state-dir": self.config.state_dir,
        }

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One message per sampled seen client, each with its own payload and seed."""
        seen = [cid for cid, info in self.clients.items() if not info.unseen]
        chosen = sample_clients(
            self.config.seed, server_round, seen, self.config.settings.clients_per_round
        )
        located: dict[int, Arrays] | None = None
        digest = ""
        if self.method.needs_locate(server_round):
            digest = arrays_digest(self.state.arrays)
            located = self._locate(grid, arrays, chosen, server_round, digest)
        planned_from = self.state.arrays
        self.state = self.method.plan_round(self.state, chosen, server_round, located)
        # A located client already holds the weights unless planning moved them (FedVPA-GP's
        # prototypes in its first pull round): then everyone gets the new ones.
        moved = self.state.arrays is not planned_from
        if moved:
            arrays = arrays_to_record(self.state.arrays)
        messages = []
        for client_id in chosen:
            payload = self.method.client_payload(self.state, client_id, server_round)
            cfg = ConfigRecord(
                {
                    **dict(config),
                    **self._base_config(server_round),
                    "seed": ckpt.derive_seed(
                        self.config.seed, server_round, client_id, ckpt.STREAM_TRAIN
                    ),
                }
            )
            content = RecordDict({PAYLOAD_KEY: arrays_to_record(payload), CONFIG_KEY: cfg})
            if located is not None and not moved and client_id in located:
                cfg[GLOBAL_DIGEST] = digest
            else:
                content[GLOBAL_KEY] = arrays
            messages.append(
                Message(
                    content,
                    dst_node_id=self.clients[client_id].node_id,
                    message_type=MessageType.TRAIN,
                    group_id=str(server_round),
                )
            )
        return messages

    def _locate(
        self, grid: Grid, arrays: ArrayRecord, chosen: list[int], server_round: int, digest: str
    ) -> dict[int, Arrays]:
        """Ask the sampled clients where the current shared model puts them (``method.locate``).

        A client that fails here still trains (the method falls back for unplanned clients);
        the round stops only when fewer than the minimum reply fraction answer.
        """
        cfg = ConfigRecord({**self._base_config(server_round), GLOBAL_DIGEST: digest})
        messages = [
            Message(
                RecordDict({GLOBAL_KEY: arrays, CONFIG_KEY: cfg}),
                dst_node_id=self.clients[cid].node_id,
                message_type=MessageType.QUERY,
                group_id=f"{server_round}-locate",
            )
            for cid in chosen
        ]
        tally = self._send(grid, messages)
        self._require(tally, len(messages), "locate", server_round)
        self.last_locate = tally
        return {info.client_id: record_to_arrays(m.content.get(STATS_KEY)) for info, m in tally.ok}

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Fold the good replies into the server state, in client-id order (reply order is
        arbitrary; the method must see the same sequence on every run)."""
        by_node = {info.node_id: info for info in self.clients.values()}
        updates: list[tuple[int, ClientUpdate]] = []
        rows: list[tuple[float, dict[str, float]]] = []
        sources: dict[int, int] = {}
        reused = 0
        for msg in self._in_client_order(replies):
            if msg.has_error():
                continue
            info = by_node[msg.metadata.src_node_id]
            content = msg.content
            metrics = metrics_to_dict(content.get(METRICS_KEY))
            num_examples = int(metrics.pop(NUM_EXAMPLES))
            metrics.pop("client-id", None)
            source = int(metrics.pop("state-source", 0))
            reused += int(metrics.pop("weights-reused", 0))
            sources[source] = sources.get(source, 0) + 1
            update = ClientUpdate(
                arrays=record_to_arrays(content.get(ARRAYS_KEY)),
                num_examples=num_examples,
                stats=record_to_arrays(content.get(STATS_KEY)),
                metrics=metrics,
            )
            updates.append((info.client_id, update))
            rows.append((float(num_examples), metrics))
        if not updates:
            return None, None
        updates.sort(key=lambda item: item[0])
        ckpt.seed_everything(
            ckpt.derive_seed(self.config.seed, server_round, -1, ckpt.STREAM_AGGREGATE)
        )
        self.state = self.method.aggregate_round(self.state, updates, server_round)
        self.last_train = {
            "trained_clients": [cid for cid, _ in updates],
            "train": weighted_mean_metrics(rows),
            # where each client's private state came from: 0 fresh, 1 Context.state, 2 file
            "state_sources": {str(k): v for k, v in sorted(sources.items())},
            # clients that trained on the weights kept from this round's locate message
            "weights_reused": reused,
        }
        return arrays_to_record(self.state.arrays), MetricRecord(
            {k: v for k, v in self.last_train["train"].items() if math.isfinite(v)}
        )

    def _in_client_order(self, replies: Iterable[Message]) -> list[Message]:
        """Replies arrive in any order; sums over them must not (floating point)."""
        by_node = self.clients_by_node()
        return sorted(replies, key=lambda m: by_node.get(m.metadata.src_node_id, -1))

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Every client, seen and unseen, scores the current model on its own test pairs."""
        messages = []
        for client_id, info in sorted(self.clients.items()):
            cfg = ConfigRecord(
                {
                    **dict(config),
                    **self._base_config(server_round),
                    "seed": ckpt.derive_seed(
                        self.config.seed, server_round, client_id, ckpt.STREAM_EVAL
                    ),
                }
            )
            content = RecordDict({GLOBAL_KEY: arrays, CONFIG_KEY: cfg})
            messages.append(
                Message(
                    content,
                    dst_node_id=info.node_id,
                    message_type=MessageType.EVALUATE,
                    group_id=str(server_round),
                )
            )
        return messages

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Counts from every client -> per-type accuracy (seen / unseen, macro)."""
        report = self.evaluation_report(replies)
        if not report:
            return None
        return MetricRecord({k: v for k, v in report.items() if v is not None})

    def evaluation_report(self, replies: Iterable[Message]) -> dict[str, float | None]:
        by_node = {info.node_id: info for info in self.clients.values()}
        rows = []
        latents: list[tuple[Any, Arrays]] = []
        for msg in self._in_client_order(replies):
            if msg.has_error():
                continue
            info = by_node[msg.metadata.src_node_id]
            counts = metrics_to_dict(msg.content.get(METRICS_KEY))
            counts.pop("client-id", None)
            counts.pop("state-source", None)
            counts["type_index"] = float(info.type_index)
            counts["unseen"] = float(info.unseen)
            rows.append(counts)
            latent = (
                record_to_arrays(msg.content.get(STATS_KEY)) if STATS_KEY in msg.content else {}
            )
            if "mu" in latent:
                latents.append((info, latent))
        if not rows:
            return {}
        names = {info.type_index: info.user_type for info in self.clients.values()}
        report = flatten_report(accuracy_by_type(rows, names))
        if latents:
            report.update(latent_report(latents))
            self.last_latents = {
                "client_id": [info.client_id for info, _ in latents],
                "user_type": [info.user_type for info, _ in latents],
                "unseen": [bool(info.unseen) for info, _ in latents],
                "mu": [lat["mu"].astype(float).tolist() for _, lat in latents],
            }
        return report

    # ------------------------------------------------------------------ the run loop

    def discover(self, grid: Grid) -> None:
        """Wait for every node, then ask each which client it is.

        Sampling before all nodes registered would silently train on fewer clients in round 1.
        """
        expected = self.config.num_clients
        deadline = time.monotonic() + self.config.settings.node_wait_timeout
        while len(node_ids := sorted(grid.get_node_ids())) < expected:
            if time.monotonic() > deadline:
                raise FederationError(
                    f"only {len(node_ids)} of {expected} nodes connected after "
                    f"{self.config.settings.node_wait_timeout:.0f} s"
                )
            time.sleep(0.2)
        cfg = ConfigRecord(self._base_config(0))
        messages = [
            Message(RecordDict({CONFIG_KEY: cfg}), dst_node_id=nid, message_type=MessageType.QUERY)
            for nid in node_ids
        ]
        replies = list(
            grid.send_and_receive(messages, timeout=self.config.settings.node_wait_timeout)
        )
        failed = [m for m in replies if m.has_error()]
        if failed or len(replies) != len(node_ids):
            reasons = "; ".join(m.error.reason for m in failed[:3])
            raise FederationError(
                f"metadata query: {len(replies) - len(failed)} of {len(node_ids)} nodes "
                f"answered{': ' + reasons if reasons else ''}"
            )
        clients: dict[int, ClientInfo] = {}
        for msg in replies:
            meta = msg.content[META_KEY]
            info = ClientInfo(
                node_id=msg.metadata.src_node_id,
                client_id=int(meta["client-id"]),
                user_type=str(meta["user-type"]),
                type_index=int(meta["type-index"]),
                unseen=bool(meta["unseen"]),
                num_examples=int(meta[NUM_EXAMPLES]),
            )
            if info.client_id in clients:
                raise FederationError(f"two nodes claim client id {info.client_id}")
            clients[info.client_id] = info
        if not any(not c.unseen for c in clients.values()):
            raise FederationError("no seen client: nothing can train")
        self.clients = clients

    def _send(self, grid: Grid, messages: list[Message]) -> ReplyTally:
        by_node = {info.node_id: info for info in self.clients.values()}
        down = {
            by_node[m.metadata.dst_node_id].client_id: record_dict_bytes(m.content)
            for m in messages
        }
        replies = list(grid.send_and_receive(messages, timeout=self.config.settings.client_timeout))
        ok, reasons, up = [], [], {}
        for msg in replies:
            info = by_node.get(msg.metadata.src_node_id)
            if info is None:
                continue
            if msg.has_error():
                reasons.append(f"client {info.client_id}: {msg.error.reason}")
                continue
            ok.append((info, msg))
            up[info.client_id] = record_dict_bytes(msg.content)
        errors = len(reasons)
        return ReplyTally(ok, errors, len(messages) - len(ok) - errors, reasons, down, up)

    def _require(self, tally: ReplyTally, sent: int, phase: str, server_round: int) -> None:
        needed = max(1, math.ceil(self.config.settings.min_reply_fraction * sent))
        if len(tally.ok) < needed:
            detail = "; ".join(tally.error_reasons[:3])
            raise FederationError(
                f"round {server_round} {phase}: {len(tally.ok)} of {sent} clients replied "
                f"({tally.errors} errors, {tally.missing} timed out), need {needed}"
                f"{': ' + detail if detail else ''}"
            )

    def _checkpoint(self, server_round: int) -> None:
        ckpt.save_checkpoint(
            self.run_dir,
            ckpt.Checkpoint(
                server_round=server_round,
                state=self.state,
                metrics=self.history,
                rng=ckpt.capture_rng_state(),
                sampler_state={"kind": "derive_seed", "seed": self.config.seed},
                config=self.config.identity(),
            ),
        )

    def _restore(self) -> int:
        found = ckpt.load_checkpoint(self.run_dir)
        if found is None:
            return 0
        if found.config != self.config.identity():
            identity = self.config.identity()
            diff = sorted(k for k, v in identity.items() if found.config.get(k) != v)
            raise ConfigError(
                f"resume: configuration differs from the checkpointed run in {diff}",
                path=str(ckpt.checkpoint_path(self.run_dir)),
            )
        self.state = found.state
        self.history = found.metrics
        ckpt.restore_rng_state(found.rng)
        ckpt.rewrite_metrics(self.run_dir, self.history)
        return found.server_round

    def run(self, grid: Grid) -> dict[str, Any]:  # noqa: C901 - one readable loop
        """Discover, (resume,) train/evaluate every round, checkpoint, write the run folder."""
        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        start = self._restore() if cfg.settings.resume else 0
        if not cfg.settings.resume and ckpt.checkpoint_path(self.run_dir).exists():
            raise ConfigError(
                "run folder already holds a checkpoint: resume it or choose another folder",
                path=str(self.run_dir),
            )
        if start >= cfg.num_rounds:
            raise ConfigError(
                f"checkpoint is at round {start}: nothing to do for {cfg.num_rounds} rounds",
                path=str(self.run_dir),
                field="num-server-rounds",
            )
        if start == 0:
            ckpt.rewrite_metrics(self.run_dir, [])
        ckpt.write_json(
            self.run_dir / ckpt.CONFIG_FILE,
            {
                **cfg.record(),
                "method_ref": self.method_ref,
                "method_effective": json.loads(json.dumps(self.method.effective_config())),
            },
        )
        self.summary()
        self.discover(grid)
        t0 = time.monotonic()
        for server_round in range(start + 1, cfg.num_rounds + 1):
            t_round = time.monotonic()
            self.last_locate = None
            arrays = arrays_to_record(self.state.arrays)
            train_msgs = list(self.configure_train(server_round, arrays, ConfigRecord(), grid))
            tally = self._send(grid, train_msgs)
            self._require(tally, len(train_msgs), "train", server_round)
            self.last_train = {}
            self.aggregate_train(server_round, [m for _, m in tally.ok])
            row: dict[str, Any] = {
                "round": server_round,
                "sampled": sorted(
                    self.clients_by_node()[m.metadata.dst_node_id] for m in train_msgs
                ),
                "trained": self.last_train["trained_clients"],
                "replies": len(tally.ok),
                "failures": tally.errors + tally.missing,
                "errors": tally.errors,
                "timeouts": tally.missing,
                "bytes_down": sum(tally.bytes_down.values()),
                "bytes_up": sum(tally.bytes_up.values()),
                "bytes_down_per_client": {str(k): v for k, v in sorted(tally.bytes_down.items())},
                "bytes_up_per_client": {str(k): v for k, v in sorted(tally.bytes_up.items())},
                "train": {k: finite_or_none(v) for k, v in self.last_train["train"].items()},
                "state_sources": self.last_train["state_sources"],
                "weights_reused": self.last_train["weights_reused"],
                **self.method.round_info(self.state),
            }
            if self.last_locate is not None:
                # The locate exchange is traffic of this round's clients: count it with theirs.
                loc = self.last_locate
                row["locate_replies"] = len(loc.ok)
                row["locate_failures"] = loc.errors + loc.missing
                for key, extra in (("down", loc.bytes_down), ("up", loc.bytes_up)):
                    per = row[f"bytes_{key}_per_client"]
                    for cid, n in extra.items():
                        per[str(cid)] = per.get(str(cid), 0) + n
                    row[f"bytes_{key}_per_client"] = dict(
                        sorted(per.items(), key=lambda kv: int(kv[0]))
                    )
                    row[f"bytes_{key}"] += sum(extra.values())
            if server_round % cfg.settings.eval_every == 0 or server_round == cfg.num_rounds:
                arrays = arrays_to_record(self.method.evaluation_arrays(self.state))
                eval_msgs = list(
                    self.configure_evaluate(server_round, arrays, ConfigRecord(), grid)
                )
                etally = self._send(grid, eval_msgs)
                self._require(etally, len(eval_msgs), "evaluate", server_round)
                row["eval"] = self.evaluation_report([m for _, m in etally.ok])
                row["eval_replies"] = len(etally.ok)
                row["eval_failures"] = etally.errors + etally.missing
                row["eval_bytes_down"] = sum(etally.bytes_down.values())
                row["eval_bytes_up"] = sum(etally.bytes_up.values())
            self.history.append(row)
            self._checkpoint(server_round)
            ckpt.append_metrics(self.run_dir, row)
            self._progress(row, time.monotonic() - t_round)
        final = self.final_metrics(time.monotonic() - t0, start)
        ckpt.write_json(self.run_dir / ckpt.FINAL_FILE, final)
        return final

    def clients_by_node(self) -> dict[int, int]:
        return {info.node_id: cid for cid, info in self.clients.items()}

    def final_metrics(self, seconds: float, resumed_from: int) -> dict[str, Any]:
        evals = [row for row in self.history if "eval" in row]
        last_eval = evals[-1] if evals else {}
        return {
            "method": self.config.method,
            "seed": self.config.seed,
            "rounds": len(self.history),
            "resumed_from": resumed_from,
            "final_round": self.history[-1]["round"] if self.history else 0,
            "eval_round": last_eval.get("round"),
            "eval": last_eval.get("eval", {}),
            "train": self.history[-1]["train"] if self.history else {},
            "bytes_down_total": int(sum(r["bytes_down"] for r in self.history)),
            "bytes_up_total": int(sum(r["bytes_up"] for r in self.history)),
            "failures_total": int(sum(r["failures"] for r in self.history)),
            "seen_clients": sorted(c for c, i in self.clients.items() if not i.unseen),
            "unseen_clients": sorted(c for c, i in self.clients.items() if i.unseen),
            "info": self.state.info,
            "latent": self._latent_summary(),
            "seconds_this_process": seconds,
        }

    def _latent_summary(self) -> dict[str, Any] | None:
        """The last evaluation's client posterior means and the prototypes (for the plots)."""
        if self.last_latents is None:
            return None
        protos = self.state.arrays.get("prototypes.weight")
        uses_protos = bool(getattr(getattr(self.method, "cfg", None), "use_ortho", False))
        return {
            **self.last_latents,
            "prototypes": protos.astype(float).tolist()
            if protos is not None and uses_protos
            else None,
        }

    def _progress(self, row: dict[str, Any], seconds: float) -> None:
        parts = [
            f"[fedvpa] round {row['round']}/{self.config.num_rounds}",
            f"replies {row['replies']}/{row['replies'] + row['failures']}",
            f"up {row['bytes_up'] / 1024:.1f} KiB down {row['bytes_down'] / 1024:.1f} KiB",
        ]
        loss = row["train"].get("loss")
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        for split in ("seen", "unseen"):
            acc = row.get("eval", {}).get(f"eval/{split}/macro")
            if acc is not None:
                parts.append(f"{split} acc {acc:.3f}")
        parts.append(f"{seconds:.1f}s")
        print(" | ".join(parts), flush=True)  # noqa: T201 - the progress display
