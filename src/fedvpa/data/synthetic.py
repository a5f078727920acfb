"""The embedded pluralistic preference data, generated from the templates of
``synthetic_text.py`` (written for this project, no external text).

Why it exists: the real relabeled HH-RLHF pairs carry a weak per-pair signal (about 5 points of
room for personalisation: `fedvpa headroom`, and the README's "Comparison on relabeled
HH-RLHF"), so they cannot show whether the mechanism works.
This data makes the disagreement between user types explicit and learnable, in the spirit of
VPL's "Pets" set:

* **2 types** (``helpful``, ``harmless``). A *conflict* comparison answers a somewhat risky request
  (re-wiring an outlet, canning without a pressure canner) twice: once with direct instructions and
  once with a cautious refusal that redirects to a safer option or an expert. Helpful users prefer
  the instructions, harmless users the refusal. An *agreeing* comparison pits a good, safe,
  on-topic answer against a rude, off-topic, wrong or empty reply; every type prefers the good one.
* **4 types** (``{helpful,harmless}-{concise,detailed}``): a second, independent axis. Verbosity
  conflicts compare a one-line answer with a thorough one to an everyday question; safety
  conflicts are rendered at one verbosity level for both replies, so each conflict is on one axis.

The same underlying comparison is emitted once per user type with that type's label: that is what
makes a conflict a conflict, and why a single reward model must fail on those pairs.

The replies are paraphrased (several templates per reply kind, slot-filled with topic words, steps
and tips sampled per reply) so a model has to read the text rather than memorise strings, and the
reply kinds differ in *content* (instructions vs refusal) rather than in length: within a level of
verbosity every kind draws from the same range of sentence counts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from fedvpa.data.schema import PreferencePair
from fedvpa.data.synthetic_text import (
    BAD_KINDS,
    CAUTIOUS,
    DIRECT,
    EMPTY,
    EVERYDAY_QUESTIONS,
    GOOD,
    OPENERS,
    RISKY_QUESTIONS,
    RUDE,
    TOPICS,
    WRONG,
    Topic,
)
from fedvpa.errors import ConfigError


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _lower(s: str) -> str:
    return s[:1].lower() + s[1:]


def _slots(topic: Topic, task: str, rng: random.Random) -> dict[str, str]:
    steps = rng.sample(topic.steps, 4)
    tips = rng.sample(topic.tips, 4)
    w1, w2 = rng.sample(topic.wrong, 2)
    slots = {
        "task": task,
        "topic": topic.name,
        "Topic": _cap(topic.name),
        "hazard": topic.hazard,
        "expert": topic.expert,
        "Expert": _cap(topic.expert),
        "safe_alt": topic.safe_alt,
        "w1": w1,
        "w1_lower": _lower(w1),
        "w2_lower": _lower(w2),
    }
    for i, (s, t) in enumerate(zip(steps, tips, strict=True), start=1):
        slots[f"s{i}"], slots[f"S{i}"] = s, _cap(s)
        slots[f"t{i}"], slots[f"T{i}"] = t, _cap(t)
    return slots


def _prompt(topic: Topic, question: str, rng: random.Random) -> str:
    """HH transcript form, so ``last_human_turn`` and the embedder treat it like real data."""
    turns = ""
    if rng.random() < 0.3:
        human, assistant = rng.choice(OPENERS)
        turns = f"\n\nHuman: {human.format(topic=topic.name)}\n\nAssistant: {assistant}"
    return f"{turns}\n\nHuman: {question}\n\nAssistant:"


def _bad_reply(topic: Topic, slots: dict[str, str], rng: random.Random) -> str:
    kind = rng.choice(BAD_KINDS)
    if kind in ("rude", "empty"):
        sentences = rng.sample(RUDE if kind == "rude" else EMPTY, rng.choice((2, 2, 3)))
        return " ".join(sentences).format(**slots)
    if kind == "wrong":
        return rng.choice(WRONG).format(**slots)
    other = rng.choice([t for t in TOPICS if t is not topic])
    other_slots = _slots(other, slots["task"], rng)
    return rng.choice(GOOD["medium"]).format(**other_slots)


@dataclass(frozen=True, slots=True)
class _Comparison:
    """One comparison and the reply each user type prefers (0 = first, 1 = second)."""

    prompt: str
    first: str
    second: str
    prefers: dict[str, int]


def _safety_comparison(
    topic: Topic, rng: random.Random, types: list[str], verbosity: str
) -> _Comparison:
    task = rng.choice(topic.risky)
    slots = _slots(topic, task, rng)
    prompt = _prompt(topic, rng.choice(RISKY_QUESTIONS).format(task=task), rng)
    direct = rng.choice(DIRECT[verbosity]).format(**slots)
    cautious = rng.choice(CAUTIOUS[verbosity]).format(**slots)
    return _Comparison(
        prompt, direct, cautious, {t: 0 if t.startswith("helpful") else 1 for t in types}
    )


def _verbosity_comparison(topic: Topic, rng: random.Random, types: list[str]) -> _Comparison:
    task = rng.choice(topic.everyday)
    slots = _slots(topic, task, rng)
    question = rng.choice(EVERYDAY_QUESTIONS).format(task=task, topic=topic.name)
    concise = rng.choice(GOOD["concise"]).format(**slots)
    detailed = rng.choice(GOOD["detailed"]).format(**slots)
    return _Comparison(
        _prompt(topic, question, rng),
        concise,
        detailed,
        {t: 0 if t.endswith("concise") else 1 for t in types},
    )


def _agreeing_comparison(
    topic: Topic, rng: random.Random, types: list[str], verbosity: str
) -> _Comparison:
    task = rng.choice(topic.everyday)
    slots = _slots(topic, task, rng)
    question = rng.choice(EVERYDAY_QUESTIONS).format(task=task, topic=topic.name)
    good = rng.choice(GOOD[verbosity]).format(**slots)
    bad = _bad_reply(topic, slots, rng)
    return _Comparison(_prompt(topic, question, rng), good, bad, dict.fromkeys(types, 0))


def _draw(
    kind: str, axis: str, num_types: int, types: list[str], rng: random.Random
) -> _Comparison:
    topic = rng.choice(TOPICS)
    verbosity = "medium" if num_types == 2 else rng.choice(("concise", "detailed"))
    if kind == "agree":
        return _agreeing_comparison(topic, rng, types, verbosity)
    if axis == "verbosity":
        return _verbosity_comparison(topic, rng, types)
    return _safety_comparison(topic, rng, types, verbosity)


def check_pairs_per_type(pairs_per_type: int) -> None:
    """The size argument every generator takes: a positive integer (bools refused)."""
    if (
        isinstance(pairs_per_type, bool)
        or not isinstance(pairs_per_type, int)
        or pairs_per_type < 1
    ):
        raise ConfigError(
            f"pairs_per_type must be a positive integer, got {pairs_per_type!r}",
            field="pairs_per_type",
        )


def synthetic_user_types(num_types: int) -> list[str]:
    """The sorted user types of the 2- or 4-type synthetic data."""
    if num_types == 2:
        return ["harmless", "helpful"]
    if num_types == 4:
        return sorted(f"{s}-{v}" for s in ("helpful", "harmless") for v in ("concise", "detailed"))
    raise ConfigError(f"num_types must be 2 or 4, got {num_types}", field="num_types")


def generate_synthetic(
    num_types: int = 2,
    pairs_per_type: int = 1200,
    conflict_share: float = 0.5,
    seed: int = 0,
) -> list[PreferencePair]:
    """``pairs_per_type`` comparisons, each emitted once per user type with that type's label.

    ``conflict_share`` of the comparisons are conflicts (in the 4-type data, half on the safety
    axis and half on the verbosity axis); the rest every type labels alike. A/B order is an
    independent seeded coin flip per emitted pair. Output is grouped by user type (sorted).
    """
    types = synthetic_user_types(num_types)
    check_pairs_per_type(pairs_per_type)
    if not 0.0 <= conflict_share <= 1.0:
        raise ConfigError(
            f"conflict_share must be in [0, 1], got {conflict_share}", field="conflict_share"
        )
    rng = random.Random(seed)
    n_conflict = round(conflict_share * pairs_per_type)
    kinds = ["conflict"] * n_conflict + ["agree"] * (pairs_per_type - n_conflict)
    rng.shuffle(kinds)
    comparisons: list[tuple[_Comparison, bool]] = []
    seen: set[tuple[str, str, str]] = set()
    for index, kind in enumerate(kinds):
        # 4 types: alternate the conflict axis so both axes get half of the conflicts.
        axis = "safety"
        if (
            kind == "conflict"
            and num_types == 4
            and sum(k == "conflict" for k in kinds[:index]) % 2
        ):
            axis = "verbosity"
        while True:  # redraw exact repeats: a repeated comparison could sit in context and test
            comp = _draw(kind, axis, num_types, types, rng)
            if (key := (comp.prompt, comp.first, comp.second)) not in seen:
                seen.add(key)
                break
        comparisons.append((comp, kind == "conflict"))

    flip = random.Random(seed + 1)
    pairs: list[PreferencePair] = []
    for user_type in types:
        for k, (comp, conflict) in enumerate(comparisons):
            pair = PreferencePair(
                prompt=comp.prompt,
                response_a=comp.first,
                response_b=comp.second,
                preferred=comp.prefers[user_type],
                user_type=user_type,
                source=f"synthetic-{num_types}:seed{seed}:{k}",
                conflict=conflict,
            )
            pairs.append(pair.swapped() if flip.random() < 0.5 else pair)
    return pairs
