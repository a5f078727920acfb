"""Embedded pairs as tensors: what the model, the trainers and the Flower clients consume.

Everything downstream of the backbone works on these, so the model never sees text and a client
never needs the backbone at training time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class PairTensors:
    """``n`` embedded pairs. ``label[i] = 1.0`` when A is preferred, ``0.0`` when B is.

    ``conflict[i]`` is True when the user types disagree on pair i; ``conflict_known`` says whether
    the data carried that information at all.
    """

    emb_a: torch.Tensor  # [n, D] float32
    emb_b: torch.Tensor  # [n, D] float32
    label: torch.Tensor  # [n] float32 in {0, 1}
    conflict: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    conflict_known: bool = False

    def __post_init__(self) -> None:
        n = self.label.shape[0]
        if self.conflict.numel() == 0 and n > 0:
            self.conflict = torch.zeros(n, dtype=torch.bool)
        if not (self.emb_a.shape == self.emb_b.shape and self.emb_a.shape[0] == n):
            raise ValueError(
                f"PairTensors shapes disagree: emb_a {tuple(self.emb_a.shape)}, "
                f"emb_b {tuple(self.emb_b.shape)}, label {tuple(self.label.shape)}"
            )

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @property
    def dim(self) -> int:
        return int(self.emb_a.shape[1])

    def oriented(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) embeddings: the orientation a context set is encoded in."""
        a_pref = self.label.bool().unsqueeze(1)
        chosen = torch.where(a_pref, self.emb_a, self.emb_b)
        rejected = torch.where(a_pref, self.emb_b, self.emb_a)
        return chosen, rejected

    def swapped(self) -> PairTensors:
        return PairTensors(
            self.emb_b, self.emb_a, 1.0 - self.label, self.conflict, self.conflict_known
        )

    def subset(self, index: torch.Tensor) -> PairTensors:
        return PairTensors(
            self.emb_a[index],
            self.emb_b[index],
            self.label[index],
            self.conflict[index],
            self.conflict_known,
        )

    @staticmethod
    def concat(parts: list[PairTensors]) -> PairTensors:
        parts = [p for p in parts if len(p) > 0] or parts[:1]
        return PairTensors(
            torch.cat([p.emb_a for p in parts]),
            torch.cat([p.emb_b for p in parts]),
            torch.cat([p.label for p in parts]),
            torch.cat([p.conflict for p in parts]),
            all(p.conflict_known for p in parts),
        )


@dataclass
class ClientTensors:
    """One client's embedded data, split as the partition split it.

    ``context`` pairs are the labelled pairs a posterior ``q(z | C)`` may read at evaluation; the
    ``test`` pairs are never read by any encoder or optimiser. ``train`` pairs are scored during
    local training (with a context drawn disjointly from ``context`` + ``train`` each step).
    """

    client_id: int
    user_type: str
    type_index: int
    unseen: bool
    context: PairTensors
    train: PairTensors
    test: PairTensors

    @property
    def labelled(self) -> PairTensors:
        """Every pair whose label the client may use for learning (context and train)."""
        return PairTensors.concat([self.context, self.train])

    @property
    def num_examples(self) -> int:
        return len(self.context) + len(self.train)
