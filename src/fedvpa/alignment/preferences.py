"""Which ``z`` stage 2 conditions on, read from a finished stage-1 run folder.

Stage 1 leaves, per method folder, ``config.json`` (the method's effective model config),
``final.json`` (each client's encoder posterior mean ``mu``, under population or prior
inference the ``z`` its evaluation read, its user type, and the prototypes) and the shared
arrays. A ``z`` comes from one of:

- a **group**: a user type of stage 1 (``helpful``) or a prototype group (``proto-0``: the seen
  clients whose encoder mean lies nearest that prototype); its ``z`` is the mean, over the
  group's *seen* clients (the ones the federation trained on), of the ``z`` stage 1's last
  evaluation read: the placement among the population's points (or the prior's draws) under
  ``latent-inference``'s population or prior, else the encoder's posterior mean ``mu``;
- a **mix** of groups (``helpful=0.3,harmless=0.7``): a convex combination of their ``z``;
- a **file** with ``d`` floats (``.npy`` or a JSON list);
- a user's **context**: labelled pairs, embedded by the stage-1 backbone and read the way
  stage 1 read an unseen client's context pairs at evaluation: under ``latent-inference``'s
  population or prior (``population_latent`` over the clients' posterior means the run's server
  kept, or over the prior's fixed draws), else by the stage-1 encoder (``infer_posterior``).

Everything here raises a one-line ``ConfigError`` on bad input (the CLI's exit code 2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedvpa.errors import ConfigError
from fedvpa.model.config import ModelConfig
from fedvpa.model.vpl import VariationalPreferenceModel

if TYPE_CHECKING:
    from fedvpa.methods.variational import VariationalMethod

EXPERIMENT_CONFIG = "config.json"
COMPARE_RESULTS = "results.json"  # fedvpa compare's (compare.RESULTS_FILE)
FINAL_FILE = "final.json"
PROTOTYPE_PREFIX = "proto-"


@dataclass
class Stage1Run:
    """A finished stage-1 run of a latent method: what stage 2 reads from it."""

    root: Path  # experiment folder (config.json with the flat keys); a comparison's run: itself
    method_dir: Path  # the latent method's run folder
    method: str
    flat: dict[str, Any]  # the experiment's flat configuration
    model_cfg: ModelConfig
    final: dict[str, Any]
    method_effective: dict[str, Any] = field(default_factory=dict)  # {"model": .., "local": ..}
    _selector: VariationalPreferenceModel | None = field(default=None, repr=False)
    _arrays: dict[str, np.ndarray] | None = field(default=None, repr=False)

    @property
    def latent_dim(self) -> int:
        return self.model_cfg.latent_dim

    @property
    def backbone(self) -> str:
        return str(self.flat.get("backbone", "minilm"))

    def selector(self) -> VariationalPreferenceModel:
        """The frozen stage-1 model (built once)."""
        if self._selector is None:
            self._selector = build_selector(self)
        return self._selector

    def evaluation_arrays(self) -> dict[str, np.ndarray]:
        """What stage 1 evaluated with at its last round (read once): the method's evaluated
        weights (the global ones, their average or the validation pick) and, under population
        inference, the population of posterior means (``population_mu`` / ``population_n``)."""
        if self._arrays is None:
            self._arrays = stage1_evaluation_arrays(self)
        return self._arrays

    def population(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The points and weights a user's ``z`` is read against (the population of posterior
        means, or the prior's draws under ``latent-inference = "prior"``), or None where stage
        1 read ``z`` with the encoder (the Laplace encoder, or no posterior had reached the
        server)."""
        return stage1_method(self).inference_points(self.evaluation_arrays())


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"unreadable {what} ({type(exc).__name__})", path=str(path)) from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{what} is not a JSON object", path=str(path))
    return value


def is_compare_run(method_dir: Path) -> bool:
    """A federated run of ``fedvpa compare`` (``OUT/runs/<method>-seed<s>``): its experiment keys
    are in the comparison's ``results.json`` two folders up, not in a ``fedvpa run`` folder."""
    return (
        not (method_dir.parent / EXPERIMENT_CONFIG).is_file()
        and (method_dir.parent.parent / COMPARE_RESULTS).is_file()
    )


def compare_run_keys(method_dir: Path) -> tuple[dict[str, Any], str]:
    """The flat keys and method of one run of a comparison: the comparison's keys with the
    run's own method and seed (which its run folder's ``config.json`` records)."""
    from fedvpa.experiment import key_groups

    record = _read_json(method_dir / EXPERIMENT_CONFIG, "run config")
    results = _read_json(method_dir.parent.parent / COMPARE_RESULTS, "comparison results")
    config = results.get("config")
    method, seed = record.get("method"), record.get("seed")
    if not isinstance(config, dict) or not isinstance(method, str) or not isinstance(seed, int):
        raise ConfigError(
            "comparison run without its method and seed, or results without 'config'",
            path=str(method_dir),
        )
    known = set().union(*key_groups().values())
    flat = {k: v for k, v in config.items() if k in known}
    return {**flat, "method": method, "seed": seed}, method


def open_stage1_run(run_dir: str | Path) -> Stage1Run:
    """The experiment folder ``fedvpa run`` wrote (or one of its method folders), or one run
    folder of ``fedvpa compare``, checked to be a finished run of a latent method."""
    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise ConfigError("no such stage-1 run folder", path=str(path))
    if (path / FINAL_FILE).exists() or (path / "metrics.jsonl").exists():
        root, method_dir = path.parent, path
    else:
        root, method_dir = path, None
    if method_dir is not None and is_compare_run(method_dir):
        root, flat, method = method_dir, *compare_run_keys(method_dir)
    else:
        if not (root / EXPERIMENT_CONFIG).is_file():
            raise ConfigError(
                "not a stage-1 run folder (no config.json of `fedvpa run` or results.json of "
                "`fedvpa compare` above it)",
                path=str(path),
            )
        recorded = _read_json(root / EXPERIMENT_CONFIG, "experiment config")
        flat = recorded.get("config")
        if not isinstance(flat, dict):
            raise ConfigError("experiment config without its 'config' keys", path=str(root))
        method = str(flat.get("method", "")) if method_dir is None else method_dir.name
    method_dir = method_dir or root / method
    rounds = flat.get("num-server-rounds")
    final_path = method_dir / FINAL_FILE
    if not final_path.is_file():
        raise ConfigError(
            f"stage-1 run of {method} is not finished (no {FINAL_FILE}): finish it with "
            f"`fedvpa run --resume {root}`",
            path=str(method_dir),
        )
    final = _read_json(final_path, "final.json")
    if final.get("final_round") != rounds:
        raise ConfigError(
            f"stage-1 run of {method} stopped at round {final.get('final_round')} of {rounds}",
            path=str(final_path),
        )
    latent = final.get("latent")
    if not isinstance(latent, dict) or not latent.get("mu"):
        raise ConfigError(
            f"method {method} has no latent z (stage 2 needs fedvpa-gp, fedvpl or an ablation)",
            path=str(final_path),
        )
    method_config = _read_json(method_dir / EXPERIMENT_CONFIG, "method config")
    try:
        effective = dict(method_config["method_effective"])
        model_cfg = ModelConfig.from_dict(dict(effective["model"]))
    except (KeyError, TypeError) as exc:
        raise ConfigError(
            "method config without method_effective.model", path=str(method_dir)
        ) from exc
    return Stage1Run(root, method_dir, method, flat, model_cfg, final, effective)


def stage1_data_config(run: Stage1Run) -> Any:
    """The stage-1 run's data keys (``DataConfig``), ignoring keys of older folders."""
    from fedvpa.experiment import ExperimentConfig, key_groups

    known = set().union(*key_groups().values())
    flat = {k: v for k, v in run.flat.items() if k in known}  # keys of older folders
    return ExperimentConfig.from_flat(flat, source=str(run.root / "config.json")).data


def stage1_pairs(run: Stage1Run) -> list[Any]:
    """The stage-1 data set exactly as the run read it (all clients, all splits)."""
    from fedvpa.experiment import load_pairs

    pairs, _ = load_pairs(stage1_data_config(run), stage1_seed(run))
    return pairs


def stage1_seed(run: Stage1Run) -> int:
    """The seed stage 1 ran with: a flat key in newer folders, top-level in older ones."""
    seed = run.flat.get("seed")
    if seed is None:
        recorded = json.loads((run.root / "config.json").read_text())
        seed = recorded.get("seed")
    return int(seed or 0)


def stage1_evaluation_arrays(run: Stage1Run) -> dict[str, np.ndarray]:
    """``VariationalMethod.evaluation_arrays`` of the run's last checkpoint, so that stage 2
    labels with the weights (and reads ``z`` against the population) stage 1 reported.

    The only place stage 2 reads the arrays: they live in the run folder's checkpoint (read
    through ``run_folder.load_checkpoint``, the folder's own reader); everything else in stage
    2 reads ``final.json`` / ``config.json``.
    """
    from fedvpa.protocol.run_folder import load_checkpoint

    try:
        checkpoint = load_checkpoint(run.method_dir)
    except ConfigError:  # the run folder's own one-line refusal (damaged, legacy format)
        raise
    except Exception as exc:  # a corrupt or foreign checkpoint
        raise ConfigError(
            f"cannot read the stage-1 weights ({type(exc).__name__}: {exc})",
            path=str(run.method_dir),
        ) from exc
    if checkpoint is None:
        raise ConfigError("stage-1 run has no saved weights", path=str(run.method_dir))
    return dict(stage1_method(run).evaluation_arrays(checkpoint.state))


def stage1_method(run: Stage1Run) -> VariationalMethod:
    """The stage-1 method as the run configured it (its effective model and local settings)."""
    from fedvpa.methods.variational import VariationalMethod

    local = run.method_effective.get("local")
    return VariationalMethod(run.method, run.model_cfg, local if isinstance(local, dict) else None)


def build_selector(run: Stage1Run) -> VariationalPreferenceModel:
    """The stage-1 model with the weights stage 1 evaluated, frozen."""
    from fedvpa.methods.posterior_store import without_population

    model = VariationalPreferenceModel(run.model_cfg)
    model.load_shared_state(without_population(run.evaluation_arrays()))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ---------------------------------------------------------------------- groups


@dataclass(frozen=True)
class Group:
    name: str
    z: np.ndarray  # [d] float32
    clients: int
    kind: str  # "user-type" or "prototype"


def preference_groups(run: Stage1Run) -> dict[str, Group]:
    """The named groups of stage 1 with their ``z``: the mean ``z`` of their seen clients as
    stage 1's last evaluation read it (``evaluated_z``).

    User types when the data names them (the groups a person asks for: ``--prefer harmless``),
    and the prototype groups the server's orthogonal prototypes define (what FedVPA-GP found
    without labels: each seen client joins its nearest prototype; empty groups are left out).
    """
    latent = run.final["latent"]
    mu = np.asarray(latent["mu"], dtype=np.float32)
    z = evaluated_z(latent, mu, run.method_dir / FINAL_FILE)
    seen = ~np.asarray(latent.get("unseen") or [False] * len(mu), dtype=bool)
    types = list(latent.get("user_type") or [None] * len(mu))
    groups: dict[str, Group] = {}
    for name in sorted({t for t, s in zip(types, seen, strict=True) if s and t is not None}):
        rows = np.array([t == name and s for t, s in zip(types, seen, strict=True)])
        groups[str(name)] = Group(str(name), z[rows].mean(axis=0), int(rows.sum()), "user-type")
    protos = latent.get("prototypes")
    if protos and seen.any():
        # membership by the encoder means, where the server's pull placed the prototypes
        centres = np.asarray(protos, dtype=np.float32)
        nearest = ((mu[:, None, :] - centres[None, :, :]) ** 2).sum(-1).argmin(axis=1)
        for k in range(len(centres)):
            rows = seen & (nearest == k)
            if rows.any():
                name = f"{PROTOTYPE_PREFIX}{k}"
                groups[name] = Group(name, z[rows].mean(axis=0), int(rows.sum()), "prototype")
    if not groups:
        raise ConfigError("stage-1 run has no seen clients with a posterior", path=str(run.root))
    return groups


def evaluated_z(latent: dict[str, Any], mu: np.ndarray, path: Path | str = "") -> np.ndarray:
    """Each client's ``z`` as stage 1's last evaluation read it: the population placement
    where the run recorded one (``final.json``'s ``latent.z``, runs of population or prior
    inference),
    else the encoder mean. A ``latent.z`` that is not a finite ``mu``-shaped matrix is refused
    in one line naming ``path``."""
    if latent.get("z") is None:
        return mu
    try:
        z = np.asarray(latent["z"], dtype=np.float32)
    except (TypeError, ValueError):
        z = np.zeros(0, np.float32)  # ragged or not numbers: refused below
    if z.shape != mu.shape or not np.isfinite(z).all():
        raise ConfigError(
            f"expected a finite {mu.shape} matrix, got shape {z.shape}",
            path=str(path),
            field="latent.z",
        )
    return z


def _unknown_group(name: str, groups: dict[str, Group]) -> ConfigError:
    return ConfigError(
        f"unknown group {name!r}; known: {', '.join(groups)}", field="--prefer/--mix"
    )


def parse_mix(spec: str) -> list[tuple[str, float]]:
    """``helpful=0.3,harmless=0.7`` -> weights (normalised to sum 1: a convex mix stays inside
    the region the selector was trained on)."""
    parts: list[tuple[str, float]] = []
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if not sep or not name.strip() or not weight >= 0:
            raise ConfigError(
                f"expected GROUP=WEIGHT with a weight >= 0, got {item!r}", field="--mix"
            )
        parts.append((name.strip(), weight))
    total = sum(w for _, w in parts)
    if not parts or total <= 0:
        raise ConfigError(f"a mix needs a positive total weight, got {spec!r}", field="--mix")
    return [(name, w / total) for name, w in parts]


def mix_z(groups: dict[str, Group], spec: str) -> np.ndarray:
    parts = parse_mix(spec)
    for name, _ in parts:
        if name not in groups:
            raise _unknown_group(name, groups)
    return np.sum([w * groups[name].z for name, w in parts], axis=0).astype(np.float32)


def z_from_file(path: str | Path, latent_dim: int) -> np.ndarray:
    """``d`` floats from ``.npy`` or a JSON list (e.g. a ``mu`` copied from final.json)."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            values = np.load(path, allow_pickle=False)
        else:
            values = np.asarray(json.loads(path.read_text()), dtype=np.float64)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"unreadable z file ({type(exc).__name__})", path=str(path), field="--z"
        ) from exc
    values = np.asarray(values, dtype=np.float32).reshape(-1) if values.ndim <= 1 else values
    if values.ndim != 1 or values.shape[0] != latent_dim:
        raise ConfigError(
            f"z has shape {tuple(values.shape)}, this stage-1 run's z has {latent_dim} floats",
            path=str(path),
            field="--z",
        )
    if not np.isfinite(values).all():
        raise ConfigError("z holds NaN or inf", path=str(path), field="--z")
    return values


# ---------------------------------------------------------------------- embeddings


def _embedder(run: Stage1Run) -> tuple[Any, Any]:
    """The stage-1 backbone and the shared embedding cache: the selector is only meaningful on
    the vectors it was trained on, and texts embedded before are read, not recomputed."""
    from fedvpa.config import EmbeddingConfig
    from fedvpa.embeddings.backbone import make_backbone
    from fedvpa.embeddings.cache import EmbeddingCache

    emb = EmbeddingConfig(backbone=run.backbone, cache_dir=str(run.flat.get("cache-dir", "")))
    return make_backbone(run.backbone), EmbeddingCache(emb.resolved_cache_dir() / "embeddings")


def embed_texts(run: Stage1Run, texts: list[str]) -> torch.Tensor:
    backbone, cache = _embedder(run)
    vectors = cache.embed(texts, backbone, progress=False)
    if vectors.shape[1] != run.model_cfg.input_dim:
        raise ConfigError(
            f"backbone {run.backbone} gives {vectors.shape[1]}-d vectors, the selector "
            f"expects {run.model_cfg.input_dim}",
            field="backbone",
        )
    return torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))


def z_from_context(run: Stage1Run, path: str | Path, data_format: str = "auto") -> np.ndarray:
    """A user's ``z`` from a few labelled pairs, read as stage 1 read an unseen client's context
    pairs: under population (or prior) inference the posterior mean over the population of
    clients' means (or the prior's draws): a dozen pairs pick among where real clients are,
    3-5 points better than the encoder for unseen clients (README "Personalisation beyond two
    user types"); else the encoder's posterior mean."""
    from fedvpa.data.readers import read_pairs
    from fedvpa.embeddings.pipeline import embed_pairs
    from fedvpa.training.local import infer_posterior, population_latent

    path = Path(path)
    if not path.is_file():
        raise ConfigError("no such context file", path=str(path), field="--context")
    pairs = read_pairs(path, data_format)
    if not pairs:
        raise ConfigError("no labelled pairs in the context file", path=str(path))
    backbone, cache = _embedder(run)
    tensors = embed_pairs(pairs, backbone, cache, progress=False)
    population = run.population()
    if population is not None:
        with torch.no_grad():
            mu = population_latent(run.selector(), tensors, *population)
    else:
        mu, _ = infer_posterior(run.selector(), tensors)
    return mu.numpy().astype(np.float32)


# ---------------------------------------------------------------------- the choice


@dataclass(frozen=True)
class ChosenZ:
    z: np.ndarray
    label: str  # how the user asked for it, for the output and reports


def choose_z(
    run: Stage1Run,
    *,
    prefer: str | None = None,
    context: str | Path | None = None,
    mix: str | None = None,
    z_file: str | Path | None = None,
) -> ChosenZ:
    """Exactly one of the four ways to name a preference."""
    given = {
        "--prefer": prefer,
        "--context": context,
        "--mix": mix,
        "--z": z_file,
    }
    chosen = [k for k, v in given.items() if v not in (None, "")]
    if len(chosen) != 1:
        raise ConfigError(
            f"give exactly one of --prefer, --context, --mix, --z (got {len(chosen)})",
            field="z",
        )
    if prefer:
        groups = preference_groups(run)
        if prefer not in groups:
            raise _unknown_group(prefer, groups)
        return ChosenZ(groups[prefer].z, f"group {prefer}")
    if mix:
        return ChosenZ(mix_z(preference_groups(run), mix), f"mix {mix}")
    if z_file:
        return ChosenZ(z_from_file(z_file, run.latent_dim), f"z file {z_file}")
    return ChosenZ(z_from_context(run, str(context)), f"context {context}")
