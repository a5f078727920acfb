"""Fault injection for the in-process runtime: a share of each round's sampled clients crash,
time out or send a malformed reply, chosen by a pure function of (seed, round, client), so a
faulty run is as reproducible as a clean one. Used by the fault tests and
``benchmarks/faults.py``; a real federation's faults come from Flower (errors, timeouts) and
from ``protocol/round.py``'s check of every reply."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from fedvpa.methods.base import Arrays, ClientUpdate
from fedvpa.protocol import seeds
from fedvpa.protocol.in_process import InProcessTransport
from fedvpa.protocol.round import Replies, TrainJob

FAULTS = ("crash", "timeout", "malformed")
STREAM_FAULTS = 99


def faults_for(
    seed: int, server_round: int, client_ids: Sequence[int], share: float
) -> dict[int, str]:
    """Exactly ``round(share * n)`` of the ``n`` clients, chosen at random from (seed, round),
    each with a fault: crash, time-out and malformed in turn."""
    rng = np.random.default_rng(seeds.derive_seed(seed, server_round, -1, STREAM_FAULTS))
    ids = sorted(client_ids)
    count = int(round(share * len(ids)))
    chosen = sorted(int(i) for i in rng.choice(ids, size=count, replace=False)) if count else []
    start = int(rng.integers(len(FAULTS)))
    return {cid: FAULTS[(start + i) % len(FAULTS)] for i, cid in enumerate(chosen)}


def malformed(update: ClientUpdate) -> ClientUpdate:
    """A reply corrupted in transit or by a broken client: its first array turned to NaN."""
    arrays = dict(update.arrays)
    key = sorted(arrays)[0]
    arrays[key] = np.full_like(arrays[key], np.nan)
    return dataclasses.replace(update, arrays=arrays)


class FaultyTransport(InProcessTransport):
    """The in-process transport with ``share`` of each round's training replies lost."""

    def __init__(self, *args: object, share: float = 0.3, seed: int = 0) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.share, self.seed = share, seed

    def train(
        self, server_round: int, arrays: Arrays, jobs: Sequence[TrainJob]
    ) -> Replies[ClientUpdate]:
        faults = faults_for(self.seed, server_round, [j.client_id for j in jobs], self.share)
        crashed = [j.client_id for j in jobs if faults.get(j.client_id) == "crash"]
        replies = super().train(
            server_round, arrays, [j for j in jobs if j.client_id not in crashed]
        )
        ok = dict(replies.ok)
        timed_out = [cid for cid in list(ok) if faults.get(cid) == "timeout"]
        for cid in timed_out:
            del ok[cid]
        for cid in ok:
            if faults.get(cid) == "malformed":
                ok[cid] = malformed(ok[cid])
        reasons = [*replies.error_reasons, *(f"client {c}: crashed (injected)" for c in crashed)]
        return dataclasses.replace(
            replies,
            ok=ok,
            errors=replies.errors + len(crashed),
            missing=replies.missing + len(timed_out),
            error_reasons=reasons,
        )
