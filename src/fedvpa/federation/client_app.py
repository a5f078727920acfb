"""The Flower ClientApp: one client's side of any ``FederatedMethod``.

A node holds one client's embedded data (a file of saved ``ClientTensors``, read once per process
thanks to a module-level cache, so a Ray actor serving many virtual clients loads it once), or,
with ``clients-per-node`` k > 1, k clients' data; a message then names the clients it is for and
the node answers for each (``_batch``; layout in messages.py). It answers three messages:

- ``query``: its client id, user type and seen/unseen flag, so the server can map node ids to
  clients (metadata only: no data, no labels of pairs). A query that carries global arrays is a
  *locate* request: ``method.locate`` answers with a few statistics under those weights (for
  FedVPA-GP the ``d`` floats of its posterior mean, what it sends after training anyway).
- ``train``: global arrays + this client's payload -> ``protocol.client.train_step`` -> shared
  weights, statistics and metrics. The private state the method returns stays here
  (``Context.state``, mirrored to a per-client file when a state folder is configured, see
  ``protocol/client.py``).
- ``evaluate``: ``protocol.client.evaluate_step`` (the predictor of the global weights and the
  private state, scored on the client's own test pairs); replies counts only.

Text, embeddings and labels never leave the node.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedvpa.embeddings.pipeline import load_client_tensors
from fedvpa.embeddings.tensors import ClientTensors
from fedvpa.errors import ConfigError, DataFormatError
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
    arrays_to_record,
    decode_kwargs,
    per_client,
    record_to_arrays,
    scalars_to_metrics,
)
from fedvpa.federation.registry import create_method
from fedvpa.methods.base import Arrays, ClientUpdate, FederatedMethod, TrainRequest
from fedvpa.protocol.client import (
    evaluate_step,
    load_client_state,
    save_client_state,
    train_steps,
)

# Context.state keys of this client's private method state and its bookkeeping.
STATE_ARRAYS_KEY = "fedvpa.client-state"
STATE_META_KEY = "fedvpa.client-state-meta"

# The weights of this round's locate message, kept until its train message (which then carries only
# their digest, so a located round downloads the weights once, not twice).
LOCATED_ARRAYS_KEY = "fedvpa.located-arrays"
LOCATED_META_KEY = "fedvpa.located-meta"
# Where the private state came from when a round started (reported as a metric so tests and logs
# can tell Context.state persistence from a file restore).
SOURCE_FRESH = 0
SOURCE_CONTEXT = 1
SOURCE_FILE = 2

_DATA_CACHE: dict[str, list[ClientTensors]] = {}
_METHOD_CACHE: dict[tuple[str, str], FederatedMethod] = {}
_LOCK = threading.Lock()

app = ClientApp()


def cached_clients(path: str) -> list[ClientTensors]:
    with _LOCK:
        if path not in _DATA_CACHE:
            _DATA_CACHE[path] = load_client_tensors(Path(path))
        return _DATA_CACHE[path]


def cached_method(reference: str, kwargs_json: str) -> FederatedMethod:
    key = (reference, kwargs_json)
    with _LOCK:
        if key not in _METHOD_CACHE:
            _METHOD_CACHE[key] = create_method(reference, decode_kwargs(kwargs_json))
        return _METHOD_CACHE[key]


def _config_value(msg_config: ConfigRecord, context: Context, key: str, default: Any) -> Any:
    """Node config wins (a node's own data path / state folder), then the message, then default."""
    if key in context.node_config:
        return context.node_config[key]
    if key in msg_config:
        return msg_config[key]
    return default


def _node_data(context: Context, msg_config: ConfigRecord) -> tuple[str, list[ClientTensors]]:
    """The node's data file (node config first, then the message) and its clients."""
    data_path = str(_config_value(msg_config, context, "data-path", ""))
    if not data_path:
        raise ConfigError("no data-path in node config or run config", field="data-path")
    return data_path, cached_clients(data_path)


def this_client(context: Context, msg_config: ConfigRecord) -> ClientTensors:
    data_path, clients = _node_data(context, msg_config)
    index = int(_config_value(msg_config, context, "client-index", -1))
    if index < 0:
        index = int(context.node_config.get("partition-id", 0))
    if not 0 <= index < len(clients):
        raise DataFormatError(
            f"client index {index} out of range: file holds {len(clients)} clients",
            path=data_path,
            field="partition-id",
        )
    return clients[index]


def node_clients(context: Context, msg_config: ConfigRecord) -> list[ClientTensors]:
    """The clients this node holds: with ``clients-per-node = k``, node ``partition-id = p``
    holds the clients at indices ``p*k .. p*k + k - 1`` of the data file (fewer at the end)."""
    per_node = int(msg_config.get(CLIENTS_PER_NODE, 1))
    if per_node <= 1:
        return [this_client(context, msg_config)]
    data_path, clients = _node_data(context, msg_config)
    first = int(context.node_config.get("partition-id", 0)) * per_node
    if not 0 <= first < len(clients):
        raise DataFormatError(
            f"node {first // per_node} of {per_node} clients each starts at client {first}: "
            f"the file holds {len(clients)} clients",
            path=data_path,
            field="partition-id",
        )
    return clients[first : first + per_node]


def _state_dir(context: Context, msg_config: ConfigRecord) -> Path | None:
    value = str(_config_value(msg_config, context, "client-state-dir", ""))
    return Path(value) if value and value.lower() != "none" else None


def private_state(
    context: Context, msg_config: ConfigRecord, client_id: int, max_round: int
) -> tuple[Arrays, int]:
    """The client's state after its last training in a round ``<= max_round``, and its source."""
    meta = context.state.get(per_client(STATE_META_KEY, client_id))
    if isinstance(meta, ConfigRecord) and int(meta["round"]) <= max_round:
        record = context.state.get(per_client(STATE_ARRAYS_KEY, client_id))
        if isinstance(record, ArrayRecord):
            return record_to_arrays(record), SOURCE_CONTEXT
    state_dir = _state_dir(context, msg_config)
    if state_dir is not None:
        found = load_client_state(state_dir, client_id, max_round)
        if found is not None:
            return found[1], SOURCE_FILE
    return {}, SOURCE_FRESH


def store_private_state(
    context: Context, msg_config: ConfigRecord, client_id: int, server_round: int, state: Arrays
) -> None:
    context.state[per_client(STATE_ARRAYS_KEY, client_id)] = arrays_to_record(state)
    context.state[per_client(STATE_META_KEY, client_id)] = ConfigRecord(
        {"round": server_round, "client-id": client_id}
    )
    state_dir = _state_dir(context, msg_config)
    if state_dir is not None:
        save_client_state(state_dir, client_id, server_round, state)


def _meta(clients: list[ClientTensors], batched: bool) -> ConfigRecord:
    """Who the node's clients are (ids, types, sizes: no data); lists when the node holds a
    batch, scalars for the one client of a plain node."""
    fields = {
        "client-id": [int(c.client_id) for c in clients],
        "user-type": [str(c.user_type) for c in clients],
        "type-index": [int(c.type_index) for c in clients],
        "unseen": [bool(c.unseen) for c in clients],
        NUM_EXAMPLES: [int(c.num_examples) for c in clients],
    }
    if batched:
        return ConfigRecord(fields)  # type: ignore[arg-type]
    return ConfigRecord({k: v[0] for k, v in fields.items()})


def _keep_located(msg: Message, context: Context, config: ConfigRecord) -> None:
    if GLOBAL_DIGEST in config:
        context.state[LOCATED_ARRAYS_KEY] = msg.content[GLOBAL_KEY]
        context.state[LOCATED_META_KEY] = ConfigRecord({GLOBAL_DIGEST: config[GLOBAL_DIGEST]})


def _batch(
    msg: Message,
    context: Context,
    one: Callable[[ClientTensors, int], dict[str, Any]] | None = None,
    many: Callable[[list[tuple[ClientTensors, int]]], list[dict[str, Any] | Exception]]
    | None = None,
) -> Message:
    """Run ``one(client, seed)`` for every client a batched message names (or ``many`` on all of
    them at once); each client's records get its id as a key suffix, and a client that fails is
    reported in ``ERRORS_KEY`` so that the server counts it alone as failed."""
    config = msg.content[CONFIG_KEY]
    ids = [int(c) for c in config[CLIENTS_KEY]]  # type: ignore[union-attr]
    seeds = [int(s) for s in config.get(SEEDS_KEY, [0] * len(ids))]  # type: ignore[union-attr]
    held = {c.client_id: c for c in node_clients(context, config)}
    results: dict[int, dict[str, Any] | Exception] = {}
    known = [(cid, seed) for cid, seed in zip(ids, seeds, strict=True) if cid in held]
    for cid in ids:
        if cid not in held:
            results[cid] = ConfigError(f"client {cid} is not held by this node")
    if many is not None:
        answers = many([(held[cid], seed) for cid, seed in known])
        results.update({cid: a for (cid, _), a in zip(known, answers, strict=True)})
    elif one is not None:
        for cid, seed in known:
            try:
                results[cid] = one(held[cid], seed)
            except Exception as exc:  # noqa: BLE001 - one client's failure must not fail the batch
                results[cid] = exc
    out: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for cid in ids:
        result = results[cid]
        if isinstance(result, Exception):
            errors[str(cid)] = f"{type(result).__name__}: {result}"[:500]
            continue
        for key, record in result.items():
            out[per_client(key, cid)] = record
    if errors:
        out[ERRORS_KEY] = ConfigRecord(errors)  # type: ignore[arg-type]
    return Message(RecordDict(out), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    config = msg.content.get(CONFIG_KEY, ConfigRecord())
    if GLOBAL_KEY not in msg.content:  # the metadata query at start-up
        batched = int(config.get(CLIENTS_PER_NODE, 1)) > 1
        return Message(
            RecordDict({META_KEY: _meta(node_clients(context, config), batched)}), reply_to=msg
        )
    method = cached_method(str(config["method-ref"]), str(config["method-kwargs"]))
    arrays = record_to_arrays(msg.content[GLOBAL_KEY])

    def locate_one(client: ClientTensors, seed: int) -> dict[str, Any]:
        return {STATS_KEY: arrays_to_record(method.locate(arrays, client))}

    if CLIENTS_KEY in config:
        reply = _batch(msg, context, locate_one)
    else:
        reply = Message(RecordDict(locate_one(this_client(context, config), 0)), reply_to=msg)
    _keep_located(msg, context, config)
    return reply


def round_weights(msg: Message, context: Context, client_id: int | None) -> tuple[Arrays, bool]:
    """The global weights of a train message: sent with it, or kept from this round's locate.

    A digest that does not match what the client kept (a restarted node, a lost state) is an
    error the server counts as a failed client, never a silent use of other weights.
    """
    kept_meta = context.state.get(LOCATED_META_KEY)
    kept = context.state.get(LOCATED_ARRAYS_KEY)
    for key in (LOCATED_ARRAYS_KEY, LOCATED_META_KEY):  # used at most once
        if key in context.state:
            del context.state[key]
    if GLOBAL_KEY in msg.content:
        return record_to_arrays(msg.content[GLOBAL_KEY]), False
    wanted = str(msg.content[CONFIG_KEY].get(GLOBAL_DIGEST, ""))
    matches = isinstance(kept_meta, ConfigRecord) and str(kept_meta[GLOBAL_DIGEST]) == wanted
    if not matches or not isinstance(kept, ArrayRecord):
        who = "batch" if client_id is None else f"client {client_id}"
        raise ConfigError(
            f"{who}: train message refers to weights {wanted or '(none)'} that "
            "this node did not keep from a locate message"
        )
    return record_to_arrays(kept), True


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = msg.content[CONFIG_KEY]
    server_round = int(config["server-round"])
    method = cached_method(str(config["method-ref"]), str(config["method-kwargs"]))
    batched = CLIENTS_KEY in config
    single = None if batched else this_client(context, config)
    who = None if single is None else single.client_id
    global_arrays, reused = round_weights(msg, context, who)

    def request(client: ClientTensors, seed: int) -> tuple[TrainRequest, int]:
        if client.unseen:
            raise ConfigError(f"client {client.client_id} is unseen and must never train")
        key = per_client(PAYLOAD_KEY, client.client_id) if batched else PAYLOAD_KEY
        payload = record_to_arrays(msg.content.get(key))
        state, source = private_state(context, config, client.client_id, server_round - 1)
        return TrainRequest(client, payload, state, seed), source

    def reply(
        req: TrainRequest, source: int, update: ClientUpdate, new_state: Arrays
    ) -> dict[str, Any]:
        store_private_state(context, config, req.client.client_id, server_round, new_state)
        metrics = {
            **update.metrics,
            NUM_EXAMPLES: int(update.num_examples),
            CLIENT_ID: int(req.client.client_id),
            STATE_SOURCE: source,
            WEIGHTS_REUSED: int(reused),
        }
        return {
            ARRAYS_KEY: arrays_to_record(update.arrays),
            STATS_KEY: arrays_to_record(update.stats),
            METRICS_KEY: scalars_to_metrics(metrics),
        }

    def train_all(
        clients: list[tuple[ClientTensors, int]],
    ) -> list[dict[str, Any] | Exception]:
        """Every client of the message through ``train_steps`` (together, where the method
        trains clients together); a client that fails fails alone."""
        out: list[dict[str, Any] | Exception] = [ConfigError("not trained")] * len(clients)
        ready: list[tuple[int, TrainRequest, int]] = []
        for i, (client, seed) in enumerate(clients):
            try:
                ready.append((i, *request(client, seed)))
            except Exception as exc:  # noqa: BLE001 - reported for this client alone
                out[i] = exc
        results = train_steps(method, global_arrays, [r for _, r, _ in ready], server_round)
        for (i, req, source), result in zip(ready, results, strict=True):
            if isinstance(result, Exception):
                out[i] = result
                continue
            try:
                out[i] = reply(req, source, *result)
            except Exception as exc:  # noqa: BLE001
                out[i] = exc
        return out

    if single is None:
        return _batch(msg, context, many=train_all)
    result = train_all([(single, int(config["seed"]))])[0]
    if isinstance(result, Exception):
        raise result
    return Message(RecordDict(result), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    config = msg.content[CONFIG_KEY]
    server_round = int(config["server-round"])
    method = cached_method(str(config["method-ref"]), str(config["method-kwargs"]))
    global_arrays = record_to_arrays(msg.content[GLOBAL_KEY])

    def evaluate_one(client: ClientTensors, seed: int) -> dict[str, Any]:
        state, source = private_state(context, config, client.client_id, server_round)
        reply = evaluate_step(method, global_arrays, client, state, seed)
        metrics = {**reply.counts, CLIENT_ID: int(client.client_id), STATE_SOURCE: source}
        content: dict[str, Any] = {METRICS_KEY: scalars_to_metrics(metrics)}
        if reply.latent:
            content[STATS_KEY] = arrays_to_record(reply.latent)
        return content

    if CLIENTS_KEY in config:
        return _batch(msg, context, evaluate_one)
    return Message(
        RecordDict(evaluate_one(this_client(context, config), int(config["seed"]))),
        reply_to=msg,
    )
