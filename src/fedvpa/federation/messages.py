"""Method objects <-> Flower records, and the byte accounting of what crosses the wire.

A ``FederatedMethod`` speaks ``dict[str, numpy.ndarray]`` and ``dict[str, float]``; Flower speaks
``ArrayRecord`` / ``ConfigRecord`` / ``MetricRecord`` inside a ``RecordDict``. Keeping the
conversion in one place means the transport and the ClientApp agree on the message layout by
construction, and the bytes we report are the bytes Flower actually serialises.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedvpa.methods.base import Arrays

# Keys of the records inside a message's RecordDict. Server -> client:
GLOBAL_KEY = "global"  # ArrayRecord: the global shared weights
PAYLOAD_KEY = "payload"  # ArrayRecord: this client's extras (prior components, prototype label)
CONFIG_KEY = "config"  # ConfigRecord: round, seed, method reference, data path, ...
# Client -> server:
ARRAYS_KEY = "arrays"  # ArrayRecord: updated shared weights
STATS_KEY = "stats"  # ArrayRecord: posterior moments and other small statistics
METRICS_KEY = "metrics"  # MetricRecord: num-examples, losses, evaluation counts
META_KEY = "meta"  # ConfigRecord: client id, user type, seen/unseen (metadata query only)

NUM_EXAMPLES = "num-examples"
# A reply's transport metrics, which the server folds into the run log rather than the method's
# metrics: who replied, where the client's private state came from (0 fresh, 1 Context.state,
# 2 file) and whether it trained on the weights kept from this round's locate message.
CLIENT_ID = "client-id"
STATE_SOURCE = "state-source"
WEIGHTS_REUSED = "weights-reused"
# A node may hold several clients (the `clients-per-node` key): the server then sends each node one
# message per phase for all of its clients. Its config lists them (CLIENTS_KEY, with SEEDS_KEY in
# the same order), each client's own records carry its id as a suffix (``per_client``), the
# shared ones (global weights, config) travel once, and a client that failed inside the batch is
# named in an ERRORS_KEY ConfigRecord (client id -> reason) instead of failing the others.
CLIENTS_KEY = "clients"
SEEDS_KEY = "seeds"
ERRORS_KEY = "errors"
CLIENTS_PER_NODE = "clients-per-node"


def per_client(key: str, client_id: int) -> str:
    """The key of one client's record inside a batched message."""
    return f"{key}.{int(client_id)}"


# ConfigRecord key: digest of the global weights a locate message carried. A train message of the
# same round that sends this instead of GLOBAL_KEY tells the client to use the weights it kept.
GLOBAL_DIGEST = "global-digest"


def arrays_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """Content hash of a weights dict (names, dtypes, shapes and bytes), order-independent."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        value = np.ascontiguousarray(np.asarray(arrays[key]))
        h.update(f"{key}|{value.dtype.str}|{value.shape}|".encode())
        h.update(value.tobytes())
    return h.hexdigest()[:32]


def arrays_to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Keep the method's names (not Flower's positional "0", "1", ...) so order never matters."""
    record = ArrayRecord()
    for key, value in arrays.items():
        record[str(key)] = Array(np.ascontiguousarray(np.asarray(value)))
    return record


def record_to_arrays(record: ArrayRecord | None) -> Arrays:
    if record is None:
        return {}
    return {key: np.array(value.numpy(), copy=True) for key, value in record.items()}


def scalars_to_metrics(values: Mapping[str, Any]) -> MetricRecord:
    """Only numeric scalars go into a MetricRecord; anything else is a bug upstream."""
    record = MetricRecord()
    for key, value in values.items():
        if isinstance(value, (bool, int, np.integer)):
            record[key] = int(value)
        elif isinstance(value, (float, np.floating)):
            record[key] = float(value)
        else:
            raise TypeError(f"metric '{key}' must be a number, got {type(value).__name__}")
    return record


def metrics_to_dict(record: MetricRecord | None) -> dict[str, float]:
    if record is None:
        return {}
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, list):
            continue
        out[key] = float(value)
    return out


def encode_kwargs(kwargs: Mapping[str, Any]) -> str:
    """Method keyword arguments travel as one JSON string: ConfigRecords hold scalars only."""
    return json.dumps(dict(kwargs), sort_keys=True)


def decode_kwargs(text: str) -> dict[str, Any]:
    if not text:
        return {}
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"method-kwargs must be a JSON object, got {type(value).__name__}")
    return value


def record_dict_bytes(content: RecordDict) -> int:
    """Serialised payload size as Flower counts it: array bytes (npy) + keys + 8 B per scalar."""
    total = 0
    for record in content.values():
        if isinstance(record, (ArrayRecord, ConfigRecord, MetricRecord)):
            total += record.count_bytes()
    return total
