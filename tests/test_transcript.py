"""HH-RLHF transcript splitting and last-human-turn extraction."""

from __future__ import annotations

import pytest

from fedvpa.data.transcript import (
    TranscriptError,
    last_human_turn,
    normalise_prompt,
    split_transcripts,
)

CONV = "\n\nHuman: Hi.\n\nAssistant: Hello!\n\nHuman: How do I tie a knot?\n\nAssistant:"


def test_split_multi_turn_takes_final_replies_only() -> None:
    prompt, chosen, rejected = split_transcripts(CONV + " Loop it twice. ", CONV + "  No.")
    assert prompt == CONV
    assert (chosen, rejected) == ("Loop it twice.", "No.")


def test_split_accepts_an_empty_reply_against_a_real_one() -> None:
    prompt, chosen, rejected = split_transcripts(CONV, CONV + " Loop it.")
    assert prompt == CONV and chosen == "" and rejected == "Loop it."


@pytest.mark.parametrize(
    ("chosen", "rejected", "field", "fragment"),
    [
        ("\n\nHuman: Hi.", CONV + " x", "chosen", "no final"),
        (CONV + " x", "\n\nHuman: Hi.", "rejected", "no final"),
        (CONV + " same", CONV + " same ", None, "identical"),
        (
            "\n\nHuman: A?\n\nAssistant: x",
            "\n\nHuman: B?\n\nAssistant: y",
            "chosen/rejected",
            "share no",
        ),
        (CONV + " x", CONV.replace("knot", "bow") + " y", "chosen/rejected", "differ before"),
        (CONV + " x\n\nAssistant: more", CONV + " y", "chosen", "extra Assistant turn"),
        (CONV + " y", CONV + " x\n\nAssistant: more", "rejected", "extra Assistant turn"),
    ],
)
def test_split_rejects_non_comparisons(
    chosen: str, rejected: str, field: str | None, fragment: str
) -> None:
    with pytest.raises(TranscriptError, match=fragment) as info:
        split_transcripts(chosen, rejected)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


def test_last_human_turn() -> None:
    assert last_human_turn(CONV) == "How do I tie a knot?"
    assert last_human_turn("Human: only one turn") == "only one turn"
    assert last_human_turn("  plain text prompt ") == "plain text prompt"
    # A reply-less prompt that does not end with the marker still yields the human text.
    assert last_human_turn("\n\nHuman: a\n\nAssistant: b\n\nHuman: c") == "c"


def test_normalise_prompt_matches_raw_hh_form() -> None:
    stored = "Human: Hi.\n\nAssistant: Hello!\n\nHuman: How do I tie a knot?"
    assert normalise_prompt(stored) == CONV
    assert normalise_prompt(CONV) == CONV
    assert normalise_prompt("plain") == "plain"
