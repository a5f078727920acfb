"""Best-of-n reranking with the z-conditioned stage-1 selector: the model-free stage 2.

Both selector forms are a difference of per-reply rewards, ``logit(A, B, z) = r(A, z) -
r(B, z)`` (the reward form by construction; the logit-bias form because it is linear in
``f = g(A) - g(B)``). So each candidate is scored once, against a **fixed reference**, the zero
embedding: ``score = logit(candidate, 0, z)``, which is ``r(candidate, z)`` up to a constant
shared by all candidates. The ranking by score is therefore the ranking every pairwise comparison
agrees with (no cycles), and we also print each candidate's **mean pairwise win probability**
``mean_j sigmoid(logit(candidate, j, z))`` against the other candidates, which is on a scale a
person can read (0.5 = an average candidate) and orders the candidates the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedvpa.alignment.preferences import Stage1Run, embed_texts
from fedvpa.data.schema import PreferencePair
from fedvpa.embeddings.pipeline import pair_texts
from fedvpa.errors import ConfigError

TEXT_KEYS = ("text", "response", "reply", "completion")


@dataclass(frozen=True)
class Ranked:
    index: int  # position in the candidates file (0-based)
    text: str
    score: float  # r(candidate, z) up to a shared constant
    win_prob: float  # mean P(candidate preferred over another candidate | z)


def read_candidates(path: str | Path) -> list[str]:
    """Candidates from a ``.jsonl`` (each line a JSON string or an object with one of
    ``text``/``response``/``reply``/``completion``) or a plain file with one reply per line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("no such candidates file", path=str(path), field="--candidates")
    lines = [(i, line) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    out: list[str] = []
    if path.suffix == ".jsonl":
        for number, line in lines:
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"invalid JSON ({exc.msg})", path=str(path), line=number) from exc
            if isinstance(value, dict):
                value = next((value[k] for k in TEXT_KEYS if k in value), None)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(
                    f"expected a string or an object with one of {', '.join(TEXT_KEYS)}",
                    path=str(path),
                    line=number,
                )
            out.append(value)
    else:
        out = [line for _, line in lines]
    if len(out) < 2:
        raise ConfigError(f"ranking needs at least 2 candidates, got {len(out)}", path=str(path))
    return out


def candidate_text(prompt: str, reply: str) -> str:
    """The text the selector saw in stage 1 for a reply: exactly what ``pair_texts`` embeds."""
    return pair_texts(
        PreferencePair(prompt=prompt, response_a=reply, response_b=reply, preferred=0)
    )[0]


def rank_candidates(
    run: Stage1Run, z: np.ndarray, prompt: str, candidates: list[str]
) -> list[Ranked]:
    """Candidates best first under ``z``."""
    emb = embed_texts(run, [candidate_text(prompt, c) for c in candidates])
    model = run.selector()
    zt = torch.as_tensor(z, dtype=torch.float32)
    with torch.no_grad():
        score = model.logit(emb, torch.zeros_like(emb), zt)
        pairwise = model.logit(emb[:, None, :], emb[None, :, :], zt)  # [n, n]
    n = len(candidates)
    prob = torch.sigmoid(pairwise)
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    win = (prob * off_diagonal).sum(dim=1) / max(n - 1, 1)
    order = torch.argsort(score, descending=True, stable=True).tolist()
    return [Ranked(i, candidates[i], float(score[i]), float(win[i])) for i in order]


def best_of_n(
    run: Stage1Run,
    prompts: list[str],
    candidates: list[list[str]],
    groups: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Per group, each prompt's candidate scores ``r(candidate, z)`` (``[prompts, n]``, up to a
    constant per prompt), every candidate embedded once for all groups; the best-of-n reply is
    the argmax of its row (``rank_candidates`` for many prompts at once)."""
    if len(prompts) != len(candidates) or any(len(c) != len(candidates[0]) for c in candidates):
        raise ValueError("best_of_n needs the same number of candidates for every prompt")
    texts = [candidate_text(p, c) for p, cs in zip(prompts, candidates, strict=True) for c in cs]
    emb = embed_texts(run, texts)
    model = run.selector()
    out: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for name, z in groups.items():
            zt = torch.as_tensor(z, dtype=torch.float32)
            score = model.logit(emb, torch.zeros_like(emb), zt)
            out[name] = score.numpy().astype(np.float64).reshape(len(prompts), -1)
    return out


def render_ranking(ranked: list[Ranked], label: str, top: int | None = None) -> str:
    """The ranking as a small table (rank, file line, score, win probability, reply)."""
    shown = ranked if not top else ranked[:top]
    lines = [
        f"Best-of-{len(ranked)} under {label} (score: selector reward up to a constant; "
        "win: mean P(preferred) over the other candidates)",
        f"{'rank':>4}  {'cand':>4}  {'score':>8}  {'win':>5}  reply",
    ]
    for rank, item in enumerate(shown, 1):
        text = " ".join(item.text.split())
        text = text if len(text) <= 100 else text[:97] + "..."
        lines.append(
            f"{rank:>4}  {item.index + 1:>4}  {item.score:>8.3f}  {item.win_prob:>5.3f}  {text}"
        )
    return "\n".join(lines)
