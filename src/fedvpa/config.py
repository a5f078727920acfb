"""Typed configuration for data preparation, with the flat ``key-name = value`` form Flower uses.

Flower's run config (``[tool.flwr.app.config]``, ``conf/*.toml``, ``--run-config``) is a flat table
of hyphenated keys. The same keys configure ``fedvpa run`` and ``fedvpa compare``, so one TOML file
describes an experiment whichever way it is launched. Each dataclass here owns a group of keys and
validates them, so a typo or an out-of-range value fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar, get_args, get_type_hints

from fedvpa.data.partition import PARTITIONS
from fedvpa.errors import ConfigError

T = TypeVar("T")


def _key(name: str) -> str:
    return name.replace("_", "-")


def from_flat(cls: type[T], flat: Mapping[str, Any], *, source: str = "config") -> T:
    """Build dataclass ``cls`` from the flat hyphenated keys it owns; other keys are ignored.

    Types are checked and gently coerced (an int where a float is expected) so that a wrong type
    is reported with its key rather than surfacing later as a torch error.
    """
    present = {f.name: flat[_key(f.name)] for f in fields(cls) if _key(f.name) in flat}  # type: ignore[arg-type]
    kwargs = coerce_fields(cls, present, source)
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc), path=source) from exc
    return obj


def to_flat(obj: Any) -> dict[str, Any]:
    """The flat hyphenated form of a config dataclass (what ``config.json`` records)."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, Path):
            value = str(value)
        out[_key(f.name)] = value
    return out


def coerce_fields(cls: type, values: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """``values`` (by field name) checked and gently coerced to the field types of ``cls``.

    Shared by every config dataclass that is built from a dict (model and local settings), so
    ``--set lr=abc`` is one line naming the key rather than a comparison error deep inside.
    """
    hints = get_type_hints(cls)
    return {
        name: _coerce(value, hints[name], _key(name), source) if name in hints else value
        for name, value in values.items()
    }


# TOML and Flower's run config hold 64-bit integers; a larger one only overflows later, in
# float() or in a list size, as a traceback far from the key.
INT_LIMIT = 2**63


def _number(value: Any, key: str, source: str) -> int | float:
    """A number later arithmetic can use: NaN, infinities and >64-bit integers pass every
    range check written as ``x < 0`` and then fail (or train on NaN) deep inside a run."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"expected a number, got {value!r:.40}", path=source, field=key)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"expected a finite number, got {value!r}", path=source, field=key)
    if isinstance(value, int) and not -INT_LIMIT <= value < INT_LIMIT:
        raise ConfigError("expected a number of at most 64 bits", path=source, field=key)
    return value


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    text = str(hint)
    if (value is None or value == "") and "None" in text:
        return None  # Flower's run config has no null: "" stands for "not set"
    inner = [a for a in get_args(hint) if a is not type(None)]
    if "None" in text and len(inner) == 1:
        hint, text = inner[0], str(inner[0])  # a set ``X | None`` key is checked as an X
    if "tuple" in text and isinstance(value, list | tuple):
        return tuple(_number(v, key, source) for v in value)
    if "tuple" in text and value == "":
        return ()
    if "tuple" in text and isinstance(value, int | float) and not isinstance(value, bool):
        return (_number(value, key, source),)
    if "tuple" in text and isinstance(value, str):
        try:
            parsed = tuple(float(v) if "." in v else int(v) for v in value.split(","))
        except ValueError:
            raise ConfigError(
                f"expected numbers like 0.5,0.25,0.25, got {value!r}", path=source, field=key
            ) from None
        return tuple(_number(v, key, source) for v in parsed)
    if "tuple" in text:  # true/false: len(True) would fail later as a TypeError with no key
        raise ConfigError(f"expected numbers, got {value!r}", path=source, field=key)
    if hint is bool or text == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false"}:
            return value.lower() == "true"
        raise ConfigError(f"expected true/false, got {value!r}", path=source, field=key)
    if hint is float or text == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(_number(value, key, source))
        raise ConfigError(f"expected a number, got {value!r}", path=source, field=key)
    if hint is int or text == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return _number(value, key, source)
        if isinstance(value, float) and value.is_integer():
            return _number(int(value), key, source)
        raise ConfigError(f"expected an integer, got {value!r}", path=source, field=key)
    if hint is str or text == "str":
        if isinstance(value, str):
            return value
        raise ConfigError(f"expected a string, got {value!r}", path=source, field=key)
    return value


def field_comments(cls: type) -> dict[str, str]:
    """The comment written next to (or just above) each field of dataclass ``cls``: the
    declaration is the one place a key's meaning is written, so ``fedvpa keys`` reads it there."""
    import inspect

    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    names = {f.name for f in fields(cls)}
    out: dict[str, str] = {}
    above: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").strip())
            continue
        name = stripped.split(":", 1)[0].strip()
        if name in names and ":" in stripped:
            inline = stripped.split("#", 1)[1].strip() if "#" in stripped else ""
            out[name] = " ".join([*above, inline]).strip()
        above = []
    return out


def flower_value(value: Any) -> bool | int | float | str:
    """``value`` as Flower's run config can hold it (scalars only): a tuple becomes
    ``"0.5,0.25,0.25"`` and ``None`` becomes ``""``; :func:`coerce_fields` reads both back."""
    if value is None:
        return ""
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    return value


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a flat experiment TOML (``conf/*.toml``) or a pyproject's ``[tool.flwr.app.config]``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("config file not found", path=str(p))
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:  # ValueError: also a >4300-digit integer
        raise ConfigError(f"not valid TOML ({exc})", path=str(p)) from exc
    if "tool" in data:
        for name in ("tool", "flwr", "app", "config"):
            data = data.get(name, {})
            if not isinstance(data, dict):
                raise ConfigError(
                    f"expected a table, got {type(data).__name__}", path=str(p), field=name
                )
    nested = [k for k, v in data.items() if isinstance(v, dict)]
    if nested:
        raise ConfigError(f"expected flat keys, found table(s) {nested}", path=str(p))
    return data


@dataclass(frozen=True)
class DataConfig:
    """Which preference data, and how it is split over clients."""

    data: str = "synthetic-2"  # synthetic-2 | synthetic-4 | plural-2/3/4/6 | a .jsonl(.gz) path
    data_format: str = "auto"  # auto | generic | hh-rlhf | relabeled-hh
    skip_invalid: bool = False  # skip and count invalid rows instead of stopping at the first
    synthetic_pairs_per_type: int = 0  # 0: enough for the partition (at least 1200)
    conflict_share: float = 0.5  # synthetic-2/4: share of pairs the user types disagree on
    num_clients: int = 100  # clients of the partition (seen and unseen)
    pairs_per_client: int = 16  # labelled pairs per client (the least, with max-pairs-per-client)
    max_pairs_per_client: int = 0  # > pairs_per_client: sizes drawn per client in [min, max]
    type_ratio: tuple[float, ...] = ()  # empty: equal shares over user types
    split: tuple[float, ...] = (0.5, 0.25, 0.25)  # context / train / test
    fraction_unseen: float = 0.2  # share of clients held out of training (evaluated only)
    # How pairs become clients. "types": num-clients clients dealt from per-type pools
    # (pairs-per-client, type-ratio). "users": one client per user of the data, holding exactly
    # that user's pairs (those four keys do not apply; users with fewer than 3 pairs are left
    # out). "auto": users where every pair names its user, each user has one user type and two
    # or more users have 3 pairs, types otherwise (README, "Partition").
    partition: str = "auto"

    def __post_init__(self) -> None:
        if self.partition not in PARTITIONS:
            raise ConfigError(
                f"must be one of {', '.join(PARTITIONS)}, got {self.partition!r}",
                field="partition",
            )
        if self.num_clients < 2:
            raise ConfigError("need at least 2 clients", field="num-clients")
        if self.pairs_per_client < 3:
            raise ConfigError(
                "each client needs >= 3 pairs (context, train and test)", field="pairs-per-client"
            )
        if self.max_pairs_per_client and self.max_pairs_per_client < self.pairs_per_client:
            raise ConfigError("must be 0 or >= pairs-per-client", field="max-pairs-per-client")
        if not 0.0 <= self.fraction_unseen < 1.0:
            raise ConfigError("must be in [0, 1)", field="fraction-unseen")
        if not 0.0 <= self.conflict_share <= 1.0:
            raise ConfigError("must be in [0, 1]", field="conflict-share")
        if len(self.split) != 3 or any(s <= 0 for s in self.split):
            raise ConfigError("needs three positive fractions", field="split")
        if self.type_ratio and any(r <= 0 for r in self.type_ratio):
            raise ConfigError("ratios must be positive", field="type-ratio")

    @property
    def pairs_range(self) -> int | tuple[int, int]:
        if self.max_pairs_per_client > self.pairs_per_client:
            return (self.pairs_per_client, self.max_pairs_per_client)
        return self.pairs_per_client


@dataclass(frozen=True)
class EmbeddingConfig:
    """Which frozen backbone, and where its cache lives (never inside the read-only data)."""

    backbone: str = "minilm"  # minilm | st:<name-or-path> | causal-lm:<path>
    cache_dir: str = ""  # empty: $FEDVPA_CACHE, else $XDG_CACHE_HOME/fedvpa or ~/.cache/fedvpa
    embed_batch_size: int = 64  # texts per backbone call

    def resolved_cache_dir(self) -> Path:
        """``cache-dir``, else the folder holding the default embedding cache."""
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        from fedvpa.embeddings.cache import default_cache_root

        return default_cache_root().parent


@dataclass(frozen=True)
class FederationSettings:
    """How the federation runs: which method, rounds, sampling, evaluation, failure tolerance,
    and where its files go. The same keys drive ``fedvpa run``, ``fedvpa compare`` and
    ``flwr run`` (the ServerApp reads them from the run config)."""

    method: str = "fedvpa-gp"  # the method to train (or module:factory)
    baseline: str = "fedavg-bt"  # fedvpa run: run next to the method ("" = none)
    seed: int = 0  # the command line's --seed sets it
    num_server_rounds: int = 50  # federated rounds
    clients_per_round: int = 10  # seen clients sampled per round (at most the seen clients)
    eval_every: int = 2  # the last 10 evaluations then span rounds 32-50 (stability)
    min_reply_fraction: float = 0.5  # a round fails below this share of replies
    client_timeout: float = 600.0  # seconds a round waits for replies
    node_wait_timeout: float = 120.0  # seconds the server waits for every node at start-up
    # Clients each node (SuperNode) holds: node p holds clients p*k .. p*k+k-1 of the data file,
    # and gets one message per phase for all of them (fewer nodes, processes and messages).
    # 0 = auto: about max(10, CPU cores) virtual nodes in a simulation, 1 on `flwr run` (a
    # deployment of personal devices). Results do not depend on it, only the speed.
    clients_per_node: int = 0
    # The run folder. "" = fedvpa run: runs/<method>-seed<seed>[-N];
    # flwr run: runs/flwr-<method>-seed<seed>.
    run_dir: str = ""
    resume: bool = False  # flwr run: continue the checkpoint in run-dir (fedvpa run: --resume)
    # Prepared client tensors (what SuperNodes load). "" = prepare them from the data keys.
    data_path: str = ""
    client_state_dir: str = ""  # "" -> <run-dir>/client_state, "none" -> Context.state only
    # Client-level differential privacy (docs/privacy.md). Off unless a noise multiplier or a
    # target epsilon is set. Noise std: z * C / m on the mean of m clipped updates.
    dp_noise_multiplier: float = 0.0  # z; 0 = no DP (unless dp-epsilon is set)
    dp_epsilon: float = 0.0  # > 0: choose z so that all rounds spend at most this epsilon
    dp_clip_norm: float = 0.1  # C: L2 bound on a client's weight update (README: Privacy)
    dp_stats_clip_norm: float = 3.0  # L2 bound on one release of posterior stats / losses
    dp_delta: float = 1e-5  # the delta of the (epsilon, delta) guarantee
    dp_max_epsilon: float = 0.0  # > 0: stop cleanly before a round would spend more
    dp_noise_source: str = "seed"  # "seed": reproducible from the run seed; "os": OS entropy
    # fedvpa run only: aggregate the shared weights with Flower's SecAgg+ (the server unmasks
    # only the round's weighted sum; weights-only methods: fedavg-bt; with DP the clients clip
    # before masking; no checkpoint)
    secure_aggregation: bool = False

    @property
    def dp_enabled(self) -> bool:
        return self.dp_noise_multiplier > 0 or self.dp_epsilon > 0

    def __post_init__(self) -> None:
        if not self.method:
            raise ConfigError("must name a method", field="method")
        for name in ("dp_noise_multiplier", "dp_epsilon", "dp_max_epsilon"):
            if not getattr(self, name) >= 0 or not math.isfinite(getattr(self, name)):
                raise ConfigError("must be a finite number >= 0", field=_key(name))
        for name in ("dp_clip_norm", "dp_stats_clip_norm"):
            if not getattr(self, name) > 0 or not math.isfinite(getattr(self, name)):
                raise ConfigError("must be a finite number > 0", field=_key(name))
        if not 0.0 < self.dp_delta < 1.0:
            raise ConfigError("must be in (0, 1)", field="dp-delta")
        if self.dp_noise_source not in ("seed", "os"):
            raise ConfigError("must be 'seed' or 'os'", field="dp-noise-source")
        if self.dp_noise_multiplier > 0 and self.dp_epsilon > 0:
            raise ConfigError("set dp-noise-multiplier or dp-epsilon, not both", field="dp-epsilon")
        if self.clients_per_node < 0:
            raise ConfigError("must be >= 1, or 0 for auto", field="clients-per-node")
        if self.secure_aggregation and self.clients_per_node > 1:
            raise ConfigError(
                "SecAgg+ runs one client per node: leave clients-per-node at 1",
                field="clients-per-node",
            )
        for name in ("num_server_rounds", "clients_per_round", "eval_every"):
            if getattr(self, name) < 1:
                raise ConfigError("must be >= 1", field=_key(name))
        if not 0.0 < self.min_reply_fraction <= 1.0:
            raise ConfigError("must be in (0, 1]", field="min-reply-fraction")
        for name in ("client_timeout", "node_wait_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError("must be > 0", field=_key(name))


def replace(obj: T, **changes: Any) -> T:
    """``dataclasses.replace`` that turns validation errors into ``ConfigError``."""
    return dataclasses.replace(obj, **changes)  # type: ignore[type-var]
