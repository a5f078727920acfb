"""The server's side on Flower: the round protocol's :class:`Transport` over a Flower ``Grid``.

``protocol/round.py`` decides every round (sampling, planning, payloads, aggregation,
evaluation); this module only turns its requests into Flower ``Message``s, sends them, and turns
the replies (and the errors and timeouts among them) back into the protocol's types, counting
the bytes each way. ``run_server`` is the whole server: discover the nodes, open the run folder
(resume included), run the rounds, write the results.

Why not a subclass of Flower's ``Strategy`` driven by ``Strategy.start``: ``start`` has no step
for the locate exchange FedVPA-GP needs before it plans a round, no node discovery (which node is
which client), no resume from a checkpoint and no per-round checkpoint; filling its hooks would
mean doing network I/O inside ``configure_train`` and passing state between hooks behind
Flower's back. A transport with three calls says what happens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedvpa.federation.messages import (
    ARRAYS_KEY,
    CLIENT_ID,
    CLIENTS_KEY,
    CLIENTS_PER_NODE,
    CONFIG_KEY,
    ERRORS_KEY,
    GLOBAL_DIGEST,
    GLOBAL_KEY,
    META_KEY,
    METRICS_KEY,
    NUM_EXAMPLES,
    PAYLOAD_KEY,
    SEEDS_KEY,
    STATE_SOURCE,
    STATS_KEY,
    WEIGHTS_REUSED,
    arrays_digest,
    arrays_to_record,
    encode_kwargs,
    metrics_to_dict,
    per_client,
    record_dict_bytes,
    record_to_arrays,
)
from fedvpa.federation.registry import create_method, method_reference
from fedvpa.federation.run_config import FederationConfig
from fedvpa.methods.base import Arrays, ClientUpdate, FederatedMethod
from fedvpa.protocol.round import (
    ClientRecord,
    EvalReply,
    FederationError,
    Replies,
    RoundProtocol,
    TrainJob,
)
from fedvpa.protocol.run_folder import RunFolder


class FlowerTransport:
    """Messages to the nodes of a ``Grid``: one node per client, or with ``clients-per-node``
    k > 1 one node per k clients and one message per node and phase (see messages.py)."""

    def __init__(self, grid: Grid, config: FederationConfig) -> None:
        self.grid = grid
        self.config = config
        self.method_ref = method_reference(config.method)
        self.kwargs_json = encode_kwargs(config.method_kwargs)
        self.nodes: dict[int, int] = {}  # client id -> node id
        self.digest: dict[int, str] = {}  # round -> digest of the weights its locate sent
        # clients-per-node > 1: one message per node and phase for all of its clients
        self.per_node = int(config.settings.clients_per_node)
        self._pending: list[tuple[Message, list[int], Callable[[RecordDict], Any]]] = []

    def base_config(self, server_round: int) -> dict[str, Any]:
        """What every message tells a client: the round and how to build the method and data."""
        config = {
            "server-round": server_round,
            "method-ref": self.method_ref,
            "method-kwargs": self.kwargs_json,
            "data-path": self.config.data_path,
            "client-state-dir": self.config.state_dir,
        }
        if self.per_node > 1:
            config[CLIENTS_PER_NODE] = self.per_node
        return config

    @property
    def batched(self) -> bool:
        return self.per_node > 1

    # ------------------------------------------------------------------ discovery

    def discover(self) -> dict[int, ClientRecord]:
        """Wait for every node, then ask each which client it is.

        Sampling before all nodes registered would silently train on fewer clients in round 1.
        """
        expected = math.ceil(self.config.num_clients / self.per_node)
        wait = self.config.settings.node_wait_timeout
        deadline = time.monotonic() + wait
        while len(node_ids := sorted(self.grid.get_node_ids())) < expected:
            if time.monotonic() > deadline:
                raise FederationError(
                    f"only {len(node_ids)} of {expected} nodes connected after {wait:.0f} s"
                )
            time.sleep(0.2)
        cfg = ConfigRecord(self.base_config(0))
        messages = [
            Message(RecordDict({CONFIG_KEY: cfg}), dst_node_id=nid, message_type=MessageType.QUERY)
            for nid in node_ids
        ]
        # The first reply of a node loads its ClientApp and data, as slow as a training round
        # on a loaded machine, so it gets a round's time-out, not the connection wait.
        timeout = max(wait, self.config.settings.client_timeout)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        failed = [m for m in replies if m.has_error()]
        if failed or len(replies) != len(node_ids):
            reasons = "; ".join(m.error.reason for m in failed[:3])
            raise FederationError(
                f"metadata query: {len(replies) - len(failed)} of {len(node_ids)} nodes "
                f"answered within {timeout:.0f} s{': ' + reasons if reasons else ''} "
                "(raise client-timeout on a slow or busy machine)"
            )
        clients: dict[int, ClientRecord] = {}
        for msg in replies:
            meta = msg.content[META_KEY]

            def column(key: str, meta: ConfigRecord = meta) -> list[Any]:
                value = meta[key]
                return list(value) if isinstance(value, list) else [value]

            rows = zip(
                column("client-id"), column("user-type"), column("type-index"),
                column("unseen"), column(NUM_EXAMPLES), strict=True,
            )  # fmt: skip
            for cid, user_type, type_index, unseen, examples in rows:
                record = ClientRecord(
                    client_id=int(cid),
                    user_type=str(user_type),
                    type_index=int(type_index),
                    unseen=bool(unseen),
                    num_examples=int(examples),
                )
                if record.client_id in clients:
                    raise FederationError(f"two nodes claim client id {record.client_id}")
                clients[record.client_id] = record
                self.nodes[record.client_id] = msg.metadata.src_node_id
        if len(clients) != self.config.num_clients:
            raise FederationError(
                f"the nodes hold {len(clients)} clients, the run expects "
                f"{self.config.num_clients} (num-clients, clients-per-node = {self.per_node})"
            )
        return clients

    # ------------------------------------------------------------------ the protocol's calls

    def locate(
        self, server_round: int, client_ids: Sequence[int], arrays: Arrays
    ) -> Replies[Arrays]:
        """Ask the sampled clients where the current shared model puts them; each keeps the
        weights, so its train message of this round carries only their digest."""
        digest = arrays_digest(arrays)
        self.digest[server_round] = digest
        cfg = {**self.base_config(server_round), GLOBAL_DIGEST: digest}
        shared = {GLOBAL_KEY: arrays_to_record(arrays)}
        jobs = {cid: ({}, 0) for cid in client_ids}
        self._queue(
            jobs, shared, cfg, MessageType.QUERY, server_round, "locate",
            lambda content: record_to_arrays(content[STATS_KEY]),
        )  # fmt: skip
        return self._flush()

    def train(
        self, server_round: int, arrays: Arrays, jobs: Sequence[TrainJob]
    ) -> Replies[ClientUpdate]:
        record = arrays_to_record(arrays)
        sources: dict[str, int] = {}
        reused = 0

        def unpack(content: RecordDict) -> ClientUpdate:
            nonlocal reused
            metrics = metrics_to_dict(content.get(METRICS_KEY))
            num_examples = int(metrics.pop(NUM_EXAMPLES))
            metrics.pop(CLIENT_ID, None)
            source = str(int(metrics.pop(STATE_SOURCE, 0)))
            sources[source] = sources.get(source, 0) + 1
            reused += int(metrics.pop(WEIGHTS_REUSED, 0))
            return ClientUpdate(
                arrays=record_to_arrays(content.get(ARRAYS_KEY)),
                num_examples=num_examples,
                stats=record_to_arrays(content.get(STATS_KEY)),
                metrics=metrics,
            )

        # A message carries the weights unless every client it is for kept them from this
        # round's locate; then only their digest.
        by_node: dict[int, list[TrainJob]] = {}
        for job in jobs:
            by_node.setdefault(self._node_key(job.client_id), []).append(job)
        for group in by_node.values():
            cfg = self.base_config(server_round)
            shared: dict[str, Any] = {}
            if all(job.holds_weights for job in group):
                cfg[GLOBAL_DIGEST] = self.digest[server_round]
            else:
                shared[GLOBAL_KEY] = record
            own = {job.client_id: ({PAYLOAD_KEY: arrays_to_record(job.payload)}, job.seed)
                   for job in group}  # fmt: skip
            self._queue(own, shared, cfg, MessageType.TRAIN, server_round, "", unpack)
        replies = self._flush()
        replies.info = {"state_sources": dict(sorted(sources.items())), "weights_reused": reused}
        return replies

    def evaluate(
        self, server_round: int, arrays: Arrays, client_seeds: dict[int, int]
    ) -> Replies[EvalReply]:
        def unpack(content: RecordDict) -> EvalReply:
            counts = metrics_to_dict(content.get(METRICS_KEY))
            counts.pop(CLIENT_ID, None)
            counts.pop(STATE_SOURCE, None)
            latent = record_to_arrays(content[STATS_KEY]) if STATS_KEY in content else {}
            return EvalReply(counts, latent)

        self._queue(
            {cid: ({}, seed) for cid, seed in client_seeds.items()},
            {GLOBAL_KEY: arrays_to_record(arrays)}, self.base_config(server_round),
            MessageType.EVALUATE, server_round, "", unpack,
        )  # fmt: skip
        return self._flush()

    # ------------------------------------------------------------------ messaging

    def _node_key(self, client_id: int) -> int:
        """Messages are grouped by node when nodes hold batches, else one per client."""
        return self.nodes[client_id] if self.batched else -1 - client_id

    def _queue(
        self,
        jobs: dict[int, tuple[dict[str, Any], int]],
        shared: dict[str, Any],
        config: dict[str, Any],
        kind: str,
        server_round: int,
        phase: str,
        unpack: Callable[[RecordDict], Any],
    ) -> None:
        """The messages of one phase, waiting for ``_flush``: ``jobs`` maps a client id to its
        own records and seed, ``shared`` holds what each message carries once (the weights)."""
        groups: dict[int, list[int]] = {}
        for cid in jobs:
            groups.setdefault(self._node_key(cid), []).append(cid)
        for cids in groups.values():
            cfg = dict(config)
            if self.batched:
                cfg[CLIENTS_KEY] = [int(c) for c in cids]
                cfg[SEEDS_KEY] = [int(jobs[c][1]) for c in cids]
                own = {per_client(k, c): v for c in cids for k, v in jobs[c][0].items()}
            else:
                if kind != MessageType.QUERY:
                    cfg["seed"] = int(jobs[cids[0]][1])
                own = dict(jobs[cids[0]][0])
            content = RecordDict({**shared, **own, CONFIG_KEY: ConfigRecord(cfg)})
            message = Message(
                content,
                dst_node_id=self.nodes[cids[0]],
                message_type=kind,
                group_id=f"{server_round}{'-' + phase if phase else ''}",
            )
            self._pending.append((message, cids, unpack))

    def _flush(self) -> Replies[Any]:
        """Send the queued messages, wait up to ``client-timeout``; replies by client id. A
        failed message fails each client it was for; in a batched reply a client named in
        ``ERRORS_KEY`` fails alone."""
        pending, self._pending = self._pending, []
        down: dict[int, int] = {}
        for message, cids, _ in pending:
            # a client's cost: its own records and its share of what the message shares
            total = record_dict_bytes(message.content)
            own = {c: _own_bytes(message.content, c, self.batched) for c in cids}
            common = (total - sum(own.values())) / len(cids)
            for c in cids:
                down[c] = int(round(own[c] + common))
        by_node = {m.metadata.dst_node_id: (cids, unpack) for m, cids, unpack in pending}
        timeout = self.config.settings.client_timeout
        answered = self.grid.send_and_receive([m for m, _, _ in pending], timeout=timeout)
        ok: dict[int, Any] = {}
        reasons: list[str] = []
        up: dict[int, int] = {}
        errors = 0
        heard: set[int] = set()
        for msg in answered:
            entry = by_node.get(msg.metadata.src_node_id)
            if entry is None:
                continue
            cids, unpack = entry
            heard.update(cids)
            if msg.has_error():
                reasons.extend(f"client {c}: {msg.error.reason}" for c in cids)
                errors += len(cids)
                continue
            if not self.batched:
                ok[cids[0]] = unpack(msg.content)
                up[cids[0]] = record_dict_bytes(msg.content)
                continue
            record = msg.content.get(ERRORS_KEY)
            failed = dict(record) if isinstance(record, ConfigRecord) else {}
            for c in cids:
                suffix = f".{c}"
                mine = RecordDict(
                    {k[: -len(suffix)]: r for k, r in msg.content.items() if k.endswith(suffix)}
                )
                if str(c) in failed or not len(mine):
                    reasons.append(f"client {c}: {failed.get(str(c), 'no reply in the batch')}")
                    errors += 1
                    continue
                ok[c] = unpack(mine)
                up[c] = record_dict_bytes(mine)
        missing = sum(1 for _, cids, _ in pending for c in cids if c not in heard)
        reasons.sort(key=lambda text: int(text.split(":")[0].split()[-1]))
        return Replies(dict(sorted(ok.items())), errors, missing, reasons, down, up)


def _own_bytes(content: RecordDict, client_id: int, batched: bool) -> int:
    """Bytes of the records that belong to one client of a message."""
    if not batched:
        return sum(r.count_bytes() for k, r in content.items() if k not in (GLOBAL_KEY, CONFIG_KEY))
    suffix = f".{int(client_id)}"
    return sum(r.count_bytes() for k, r in content.items() if k.endswith(suffix))


def run_server(
    grid: Grid, config: FederationConfig, method: FederatedMethod | None = None
) -> dict[str, Any]:
    """The whole server side of a run: discover, open (or resume) the run folder, run every round
    through the protocol, checkpoint each, and write ``final.json``."""
    import json

    method = method or create_method(config.method, config.method_kwargs)
    settings = config.settings
    folder = RunFolder(config.run_dir, config.identity(), settings.num_server_rounds)
    found = folder.begin(
        settings.resume,
        {
            **config.record(),
            "method_ref": method_reference(config.method),
            "method_effective": json.loads(json.dumps(method.effective_config())),
        },
    )
    start = found.server_round if found else 0
    history: list[dict[str, Any]] = list(found.metrics) if found else []
    print(  # noqa: T201 - the progress display is the console
        f"[fedvpa] method={config.method} clients={config.num_clients} "
        f"per-round={settings.clients_per_round} rounds={settings.num_server_rounds} "
        f"seed={settings.seed} run-dir={config.run_dir}",
        flush=True,
    )
    transport = FlowerTransport(grid, config)
    clients = transport.discover()
    protocol = RoundProtocol(method, settings, clients, found.state if found else None, start)
    t0 = time.monotonic()
    for server_round in range(start + 1, settings.num_server_rounds + 1):
        if not protocol.allows(server_round):
            print(f"[fedvpa] stopped: {protocol.stopped}", flush=True)  # noqa: T201
            break
        t_round = time.monotonic()
        row = protocol.run_round(server_round, transport)
        history.append(row)
        folder.record(server_round, protocol.state, history)
        progress(row, settings.num_server_rounds, time.monotonic() - t_round)
    final = protocol.final_metrics(history, time.monotonic() - t0, start)
    folder.finish(final)
    return final


def progress(row: dict[str, Any], num_rounds: int, seconds: float) -> None:
    """One console line per round."""
    parts = [
        f"[fedvpa] round {row['round']}/{num_rounds}",
        f"replies {row['replies']}/{row['replies'] + row['failures']}",
        f"up {row['bytes_up'] / 1024:.1f} KiB down {row['bytes_down'] / 1024:.1f} KiB",
    ]
    if "dp" in row:
        parts.append(f"epsilon {row['dp']['epsilon']:.2f}")
    loss = row["train"].get("loss")
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    for split in ("seen", "unseen"):
        acc = row.get("eval", {}).get(f"eval/{split}/macro")
        if acc is not None:
            parts.append(f"{split} acc {acc:.3f}")
    parts.append(f"{seconds:.1f}s")
    print(" | ".join(parts), flush=True)  # noqa: T201 - the progress display
