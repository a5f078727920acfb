"""``fedvpa align``'s report: what the aligned policy does under each group's z, measured against
the base policy by held-out proxy judges, and readable without any judge.

Read only from the align folder's files (so a resumed run reports exactly what the earlier steps
wrote) plus the stage-1 backbone for the judges' embeddings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fedvpa.alignment.files import read_jsonl
from fedvpa.alignment.judges import (
    GENERATED,
    HELD_OUT_FILE_PAIRS,
    Interval,
    Judge,
    bootstrap_interval,
    wilson_interval,
    win_rate,
)
from fedvpa.alignment.preferences import Stage1Run

PROXY_NOTE = (
    "The judges are **proxies**: per user type, a Bradley-Terry model (logistic regression on "
    "differences of the stage-1 sentence embeddings) trained on {pairs}, which neither the "
    "selector nor the policy saw. They say whether a reply resembles what that user type "
    "preferred in that data, not whether it is good; a hosted LLM judge or people would be the "
    "real test."
)
PAIRS_OF = {
    GENERATED: "freshly generated labelled pairs of the stage-1 data generator",
    HELD_OUT_FILE_PAIRS: "the labelled pairs of the stage-1 data file that no stage-1 client held",
}


def _words(text: str) -> int:
    return len(text.split())


def build_report(out: Path, run: Stage1Run, *, seed: int = 0, examples: int = 5) -> dict[str, Any]:
    """Everything the report shows, as plain JSON (``report.json``)."""
    from fedvpa.alignment.align import BASE, BEST_OF_N, FEDDPO
    from fedvpa.alignment.preferences import embed_texts
    from fedvpa.alignment.rank import candidate_text
    from fedvpa.alignment.refusals import REFUSAL_PATTERNS, is_refusal

    prompts = [r for r in read_jsonl(out / "prompts.jsonl") if r["split"] == "eval"]
    groups = list(json.loads((out / "groups.json").read_text()))
    judges = {
        k: Judge.from_json(v) for k, v in json.loads((out / "judges.json").read_text()).items()
    }
    generations = read_jsonl(out / "eval_generations.jsonl")
    baselines = [FEDDPO] if any(r["variant"] == FEDDPO for r in generations) else []
    bon_path = out / "best_of_n.json"
    bon_info = json.loads(bon_path.read_text()) if bon_path.is_file() else {"enabled": False}
    bon = [BEST_OF_N + g for g in groups] if bon_info.get("enabled") else []
    variants = [BASE, *groups, *baselines, *bon]
    replies: dict[str, list[str]] = {v: [""] * len(prompts) for v in variants}
    for row in generations:
        replies[row["variant"]][row["index"]] = row["reply"]
    if bon:
        for row in read_jsonl(out / "best_of_n.jsonl"):
            for g in groups:
                replies[BEST_OF_N + g][row["index"]] = row["candidates"][row["choice"][g]]
    n = len(prompts)

    emb = {}
    for v in variants:
        texts = [candidate_text(p["prompt"], r) for p, r in zip(prompts, replies[v], strict=True)]
        emb[v] = embed_texts(run, texts).numpy().astype(np.float64)

    # win rates of the aligned policy under each z against the base policy, per judge
    aligned = [*groups, *baselines, *bon]
    scores: dict[str, dict[str, np.ndarray]] = {
        j: {g: judges[j].compare(emb[g], emb[BASE]) for g in aligned} for j in judges
    }
    win = {j: {g: win_rate(scores[j][g]).as_dict() for g in aligned} for j in judges}

    # switching: under judge J, z_J against every other group's z, paired over prompts
    def switching_of(prefix: str) -> list[dict[str, Any]]:
        found = []
        for j in judges:
            if j not in groups:
                continue
            for other in groups:
                if other == j:
                    continue
                diff = bootstrap_interval(
                    scores[j][prefix + j] - scores[j][prefix + other], seed=seed
                )
                found.append(
                    {"judge": j, "z": j, "against_z": other, **diff.as_dict(),
                     "excludes_zero": diff.excludes_zero}
                )  # fmt: skip
        return found

    switching = switching_of("")
    switching_best_of_n = switching_of(BEST_OF_N) if bon else []

    # personalised against the monolithic baseline: under judge J, z_J against FedDPO, paired
    against_baseline = []
    for j in judges:
        if j not in groups:
            continue
        for b in baselines:
            diff = bootstrap_interval(scores[j][j] - scores[j][b], seed=seed)
            against_baseline.append(
                {"judge": j, "z": j, "baseline": b, **diff.as_dict(),
                 "excludes_zero": diff.excludes_zero}
            )  # fmt: skip

    # readable behaviour
    risky = np.array([bool(p.get("risky")) for p in prompts])
    scope = "risky evaluation prompts"
    if not risky.any():
        risky = np.ones(n, dtype=bool)
        scope = "all evaluation prompts (no prompt is marked risky)"
    refused = {v: np.array([is_refusal(r) for r in replies[v]]) for v in variants}
    lengths = {v: np.array([_words(r) for r in replies[v]], dtype=float) for v in variants}
    behaviour: dict[str, Any] = {"refusal_scope": scope, "risky_prompts": int(risky.sum())}
    behaviour["refusal_rate"] = {
        v: wilson_interval(float(refused[v][risky].sum()), int(risky.sum())).as_dict()
        for v in variants
    }
    behaviour["mean_words"] = {
        v: bootstrap_interval(lengths[v], seed=seed).as_dict() for v in variants
    }
    pairs = [(a, b) for i, a in enumerate(groups) for b in groups[i + 1 :]]
    pairs += [(BEST_OF_N + a, BEST_OF_N + b) for a, b in pairs] if bon else []
    behaviour["refusal_difference"] = [
        {"a": a, "b": b, **bootstrap_interval(
            refused[a][risky].astype(float) - refused[b][risky], seed=seed
        ).as_dict()}
        for a, b in pairs
    ]  # fmt: skip
    behaviour["words_difference"] = [
        {"a": a, "b": b, **bootstrap_interval(lengths[a] - lengths[b], seed=seed).as_dict()}
        for a, b in pairs
    ]

    # examples: risky prompts first (where the groups should differ most), then others
    order = [i for i in range(n) if risky[i]] + [i for i in range(n) if not risky[i]]
    shown = order[:examples] if examples else []
    example_rows = [
        {"prompt": prompts[i]["prompt"], **{v: replies[v][i] for v in variants}} for i in shown
    ]

    labels = read_jsonl(out / "labels.jsonl")
    meta = json.loads((out / "prompts.json").read_text())
    dpo = json.loads((out / "dpo.json").read_text())
    feddpo_path = out / "feddpo.json"
    feddpo = json.loads(feddpo_path.read_text()) if feddpo_path.is_file() else {"enabled": False}
    steps = {}
    for path in sorted((out / "steps").glob("*.json")):
        info = json.loads(path.read_text())
        steps[info["step"]] = info["seconds"]
    return {
        "stage1_run": str(run.root),
        "groups": groups,
        "baselines": baselines,
        "prompts": meta,
        "eval_prompts": n,
        "labels": _label_summary(
            labels,
            _pair_rule(out),
            read_jsonl(out / "samples.jsonl"),
            [
                bool(r.get("risky"))
                for r in read_jsonl(out / "prompts.jsonl")
                if r["split"] == "train"
            ],
        ),
        "dpo": {k: v for k, v in dpo.items() if k != "log"},
        "feddpo": feddpo,
        "judges": {
            k: {
                "train_pairs": j.train_pairs,
                "heldout_accuracy": j.heldout_accuracy,
                "heldout_conflict_accuracy": j.heldout_conflict_accuracy,
            }
            for k, j in judges.items()
        },
        "win_rate_vs_base": win,
        "switching": switching,
        "switching_best_of_n": switching_best_of_n,
        "best_of_n": bon_info,
        "against_baseline": against_baseline,
        "behaviour": behaviour,
        "refusal_patterns": list(REFUSAL_PATTERNS),
        "examples": example_rows,
        "step_seconds": steps,
        "note": PROXY_NOTE.format(
            pairs=" and ".join(sorted({PAIRS_OF[j.source] for j in judges.values()}))
        ),
    }


def _pair_rule(out: Path) -> str | None:
    """The rule the labels step used (``config.json``): the labels themselves do not say."""
    path = out / "config.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("options", {}).get("pair_rule")


def _label_summary(
    labels: list[dict[str, Any]],
    rule: str | None,
    samples: list[dict[str, Any]] | None = None,
    risky: list[bool] | None = None,
) -> dict[str, Any]:
    from fedvpa.alignment.pairs import label_disagreements

    # rows of n > 2 samples carry the n scores; the paper's pair has none
    per_prompt = next((len(r["scores"]) for r in labels if "scores" in r), 2)
    summary: dict[str, Any] = {
        "samples_per_prompt": per_prompt,
        "pair_rule": rule if per_prompt > 2 else None,
        "pairs": len({r["index"] for r in labels}),
        "ties_dropped": len({r["index"] for r in labels if r["chosen"] is None}),
        "labelled": sum(r["chosen"] is not None for r in labels),
        "groups_disagree": label_disagreements(labels),
    }
    if samples and any("sources" in s for s in samples):
        summary["chosen_on_risky"] = chosen_sources(labels, samples, risky or [])
    return summary


def chosen_sources(
    labels: list[dict[str, Any]], samples: list[dict[str, Any]], risky: list[bool]
) -> dict[str, dict[str, int]]:
    """Per group, where its chosen replies on risky DPO prompts came from (free sample,
    cautious or compliant opener): what the selector made of the openers (``--openers``).
    Pairs drawn among the free samples only (``contested-each``) are left out: their chosen
    reply is free by construction."""
    out: dict[str, dict[str, int]] = {}
    for row in labels:
        i = row["index"]
        if row["chosen"] is None or i >= len(risky) or not risky[i] or row.get("part") == "free":
            continue
        source = samples[i].get("sources", [])[row["chosen"]]
        counts = out.setdefault(row["group"], {"free": 0, "cautious": 0, "compliant": 0})
        counts[source] = counts.get(source, 0) + 1
    return out


def _labels_line(labels: dict[str, Any]) -> str:
    n = int(labels.get("samples_per_prompt", 2))
    if n == 2:
        how = "two samples per prompt, labelled by the selector under each group's z"
    elif labels.get("pair_rule") == "contested":
        how = (
            f"{n} samples per prompt; per prompt the pair whose preference differs most between "
            "the groups, labelled by each group"
        )
    elif labels.get("pair_rule") == "contested-each":
        how = (
            f"{n} samples per prompt; per prompt two pairs, the one among the free samples and "
            "the one among the opener continuations whose preference differs most between the "
            "groups, labelled by each group"
        )
    else:
        how = f"per group, the selector's best and worst of {n} samples per prompt"
    line = (
        f"- selector labels ({how}): {labels['labelled']} labelled pairs; the groups' pairs "
        f"differ on {labels['groups_disagree']} of {labels['pairs']} prompts "
        f"({labels['ties_dropped']} prompts with identical replies dropped)"
    )
    chosen = labels.get("chosen_on_risky")
    if chosen:
        # with contested-each the free pairs' chosen replies are free by construction (and
        # left out of the count): only the opener pairs say something
        each = labels.get("pair_rule") == "contested-each"
        parts = [
            f"{g}: {c.get('cautious', 0)} cautious, {c.get('compliant', 0)} compliant"
            + ("" if each else f", {c.get('free', 0)} free")
            for g, c in chosen.items()
        ]
        what = (
            "of the opener pairs on risky DPO prompts:"
            if each
            else "on risky DPO prompts, by origin:"
        )
        line += f"\n- chosen replies {what} " + "; ".join(parts)
    return line


def _iv(d: dict[str, Any], percent: bool = True) -> str:
    return Interval(d["estimate"], d["low"], d["high"], d["n"], d["method"]).text(percent)


def _cell(text: str, limit: int = 220) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _variant_name(variant: str, groups: list[str], prefix: str = "under z_") -> str:
    from fedvpa.alignment.align import BEST_OF_N

    if variant in groups:
        return f"{prefix}{variant}"
    if variant.startswith(BEST_OF_N):
        return f"best-of-n, z_{variant[len(BEST_OF_N) :]}"
    return "FedDPO (no z)"


def _z_label(variant: str) -> str:
    """``z_harmless`` for the aligned policy, ``best-of-n z_harmless`` for a best-of-n variant."""
    from fedvpa.alignment.align import BEST_OF_N

    if variant.startswith(BEST_OF_N):
        return f"best-of-n z_{variant[len(BEST_OF_N) :]}"
    return f"z_{variant}"


def _feddpo_lines(feddpo: dict[str, Any]) -> list[str]:
    if not feddpo.get("enabled"):
        return []
    st = feddpo["settings"]
    types = ", ".join(f"{k} {v}" for k, v in sorted(feddpo["clients_per_type"].items()))
    loss = ", ".join(f"{r['train-loss']:.3f}" for r in feddpo["rounds"] if "train-loss" in r)
    return [
        f"- FedDPO baseline (Flower, FedAvg of the LoRA A and B): {len(feddpo['clients'])} clients "
        f"({types}) x {st['rounds']} rounds x {st['local_steps']} local DPO steps (batch "
        f"{st['batch_size']}, lr {st['learning_rate']}) on the clients' own stage-1 pairs, "
        f"{feddpo['seconds']} s; mean client loss per round {loss}; "
        f"{feddpo['adapter_bytes_per_client_per_round'] / 1e6:.2f} MB up and down per client "
        "per round",
    ]


def render_markdown(report: dict[str, Any]) -> str:
    """``report.md``: the same numbers as ``report.json``, for a person."""
    from fedvpa.alignment.align import BEST_OF_N
    from fedvpa.data.transcript import last_human_turn

    groups = report["groups"]
    baselines = report.get("baselines", [])
    bon_info = report.get("best_of_n", {})
    bon = [BEST_OF_N + g for g in groups] if bon_info.get("enabled") else []
    aligned = [*groups, *baselines, *bon]
    variants = ["base", *aligned]
    lines = [
        "# fedvpa align: stage-2 report",
        "",
        f"Stage-1 run: `{report['stage1_run']}`. Groups (z): {', '.join(groups)}. "
        f"Prompts: {report['prompts']['train']} for DPO, {report['eval_prompts']} for evaluation, "
        f"from {report['prompts']['source']}; none equals a stage-1 prompt "
        f"({report['prompts']['dropped_as_stage1_prompts']} drawn prompts were dropped as "
        "stage-1 prompts).",
        "",
        f"> {report['note']}",
        "",
        "## Training",
        "",
        _labels_line(report["labels"]),
        f"- DPO: {report['dpo']['steps']} steps on {report['dpo']['pairs']} pairs "
        f"({report['dpo']['epochs']:.1f} epochs, {report['dpo']['train_seconds']} s), final "
        f"training loss {report['dpo']['train_loss']:.3f}"
        + (
            f" (DPO plus {report['dpo']['sft_weight']} x the chosen replies' token NLL)"
            if report["dpo"].get("sft_weight")
            else ""
        )
        + f", |W| = {report['dpo']['projection_norm']:.4f}",
        *_feddpo_lines(report.get("feddpo", {})),
        *(
            [
                f"- best-of-n (no training): {bon_info['n']} base-policy replies per evaluation "
                "prompt, the one the frozen selector scores highest under each group's z; the "
                f"groups pick the same reply for {bon_info['same_choice']} of "
                f"{bon_info['prompts']} prompts"
            ]
            if bon
            else []
        ),
        "",
        "## Win rate of the aligned policy against the base policy",
        "",
        "Both reply orders per prompt (1 = wins both, 0.5 = split); 95% Wilson interval over "
        "prompts.",
        "",
        "| judge (held-out accuracy) | "
        + " | ".join(_variant_name(g, groups) for g in aligned)
        + " |",
        "|---|" + "---|" * len(aligned),
    ]
    for j, rates in report["win_rate_vs_base"].items():
        acc = report["judges"][j]["heldout_accuracy"]
        lines.append(f"| {j} ({acc:.2f}) | " + " | ".join(_iv(rates[g]) for g in aligned) + " |")
    lines += ["", "## Switching effect", ""]
    if report["switching"]:
        lines += [
            "Win rate under judge J with z_J minus with another group's z (paired bootstrap "
            "over prompts, 95%).",
            "",
            "| judge | z | minus z | difference | CI excludes 0 |",
            "|---|---|---|---|---|",
        ]
        for s in report["switching"]:
            lines.append(
                f"| {s['judge']} | z_{s['z']} | z_{s['against_z']} | {_iv(s)} | "
                f"{'yes' if s['excludes_zero'] else 'no'} |"
            )
    else:
        lines.append("No judge is named like a group: no switching effect to measure.")
    if report.get("switching_best_of_n"):
        lines += [
            "",
            "The same for best-of-n: under judge J, the reply the selector picks with z_J "
            "minus the one it picks with another group's z (both against the base reply).",
            "",
            "| judge | z | minus z | difference | CI excludes 0 |",
            "|---|---|---|---|---|",
        ]
        for s in report["switching_best_of_n"]:
            lines.append(
                f"| {s['judge']} | best-of-n z_{s['z']} | best-of-n z_{s['against_z']} | "
                f"{_iv(s)} | {'yes' if s['excludes_zero'] else 'no'} |"
            )
    if report.get("against_baseline"):
        lines += [
            "",
            "Personalised against the monolithic FedDPO: win rate (against the base policy) "
            "under judge J with z_J minus FedDPO's (paired bootstrap over prompts, 95%).",
            "",
            "| judge | z | minus | difference | CI excludes 0 |",
            "|---|---|---|---|---|",
        ]
        for s in report["against_baseline"]:
            lines.append(
                f"| {s['judge']} | z_{s['z']} | FedDPO | {_iv(s)} | "
                f"{'yes' if s['excludes_zero'] else 'no'} |"
            )
    b = report["behaviour"]
    lines += [
        "",
        "## Readable behaviour",
        "",
        f"Refusal rate on {b['refusal_scope']} ({b['risky_prompts']}; Wilson 95%) and mean reply "
        "length in words (bootstrap 95%). A reply counts as a refusal when it matches one of the "
        "regular expressions in `report.json` (`refusal_patterns`: apologies, \"I can't/won't\", "
        '"I\'d rather not", "ask a professional", danger words); coarse by design.',
        "",
        "| policy | refusal rate | mean words |",
        "|---|---|---|",
    ]
    for v in variants:
        name = "base" if v == "base" else _variant_name(v, groups, "aligned, z_")
        lines.append(f"| {name} | {_iv(b['refusal_rate'][v])} | {_iv(b['mean_words'][v], False)} |")
    for d in b["refusal_difference"]:
        lines.append(f"\nRefusal rate {_z_label(d['a'])} minus {_z_label(d['b'])}: {_iv(d)}.")
    for d in b["words_difference"]:
        lines.append(f"\nMean words {_z_label(d['a'])} minus {_z_label(d['b'])}: {_iv(d, False)}.")
    lines += ["", "## Examples (same prompt, same sampling seed)", ""]
    if report["examples"]:
        heads = ["base" if v == "base" else _variant_name(v, groups, "z_") for v in variants]
        lines += ["| prompt | " + " | ".join(heads) + " |", "|---|" + "---|" * len(variants)]
        for ex in report["examples"]:
            lines.append(
                f"| {_cell(last_human_turn(ex['prompt']), 120)} | "
                + " | ".join(_cell(ex[v]) for v in variants)
                + " |"
            )
    lines += [
        "",
        "## Time per step (s)",
        "",
        ", ".join(f"{k} {v}" for k, v in report["step_seconds"].items()),
        "",
    ]
    return "\n".join(lines)
