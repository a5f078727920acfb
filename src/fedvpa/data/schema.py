"""The one preference-pair schema every reader produces and every later stage consumes."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class PreferencePair:
    """One labelled comparison.

    ``prompt`` is the conversation up to (not including) the final assistant reply, in HH-RLHF
    transcript form (``"\\n\\nHuman: ...\\n\\nAssistant:"``) or plain text. ``preferred`` is 0 when
    ``response_a`` is preferred and 1 when ``response_b`` is. ``source`` is ``"path:line"`` so that
    later errors can still point at the record. ``conflict`` says whether user types disagree on
    this pair, when the data knows it (the synthetic data does; real data usually does not).
    """

    prompt: str
    response_a: str
    response_b: str
    preferred: int
    user: str | None = None
    user_type: str | None = None
    source: str = ""
    conflict: bool | None = None

    @property
    def chosen(self) -> str:
        return self.response_a if self.preferred == 0 else self.response_b

    @property
    def rejected(self) -> str:
        return self.response_b if self.preferred == 0 else self.response_a

    def swapped(self) -> PreferencePair:
        """The same comparison with A and B exchanged (the label follows the text)."""
        return replace(
            self,
            response_a=self.response_b,
            response_b=self.response_a,
            preferred=1 - self.preferred,
        )


def randomise_order(pairs: Iterable[PreferencePair], seed: int) -> list[PreferencePair]:
    """Swap A/B on a seeded coin flip per pair, so no model can learn "A is usually right"."""
    rng = random.Random(seed)
    return [p.swapped() if rng.random() < 0.5 else p for p in pairs]


def user_types(pairs: Sequence[PreferencePair]) -> list[str]:
    """Sorted distinct user types (pairs without a type are ignored)."""
    return sorted({p.user_type for p in pairs if p.user_type is not None})
