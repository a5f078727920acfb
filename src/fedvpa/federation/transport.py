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

import time
from collections.abc import Sequence
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedvpa.federation.messages import (
    ARRAYS_KEY,
    CLIENT_ID,
    CONFIG_KEY,
    GLOBAL_DIGEST,
    GLOBAL_KEY,
    META_KEY,
    METRICS_KEY,
    NUM_EXAMPLES,
    PAYLOAD_KEY,
    STATE_SOURCE,
    STATS_KEY,
    WEIGHTS_REUSED,
    arrays_digest,
    arrays_to_record,
    encode_kwargs,
    metrics_to_dict,
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
    """Messages to the nodes of a ``Grid``, one node per client."""

    def __init__(self, grid: Grid, config: FederationConfig) -> None:
        self.grid = grid
        self.config = config
        self.method_ref = method_reference(config.method)
        self.kwargs_json = encode_kwargs(config.method_kwargs)
        self.nodes: dict[int, int] = {}  # client id -> node id
        self.digest: dict[int, str] = {}  # round -> digest of the weights its locate sent

    def base_config(self, server_round: int) -> dict[str, Any]:
        """What every message tells a client: the round and how to build the method and data."""
        return {
            "server-round": server_round,
            "method-ref": self.method_ref,
            "method-kwargs": self.kwargs_json,
            "data-path": self.config.data_path,
            "client-state-dir": self.config.state_dir,
        }

    # ------------------------------------------------------------------ discovery

    def discover(self) -> dict[int, ClientRecord]:
        """Wait for every node, then ask each which client it is.

        Sampling before all nodes registered would silently train on fewer clients in round 1.
        """
        expected = self.config.num_clients
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
            record = ClientRecord(
                client_id=int(meta["client-id"]),
                user_type=str(meta["user-type"]),
                type_index=int(meta["type-index"]),
                unseen=bool(meta["unseen"]),
                num_examples=int(meta[NUM_EXAMPLES]),
            )
            if record.client_id in clients:
                raise FederationError(f"two nodes claim client id {record.client_id}")
            clients[record.client_id] = record
            self.nodes[record.client_id] = msg.metadata.src_node_id
        return clients

    # ------------------------------------------------------------------ the protocol's calls

    def locate(
        self, server_round: int, client_ids: Sequence[int], arrays: Arrays
    ) -> Replies[Arrays]:
        """Ask the sampled clients where the current shared model puts them; each keeps the
        weights, so its train message of this round carries only their digest."""
        digest = arrays_digest(arrays)
        self.digest[server_round] = digest
        cfg = ConfigRecord({**self.base_config(server_round), GLOBAL_DIGEST: digest})
        record = arrays_to_record(arrays)
        messages = [
            self._message(cid, {GLOBAL_KEY: record, CONFIG_KEY: cfg}, MessageType.QUERY, "locate")
            for cid in client_ids
        ]
        return self._send(messages, server_round, lambda msg: record_to_arrays(msg[STATS_KEY]))

    def train(
        self, server_round: int, arrays: Arrays, jobs: Sequence[TrainJob]
    ) -> Replies[ClientUpdate]:
        record = arrays_to_record(arrays)
        messages = []
        for job in jobs:
            cfg = ConfigRecord({**self.base_config(server_round), "seed": job.seed})
            content: dict[str, Any] = {PAYLOAD_KEY: arrays_to_record(job.payload), CONFIG_KEY: cfg}
            if job.holds_weights:
                cfg[GLOBAL_DIGEST] = self.digest[server_round]
            else:
                content[GLOBAL_KEY] = record
            messages.append(self._message(job.client_id, content, MessageType.TRAIN))
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

        replies = self._send(messages, server_round, unpack)
        replies.info = {"state_sources": dict(sorted(sources.items())), "weights_reused": reused}
        return replies

    def evaluate(
        self, server_round: int, arrays: Arrays, client_seeds: dict[int, int]
    ) -> Replies[EvalReply]:
        record = arrays_to_record(arrays)
        messages = [
            self._message(
                cid,
                {
                    GLOBAL_KEY: record,
                    CONFIG_KEY: ConfigRecord({**self.base_config(server_round), "seed": seed}),
                },
                MessageType.EVALUATE,
            )
            for cid, seed in client_seeds.items()
        ]

        def unpack(content: RecordDict) -> EvalReply:
            counts = metrics_to_dict(content.get(METRICS_KEY))
            counts.pop(CLIENT_ID, None)
            counts.pop(STATE_SOURCE, None)
            latent = record_to_arrays(content[STATS_KEY]) if STATS_KEY in content else {}
            return EvalReply(counts, latent)

        return self._send(messages, server_round, unpack)

    # ------------------------------------------------------------------ messaging

    def _message(
        self, client_id: int, content: dict[str, Any], kind: str, phase: str = ""
    ) -> Message:
        return Message(
            RecordDict(content),
            dst_node_id=self.nodes[client_id],
            message_type=kind,
            group_id=f"{content[CONFIG_KEY]['server-round']}{'-' + phase if phase else ''}",
        )

    def _send(self, messages: list[Message], server_round: int, unpack: Any) -> Replies[Any]:
        """Send, wait up to ``client-timeout``; replies in client-id order, errors counted."""
        by_node = {node: cid for cid, node in self.nodes.items()}
        down = {by_node[m.metadata.dst_node_id]: record_dict_bytes(m.content) for m in messages}
        timeout = self.config.settings.client_timeout
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        replies.sort(key=lambda m: by_node.get(m.metadata.src_node_id, -1))
        ok: dict[int, Any] = {}
        reasons: list[str] = []
        up: dict[int, int] = {}
        for msg in replies:
            cid = by_node.get(msg.metadata.src_node_id)
            if cid is None:
                continue
            if msg.has_error():
                reasons.append(f"client {cid}: {msg.error.reason}")
                continue
            ok[cid] = unpack(msg.content)
            up[cid] = record_dict_bytes(msg.content)
        missing = len(messages) - len(ok) - len(reasons)
        return Replies(ok, len(reasons), missing, reasons, down, up)


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
