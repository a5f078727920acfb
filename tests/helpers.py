"""Synthetic tensor-level clients for tests: two user types that disagree along a hidden axis.

Every pair is ``a = x + d/2, b = x - d/2`` with a random base ``x``. User type t has the utility
``U_t(x) = c_t (u . x) + (v . x)`` with ``c_0 = +2`` and ``c_1 = -2`` for orthonormal hidden
axes ``u`` and ``v``. On *conflict* pairs ``d`` lies mostly along ``u`` (the types prefer
opposite responses); on the others ``d`` lies mostly along ``v`` (both types agree). A monolithic
model is therefore at chance on conflict pairs, while a model that knows the type is exact.
"""

from __future__ import annotations

import torch

from fedvpa.embeddings.tensors import ClientTensors, PairTensors

TYPE_NAMES = ("helpful", "harmless")


def hidden_axes(dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two orthonormal hidden axes ``(u, v)`` of the toy data."""
    gen = torch.Generator().manual_seed(seed + 7919)
    q, _ = torch.linalg.qr(torch.randn(dim, 2, generator=gen))
    return q[:, 0].contiguous(), q[:, 1].contiguous()


def make_toy_pairs(
    n: int,
    type_index: int,
    dim: int,
    gen: torch.Generator,
    axes: tuple[torch.Tensor, torch.Tensor],
    conflict_share: float = 0.5,
) -> PairTensors:
    """``n`` labelled pairs for one user of type ``type_index`` (0 or 1)."""
    u, v = axes
    x = torch.randn(n, dim, generator=gen)
    conflict = torch.rand(n, generator=gen) < conflict_share
    sign_u = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    sign_v = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    big = 1.0 + torch.rand(n, generator=gen)  # in [1, 2)
    small = 0.25 * torch.rand(n, generator=gen)  # in [0, 0.25)
    s_u = sign_u * torch.where(conflict, big, small)
    s_v = sign_v * torch.where(conflict, small, big)
    d = s_u[:, None] * u + s_v[:, None] * v + 0.1 * torch.randn(n, dim, generator=gen)
    a, b = x + d / 2, x - d / 2
    coef = 2.0 if type_index == 0 else -2.0
    diff = coef * (d @ u) + (d @ v)  # U_t(a) - U_t(b)
    label = (diff > 0).float()
    other = ((-coef) * (d @ u) + (d @ v) > 0).float()
    return PairTensors(a, b, label, label != other, conflict_known=True)


def make_toy_clients(
    num_clients: int = 20,
    pairs: int = 16,
    dim: int = 16,
    seed: int = 0,
    num_context: int = 4,
    num_test: int = 4,
    num_unseen: int = 0,
    conflict_share: float = 0.5,
) -> list[ClientTensors]:
    """``num_clients`` clients alternating between the two types; the last ``num_unseen`` unseen.

    Each client holds ``pairs`` pairs split into ``num_context`` context, ``num_test`` test and
    the rest train (unseen clients have no train pairs: they are folded into their test split).
    ``conflict`` marks the pairs the two types actually disagree on.
    """
    if num_context + num_test > pairs:
        raise ValueError("num_context + num_test exceeds pairs")
    gen = torch.Generator().manual_seed(seed)
    axes = hidden_axes(dim, seed)
    clients = []
    for i in range(num_clients):
        t = i % 2
        unseen = i >= num_clients - num_unseen
        data = make_toy_pairs(pairs, t, dim, gen, axes, conflict_share)
        idx = torch.arange(pairs)
        context = data.subset(idx[:num_context])
        if unseen:
            train = data.subset(idx[:0])
            test = data.subset(idx[num_context:])
        else:
            train = data.subset(idx[num_context : pairs - num_test])
            test = data.subset(idx[pairs - num_test :])
        clients.append(ClientTensors(i, TYPE_NAMES[t], t, unseen, context, train, test))
    return clients
