"""HH-RLHF transcript parsing: the shared conversation and the two final replies.

HH-RLHF stores each comparison as two full transcripts (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``)
that should share every turn but the last assistant reply. The model only ever sees
"prompt + one reply", so the split must be exact: a pair whose transcripts diverge earlier is not a
comparison of two replies to the same conversation, and scoring it as one would teach the model
about the earlier turns instead. Such pairs are rejected with a reason rather than repaired.

Empty final replies are accepted: HH-RLHF contains a few comparisons where the assistant said
nothing, and annotators did compare them against a real reply.
"""

from __future__ import annotations

import os
import re

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"

_HUMAN_TURN = re.compile(r"(?:^|\n\n)Human:")


class TranscriptError(ValueError):
    """A transcript pair that is not two replies to one conversation.

    ``field`` names the record field at fault (``"chosen"``/``"rejected"``) or is None when the
    pair as a whole is at fault, so a reader can report ``file:line: field: reason``.
    """

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


def _prompt_end(transcript: str, field: str) -> int:
    idx = transcript.rfind(ASSISTANT)
    if idx < 0:
        raise TranscriptError("transcript has no final '\\n\\nAssistant:' turn", field)
    return idx + len(ASSISTANT)


def split_transcripts(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two transcripts into (prompt, chosen reply, rejected reply).

    The prompt is the shared conversation up to and including the final ``"\\n\\nAssistant:"``
    marker; the replies are what follows it, stripped. Raises ``TranscriptError`` when either
    transcript lacks a final Assistant turn, when the conversations before the final replies
    differ (in HH-RLHF this happens when one transcript has an extra Assistant turn), or when the
    two replies are identical (no preference can be learned from it).
    """
    c_end = _prompt_end(chosen, "chosen")
    r_end = _prompt_end(rejected, "rejected")
    prompt = chosen[:c_end]
    if prompt != rejected[:r_end]:
        shared = os.path.commonprefix([chosen, rejected])
        if ASSISTANT not in shared:
            raise TranscriptError(
                "transcripts share no conversation (the first turn differs)", "chosen/rejected"
            )
        turns_c, turns_r = prompt.count(ASSISTANT), rejected[:r_end].count(ASSISTANT)
        if turns_c != turns_r:
            raise TranscriptError(
                "has an extra Assistant turn before its final reply (not two replies to one "
                "conversation)",
                "chosen" if turns_c > turns_r else "rejected",
            )
        raise TranscriptError(
            "transcripts differ before the final Assistant reply", "chosen/rejected"
        )
    chosen_reply = chosen[c_end:].strip()
    rejected_reply = rejected[r_end:].strip()
    if chosen_reply == rejected_reply:
        raise TranscriptError("the two final replies are identical")
    return prompt, chosen_reply, rejected_reply


def last_human_turn(prompt: str) -> str:
    """The text of the last Human turn (the whole prompt, stripped, when it has no markers).

    The embedder encodes "last human turn + reply" because MiniLM truncates at 256 tokens: the full
    conversation would push the reply out of the window and make both sides of a pair identical.
    """
    starts = [m.end() for m in _HUMAN_TURN.finditer(prompt)]
    if not starts:
        return prompt.strip()
    start = starts[-1]
    end = prompt.find(ASSISTANT, start)
    if end < 0:
        end = len(prompt)
    return prompt[start:end].strip()


def normalise_prompt(prompt: str) -> str:
    """Bring a prompt to HH transcript form: ``"\\n\\nHuman: ...\\n\\nAssistant:"``.

    The relabeled HH-RLHF files store the conversation without the leading blank line and without
    the final Assistant marker; normalising makes their prompts byte-identical to the ones split
    from raw HH-RLHF, so caches and ``last_human_turn`` treat both the same. Plain-text prompts
    without any markers are returned unchanged.
    """
    if not _HUMAN_TURN.search(prompt):
        return prompt
    body = prompt.rstrip()
    if body.startswith("Human:"):
        body = "\n\n" + body
    if not body.endswith(ASSISTANT):
        body += ASSISTANT
    return body
