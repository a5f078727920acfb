"""A family of pluralistic preference data sets whose user types combine poles of taste axes.

Why it exists: defaults tuned on one data set are a result about that data set only. The embedded
``synthetic-2``/``synthetic-4`` data (``fedvpa.data.synthetic``) has one fixed structure: a
safety conflict, optionally crossed with verbosity. A setting that wins there may only fit that
structure. This module generates *different* data from different text, so a default can be chosen
on some members and then checked, untouched, on the others (the tuning rule is in
``docs/data-family.md``).

How it differs from the embedded data:

* **Axes of taste.** Every reply has a pole on four independent binary axes: ``tone``
  (``formal``/``casual``), ``depth`` (``brief``/``thorough``), ``examples``
  (``concrete``/``abstract``) and ``caution`` (``careful``/``direct``). A member of the family
  picks some axes and a set of user types, each type one pole per picked axis (``formal-brief``).
  Axes a member does not use still vary from comparison to comparison (both replies of one
  comparison share them), so they are nuisance variation that no type cares about.
* **Utilities, not rules.** Type ``t`` scores a reply
  ``u_t = sum_a w_a * [pole_a(reply) == pole_a(t)] + 2.0 * quality`` with distinct weights, and
  prefers the higher score. Two-axis comparisons therefore split the types by the heavier axis.
* **Comparison kinds** (fixed shares): one-axis differences (60 %: two good replies to the same
  prompt that differ on one of the member's axes), two-axis differences (15 %, members with at
  least two axes; otherwise these become one-axis) and quality differences (25 %: same style on
  every axis, one reply good, the other off-topic, factually wrong, dismissive or unhelpful).
* **Label noise.** Each emitted label is flipped with the member's ``label_noise`` (independently
  per type and comparison), so the data is not perfectly separable even for the right type.

Rendering, so that a sentence encoder that reads the last human turn and the reply can see every
axis: every sentence is built from a pole-specific template (formal: impersonal, measured, no
contractions; casual: second person, contractions, "honestly", exclamation marks), ``depth``
sets the shape (brief: two sentences; thorough: four to six, with reasons), ``examples`` fills
one slot with either a worked example with numbers and a named person or a general principle,
and ``caution`` fills another with either a caveat naming a risk and whom to check with or a
confident closing line, plus a hedging or a firm qualifier on one piece of advice. Each slot's
two poles are written to similar lengths, so within a depth pole the length of a reply does not
give away the other axes. The two replies of a comparison draw from one content plan (the same
advice, example and principle) and choose their templates independently, so what differs
between them is the style on the compared axes plus template noise, never the topic.

All text is written for this project (24 everyday domains, none taken from the embedded
generator or from elsewhere) and lives in ``fedvpa.data.family_text``; this module holds the
axes, the members and the generator.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from fedvpa.data.family_text import (
    ADVICE_CLAUSE,
    CAUTION_SENTENCE,
    DISMISSIVE,
    DOMAINS,
    EXAMPLE_CLAUSE,
    EXAMPLE_SENTENCE,
    HOLLOW_EXAMPLES,
    JOINER,
    NAMES,
    OPENER,
    PRINCIPLES,
    PRIOR_TURNS,
    PROMPTS,
    QUALIFIER,
    STEP_SENTENCE,
    VAGUE,
    Domain,
)
from fedvpa.data.schema import PreferencePair
from fedvpa.data.synthetic import check_pairs_per_type
from fedvpa.errors import ConfigError

# ------------------------------------------------------------------------------ axes, members

AXES: dict[str, tuple[str, str]] = {
    "tone": ("formal", "casual"),
    "depth": ("brief", "thorough"),
    "examples": ("concrete", "abstract"),
    "caution": ("careful", "direct"),
}
QUALITY_WEIGHT = 2.0  # larger than any sum of axis weights: a flawed reply never wins on style
KIND_SHARES = {"one-axis": 0.60, "two-axis": 0.15, "quality": 0.25}
FLAWS = ("off-topic", "wrong", "dismissive", "unhelpful")


@dataclass(frozen=True, slots=True)
class FamilyMember:
    """One data set of the family: which axes matter, which types exist, how noisy labels are.

    ``types`` holds one pole per axis (in the order of ``axes``); a type's name is its poles
    joined by ``-``. ``axis_weights`` are the importances in the utility, distinct so that no
    comparison of two good replies can tie.
    """

    name: str
    axes: tuple[str, ...]
    types: tuple[tuple[str, ...], ...]
    axis_weights: tuple[float, ...]
    label_noise: float
    description: str

    def __post_init__(self) -> None:
        # A malformed registry entry is a programming error: fail at import, not mid-experiment.
        if not self.axes or any(a not in AXES for a in self.axes):
            raise ValueError(f"{self.name}: unknown axis in {self.axes}")
        if len(self.axis_weights) != len(self.axes):
            raise ValueError(f"{self.name}: one weight per axis")
        if len(set(self.axis_weights)) != len(self.axis_weights) or min(self.axis_weights) <= 0:
            raise ValueError(f"{self.name}: weights must be positive and distinct")
        if sum(self.axis_weights) >= QUALITY_WEIGHT:
            raise ValueError(f"{self.name}: quality must outweigh every style axis together")
        for poles in self.types:
            if len(poles) != len(self.axes) or any(
                p not in AXES[a] for a, p in zip(self.axes, poles, strict=False)
            ):
                raise ValueError(f"{self.name}: type {poles} does not match axes {self.axes}")
        if len(set(self.types)) != len(self.types) or len(self.types) < 2:
            raise ValueError(f"{self.name}: need at least two distinct types")
        if not 0.0 <= self.label_noise < 0.5:
            raise ValueError(f"{self.name}: label_noise must be in [0, 0.5)")

    @property
    def type_names(self) -> list[str]:
        return sorted("-".join(poles) for poles in self.types)

    def poles_of(self, type_name: str) -> dict[str, str]:
        """Axis -> pole of a type, e.g. ``formal-brief`` -> ``{tone: formal, depth: brief}``."""
        return dict(zip(self.axes, type_name.split("-"), strict=True))


FAMILY: dict[str, FamilyMember] = {
    m.name: m
    for m in (
        FamilyMember(
            name="plural-2",
            axes=("caution",),
            types=(("careful",), ("direct",)),
            axis_weights=(1.0,),
            label_noise=0.15,
            description="Two types split by caution (careful vs direct); the noisiest labels.",
        ),
        FamilyMember(
            name="plural-3",
            axes=("tone", "examples"),
            types=(("formal", "concrete"), ("casual", "concrete"), ("casual", "abstract")),
            axis_weights=(1.0, 0.6),
            label_noise=0.05,
            description=(
                "Three of the four tone x examples combinations (no formal-abstract): types "
                "share a pole with a neighbour, so they are not all equally far apart."
            ),
        ),
        FamilyMember(
            name="plural-4",
            axes=("tone", "depth"),
            types=(
                ("formal", "brief"),
                ("formal", "thorough"),
                ("casual", "brief"),
                ("casual", "thorough"),
            ),
            axis_weights=(1.0, 0.6),
            label_noise=0.1,
            description="All four tone x depth combinations, tone weighing more than depth.",
        ),
        FamilyMember(
            name="plural-6",
            axes=("tone", "depth", "examples"),
            types=tuple(
                (t, d, e)
                for t in AXES["tone"]
                for d in AXES["depth"]
                for e in AXES["examples"]
                if (t, d, e)
                not in {("formal", "brief", "abstract"), ("casual", "thorough", "concrete")}
            ),
            axis_weights=(1.0, 0.6, 0.35),
            label_noise=0.1,
            description=(
                "Six of the eight tone x depth x examples combinations (no formal-brief-abstract,"
                " no casual-thorough-concrete): the most types and the weakest third axis."
            ),
        ),
    )
}


def get_member(member: str) -> FamilyMember:
    """The registered member, or a ``ConfigError`` on field ``data`` naming the known ones."""
    if member not in FAMILY:
        raise ConfigError(
            f"unknown data family member {member!r}; expected one of {sorted(FAMILY)}",
            field="data",
        )
    return FAMILY[member]


def family_user_types(member: str) -> list[str]:
    """The sorted user-type names of a member (the order ``type-ratio`` refers to)."""
    return get_member(member).type_names


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _end(tone: str, rng: random.Random) -> str:
    return "!" if tone == "casual" and rng.random() < 0.6 else "."


# --------------------------------------------------------------------------------- rendering


@dataclass(frozen=True, slots=True)
class _Plan:
    """The content a reply is built from; its style comes from the poles at rendering time."""

    domain: Domain  # whose expert and risk the caution slot names
    actions: tuple[tuple[str, str], ...]  # (action, reason), at least three
    example: str
    principle: str


def _name_and_number(text: str, rng: random.Random) -> str:
    return text.format(name=rng.choice(NAMES), n=rng.randint(3, 9))


def _good_plan(domain: Domain, rng: random.Random) -> _Plan:
    return _Plan(
        domain,
        tuple(rng.sample(domain.advice, 3)),
        _name_and_number(rng.choice(domain.examples), rng),
        rng.choice(PRINCIPLES).format(noun=domain.noun),
    )


def _flawed_plan(domain: Domain, flaw: str, rng: random.Random) -> _Plan:
    """A plan whose reply is off-topic, wrong, dismissive or unhelpful, in any style."""
    if flaw == "off-topic":
        return _good_plan(rng.choice([d for d in DOMAINS if d is not domain]), rng)
    principle = rng.choice(PRINCIPLES).format(noun=domain.noun)
    if flaw == "wrong":
        example = _name_and_number(rng.choice(domain.examples), rng)
        return _Plan(domain, tuple(rng.sample(domain.wrong, 3)), example, principle)
    pool = DISMISSIVE if flaw == "dismissive" else VAGUE
    actions = tuple(
        (a.format(noun=domain.noun), r.format(noun=domain.noun)) for a, r in rng.sample(pool, 3)
    )
    return _Plan(domain, actions, _name_and_number(rng.choice(HOLLOW_EXAMPLES), rng), principle)


def _slots(plan: _Plan) -> dict[str, str]:
    return {
        "e": plan.example,
        "p": plan.principle,
        "expert": plan.domain.expert,
        "risk": plan.domain.risk,
    }


def render_reply(plan: _Plan, style: Mapping[str, str], rng: random.Random) -> str:
    """One reply with one pole on every axis (``style``: axis -> pole)."""
    tone, caution = style["tone"], style["caution"]
    slots = _slots(plan)
    example_key = (tone, style["examples"])
    caution_line = rng.choice(CAUTION_SENTENCE[(tone, caution)]).format(**slots)
    qualifier = rng.choice(QUALIFIER[caution])
    if style["depth"] == "brief":
        # Two sentences: the advice joined to the example (or principle), then the caution line.
        action = plan.actions[0][0] + (qualifier if rng.random() < 0.5 else "")
        advice = rng.choice(ADVICE_CLAUSE[tone]).format(a=action)
        example = rng.choice(EXAMPLE_CLAUSE[example_key]).format(**slots)
        first = _cap(advice) + rng.choice(JOINER[tone]) + example + _end(tone, rng)
        return f"{first} {caution_line}"
    # Thorough: an optional opener, two or three steps with reasons, the example (or principle)
    # after the first step or after all of them, and the caution line: four to six sentences.
    n_steps = rng.choice((2, 3))
    positions = (0, 2) if n_steps == 2 else (0, 1, 2)
    hedged = rng.randrange(n_steps)
    steps = []
    for i, (pos, (action, reason)) in enumerate(zip(positions, plan.actions, strict=False)):
        if i == hedged:
            action += qualifier
        steps.append(rng.choice(STEP_SENTENCE[tone][pos]).format(a=action, r=reason))
    example = rng.choice(EXAMPLE_SENTENCE[example_key]).format(**slots)
    sentences = [rng.choice(OPENER[tone])] if rng.random() < 0.5 else []
    if rng.random() < 0.5:
        sentences += [steps[0], example, *steps[1:]]
    else:
        sentences += [*steps, example]
    sentences.append(caution_line)
    return " ".join(sentences)


def _prompt(domain: Domain, task: str, rng: random.Random) -> str:
    """HH transcript form, so ``last_human_turn`` and the embedder treat it like real data."""
    turns = ""
    if rng.random() < 0.3:
        human, assistant = rng.choice(PRIOR_TURNS)
        turns = f"\n\nHuman: {human.format(noun=domain.noun)}\n\nAssistant: {assistant}"
    return f"{turns}\n\nHuman: {rng.choice(PROMPTS).format(task=task)}\n\nAssistant:"


# ------------------------------------------------------------------------------- comparisons


@dataclass(frozen=True)
class FamilyComparison:
    """One comparison before emission, with everything the labels were derived from.

    ``style_first``/``style_second`` give every axis's pole (member axes and nuisance axes);
    ``axes`` are the member axes on which the two replies differ (empty for quality ones);
    ``flaw`` names what is wrong with ``second`` in a quality comparison. ``prefers`` is each
    type's clean label (0 = first, 1 = second), before any label noise.
    """

    prompt: str
    first: str
    second: str
    kind: str  # one-axis | two-axis | quality
    axes: tuple[str, ...]
    style_first: Mapping[str, str]
    style_second: Mapping[str, str]
    quality_first: float
    quality_second: float
    flaw: str | None
    prefers: Mapping[str, int] = field(default_factory=dict)

    @property
    def conflict(self) -> bool:
        return len(set(self.prefers.values())) > 1


def utility(
    member: FamilyMember, type_name: str, style: Mapping[str, str], quality: float
) -> float:
    """``sum_a w_a * [style pole == type pole] + 2.0 * quality`` over the member's axes."""
    poles = member.poles_of(type_name)
    score = sum(
        w for a, w in zip(member.axes, member.axis_weights, strict=True) if style[a] == poles[a]
    )
    return score + QUALITY_WEIGHT * quality


def _kinds(member: FamilyMember, n: int, rng: random.Random) -> list[str]:
    n_two = round(KIND_SHARES["two-axis"] * n) if len(member.axes) >= 2 else 0
    n_quality = round(KIND_SHARES["quality"] * n)
    kinds = ["two-axis"] * n_two + ["quality"] * n_quality
    kinds += ["one-axis"] * (n - len(kinds))
    rng.shuffle(kinds)
    return kinds


def _draw(member: FamilyMember, kind: str, rng: random.Random) -> FamilyComparison:
    domain = rng.choice(DOMAINS)
    prompt = _prompt(domain, rng.choice(domain.tasks), rng)
    style_first = {axis: rng.choice(poles) for axis, poles in AXES.items()}
    style_second = dict(style_first)
    axes: tuple[str, ...] = ()
    if kind != "quality":
        axes = tuple(rng.sample(member.axes, 2 if kind == "two-axis" else 1))
        for axis in axes:
            a, b = AXES[axis]
            style_second[axis] = b if style_first[axis] == a else a
    plan = _good_plan(domain, rng)
    first = render_reply(plan, style_first, rng)
    flaw = None
    quality_second = 1.0
    if kind == "quality":
        flaw = rng.choice(FLAWS)
        quality_second = 0.0
        second = render_reply(_flawed_plan(domain, flaw, rng), style_second, rng)
    else:
        second = render_reply(plan, style_second, rng)
    prefers = {}
    for t in member.type_names:
        u1 = utility(member, t, style_first, 1.0)
        u2 = utility(member, t, style_second, quality_second)
        if u1 == u2:  # cannot happen with distinct weights; guard the invariant anyway
            raise AssertionError(f"tie for {t} in {member.name}")
        prefers[t] = 0 if u1 > u2 else 1
    return FamilyComparison(
        prompt=prompt,
        first=first,
        second=second,
        kind=kind,
        axes=axes,
        style_first=MappingProxyType(style_first),
        style_second=MappingProxyType(style_second),
        quality_first=1.0,
        quality_second=quality_second,
        flaw=flaw,
        prefers=MappingProxyType(prefers),
    )


def family_comparisons(
    member: str, pairs_per_type: int = 1200, seed: int = 0
) -> list[FamilyComparison]:
    """The clean comparisons behind ``generate_family`` (same arguments, same order).

    Exposed so that tests and analyses can compare emitted labels with the clean ones and see
    each reply's poles; the emitted pairs carry only the (noisy) label.
    """
    spec = get_member(member)
    check_pairs_per_type(pairs_per_type)
    rng = random.Random(f"family:{member}:{seed}:comparisons")
    comparisons: list[FamilyComparison] = []
    seen: set[tuple[str, str, str]] = set()
    for kind in _kinds(spec, pairs_per_type, rng):
        while True:  # redraw exact repeats: a repeated comparison could sit in context and test
            comp = _draw(spec, kind, rng)
            key = (comp.prompt, comp.first, comp.second)
            if key not in seen and comp.first != comp.second:
                seen.add(key)
                break
        comparisons.append(comp)
    return comparisons


def generate_family(member: str, pairs_per_type: int = 1200, seed: int = 0) -> list[PreferencePair]:
    """``pairs_per_type`` comparisons of ``member``, each emitted once per user type.

    A type's label is its clean preference, flipped with probability ``label_noise``
    (independently per type and comparison); A/B order is an independent coin flip per emitted
    pair. ``conflict`` is whether the clean labels differ between the member's types. Output is
    grouped by user type (sorted); ``source`` is ``"{member}:seed{seed}:{k}"``. Deterministic in
    ``seed`` (string-seeded generators, so independent of ``PYTHONHASHSEED``).
    """
    spec = get_member(member)
    comparisons = family_comparisons(member, pairs_per_type, seed)
    noise = random.Random(f"family:{member}:{seed}:noise")
    order = random.Random(f"family:{member}:{seed}:order")
    pairs: list[PreferencePair] = []
    for user_type in spec.type_names:
        for k, comp in enumerate(comparisons):
            label = comp.prefers[user_type]
            if noise.random() < spec.label_noise:
                label = 1 - label
            pair = PreferencePair(
                prompt=comp.prompt,
                response_a=comp.first,
                response_b=comp.second,
                preferred=label,
                user_type=user_type,
                source=f"{member}:seed{seed}:{k}",
                conflict=comp.conflict,
            )
            pairs.append(pair.swapped() if order.random() < 0.5 else pair)
    return pairs


__all__ = [
    "AXES",
    "DOMAINS",
    "FAMILY",
    "Domain",
    "FamilyComparison",
    "FamilyMember",
    "family_comparisons",
    "family_user_types",
    "generate_family",
    "get_member",
    "render_reply",
    "utility",
]
