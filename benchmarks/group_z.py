"""How well one ``z`` per user type serves that type's clients: stage 2's group ``z``.

Stage 2 labels replies with one ``z`` per group (``fedvpa align``, ``generate`` and ``rank
--prefer``): the mean over the group's seen clients of their ``z`` at stage 1's last
evaluation. This benchmark runs a method in process (the Flower runtime's protocol and seeds)
to the last round and scores every client's test pairs with the selector under its type's
group ``z``, built two ways from the seen clients' placements at that round
(``group_choice.placements``):

- ``encoder``: the mean of the set encoder's posterior means (stage 2 before this version);
- ``population``: the mean of the ``z`` population inference read (``latent-inference``'s
  population; what ``final.json``'s ``latent.z`` records and stage 2 now averages);

next to ``own``, each client scored with its own ``z`` as evaluation reads it. Seen / unseen
macro accuracy and seen conflict-pair accuracy in %, one JSON line per seed.

    .venv/bin/python benchmarks/group_z.py --config conf/synthetic-4.toml --seeds 0 1 2
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from group_choice import StopRun, base_parser, latent_run, placements  # noqa: E402

from fedvpa.config import load_toml  # noqa: E402
from fedvpa.embeddings.tensors import ClientTensors  # noqa: E402
from fedvpa.errors import ConfigError  # noqa: E402
from fedvpa.evaluation.accuracy import evaluate  # noqa: E402
from fedvpa.methods.posterior_store import without_population  # noqa: E402
from fedvpa.model.vpl import VariationalPreferenceModel  # noqa: E402
from fedvpa.protocol.in_process import run_in_process  # noqa: E402
from fedvpa.training.local import VPLPredictor  # noqa: E402


class GroupPredictor(VPLPredictor):
    """Every client reads its user type's group ``z``."""

    def __init__(self, model: VariationalPreferenceModel, zs: dict[int, torch.Tensor]):
        super().__init__(model)
        self.zs = zs

    def _infer(self, client: ClientTensors) -> torch.Tensor:
        return self.zs[client.type_index]


def group_means(points: np.ndarray, types: np.ndarray) -> dict[int, torch.Tensor]:
    """One ``z`` per type: the mean of its seen clients' placements."""
    return {int(t): torch.as_tensor(points[types == t].mean(axis=0)) for t in np.unique(types)}


def scores(report: dict[str, Any]) -> tuple[float, float, float]:
    conflict = report.get("conflict", {}).get("seen", {}).get("macro", math.nan)
    return tuple(
        round(100 * x, 1) for x in (report["seen"]["macro"], report["unseen"]["macro"], conflict)
    )  # type: ignore[return-value]


def run(flat: dict[str, Any], method_name: str, seed: int) -> dict[str, Any]:
    exp, clients, method = latent_run(flat, method_name, seed)
    last = exp.federation.num_server_rounds
    seen = [c for c in clients if not c.unseen]
    types = np.array([c.type_index for c in seen])
    out: dict[str, Any] = {"data": str(flat.get("data")), "seed": seed, "round": last}

    def on_round(row: dict[str, Any], protocol: Any) -> None:
        if row["round"] < last:
            return
        arrays = method.evaluation_arrays(protocol.state)
        model = method.predictor(without_population(arrays)).model  # type: ignore[attr-defined]
        out["own"] = scores(evaluate(method.predictor(arrays), clients))
        for name, points in placements(method, protocol.state, seen).items():
            predictor = GroupPredictor(model, group_means(points, types))
            out[name] = scores(evaluate(predictor, clients))
        raise StopRun

    with contextlib.suppress(StopRun):
        run_in_process(method, clients, replace(exp.federation, method=method_name), on_round)
    return out


def main() -> None:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--json", default=None, help="append one JSON line per seed here")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny tensors: more threads only add overhead on 2 cores
    try:
        flat = load_toml(args.config)
        for seed in args.seeds:
            row = run(flat, args.method, seed)
            print(json.dumps(row), flush=True)
            if args.json:
                with open(args.json, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
    except ConfigError as exc:
        print(f"group_z: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
