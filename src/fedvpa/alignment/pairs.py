"""Which DPO pairs each preference group gets: the frozen selector scores the policy's samples
under each group's ``z``, and a rule picks one (or, ``contested-each``, two) labelled pairs per
prompt and group."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedvpa.alignment.preferences import Stage1Run
from fedvpa.errors import ConfigError


def selector_logits(
    run: Stage1Run, prompts: Sequence[str], a: Sequence[str], b: Sequence[str], z: np.ndarray
) -> np.ndarray:
    """The selector's logit that A beats B under ``z``, averaged over both orders (so one
    label per pair, free of the selector's position bias)."""
    import torch

    from fedvpa.alignment.preferences import embed_texts
    from fedvpa.alignment.rank import candidate_text

    ea = embed_texts(run, [candidate_text(p, r) for p, r in zip(prompts, a, strict=True)])
    eb = embed_texts(run, [candidate_text(p, r) for p, r in zip(prompts, b, strict=True)])
    zt = torch.as_tensor(z, dtype=torch.float32)
    model = run.selector()
    with torch.no_grad():
        logit = (model.logit(ea, eb, zt) - model.logit(eb, ea, zt)) / 2
    return logit.numpy().astype(np.float64)


def pair_labels(
    scores: dict[str, np.ndarray], replies: Sequence[Sequence[str]], rule: str = "best-worst"
) -> dict[str, list[tuple[int, int] | None]]:
    """Per group and prompt, ``(chosen, rejected)`` among n sampled replies; ``scores[g]`` is
    ``[prompts, n]``, group g's rewards up to a constant per prompt. ``None`` where the two are
    the same text, since DPO learns nothing from such a pair.

    - ``best-worst``: each group's highest and lowest scored reply: the pair the selector is
      surest of under that group's z.
    - ``contested``: one pair per prompt for every group, the (i, j) whose score difference
      varies most across the groups (``max_g d_g - min_g d_g``, ``d_g = s_g(i) - s_g(j)``), each
      group labelling it by its own sign. Where the groups disagree this is the same two
      replies in opposite roles, which only a z-dependent policy can fit.
    """
    if rule not in ("best-worst", "contested"):  # contested-each: see pair_labels_by_source
        raise ConfigError(f"unknown pair rule {rule!r}; one of best-worst, contested")
    names = list(scores)
    out: dict[str, list[tuple[int, int] | None]] = {g: [] for g in names}
    for p, texts in enumerate(replies):
        if rule == "best-worst":
            picks = {g: (int(np.argmax(scores[g][p])), int(np.argmin(scores[g][p]))) for g in names}
        else:
            s = np.stack([scores[g][p] for g in names])  # [G, n]
            diff = s[:, :, None] - s[:, None, :]  # [G, n, n]: d_g(i, j)
            spread = diff.max(axis=0) - diff.min(axis=0)
            i, j = np.unravel_index(int(np.argmax(spread)), spread.shape)
            picks = {
                g: (int(i), int(j)) if diff[k, i, j] > 0 else (int(j), int(i))
                for k, g in enumerate(names)
            }
        for g, (best, worst) in picks.items():
            same = best == worst or texts[best].strip() == texts[worst].strip()
            out[g].append(None if same else (best, worst))
    return out


def source_parts(sources: Sequence[str]) -> dict[str, list[int]]:
    """The sample indices ``contested-each`` picks a pair within: the policy's free samples,
    and the opener continuations (cautious and compliant together)."""
    parts = {
        "free": [i for i, s in enumerate(sources) if s == "free"],
        "openers": [i for i, s in enumerate(sources) if s != "free"],
    }
    return {name: idx for name, idx in parts.items() if len(idx) >= 2}


def pair_labels_by_source(
    scores: dict[str, np.ndarray],
    replies: Sequence[Sequence[str]],
    sources: Sequence[Sequence[str]],
) -> dict[str, list[tuple[str, int, tuple[int, int] | None]]]:
    """``contested-each``: the contested pair within each part of a prompt's samples (see
    source_parts), as ``(part, prompt, pair)`` per group, indices into the prompt's replies.

    With one contested pair over free and opener samples together, the opener pair often
    displaces the free pair (on 29 to 47 of 53 risky prompts in the README's runs), so DPO sees
    fewer of the free pairs that carry the other features the groups differ on; one pair of
    each keeps both. It doubles the DPO rows, so it needs twice the steps for the same epochs."""
    out: dict[str, list[tuple[str, int, tuple[int, int] | None]]] = {g: [] for g in scores}
    for p, texts in enumerate(replies):
        for part, idx in source_parts(sources[p]).items():
            sub = {g: np.asarray(s[p])[idx][None, :] for g, s in scores.items()}
            picks = pair_labels(sub, [[texts[i] for i in idx]], "contested")
            for g, (pair,) in picks.items():
                out[g].append((part, p, None if pair is None else (idx[pair[0]], idx[pair[1]])))
    return out


def label_disagreements(rows: list[dict[str, Any]]) -> int:
    """Prompts on which the groups' (chosen, rejected) pairs differ."""
    by_part: dict[tuple[int, str], set[tuple[int, int]]] = {}
    for r in rows:
        if r["chosen"] is not None:
            pair = (r["chosen"], r.get("rejected", 1 - r["chosen"]))
            by_part.setdefault((r["index"], r.get("part", "")), set()).add(pair)
    return len({index for (index, _), v in by_part.items() if len(v) > 1})
