"""NegEx-style negation scopes for radiology text, so "no nodules or masses" never reads as a finding.

Chapman et al. (2001) NegEx, simplified: a trigger ("no", "without", "negative for", ...) opens a
negated scope that runs to the end of the sentence, to a termination term ("but", "however",
"which", "consistent with", ...) or to a comma after the phrase's own verb ("no effusion seen, ...").
Pseudo-triggers ("no change", "not well seen", "unchanged") look like negations but do not negate
what follows: "no change in the small calcified nodule" still reports a nodule. Pure Python, no
dependencies.
"""

from __future__ import annotations

import re

TRIGGERS = (
    "no", "not", "without", "negative for", "free of", "absence of", "no evidence of", "nor",
    "exclude", "excluded", "rule out", "ruled out", "resolved", "resolution of", "clear of", "removed",
)
PSEUDO_TRIGGERS = (
    "no change", "no interval change", "no significant change", "not well seen", "not seen on",
    "no increase", "not only", "without change", "without significant change", "no definite change",
    "not changed",
)
# A negated phrase closed by its own verb ends at the comma after it: in "no effusion is seen, dense nodule
# in the left lung" the nodule is reported. A plain list ("no effusion, pneumothorax or nodules") runs on.
CLOSERS = ("seen", "identified", "noted", "present", "demonstrated", "evident", "visualized", "appreciated")
TERMINATORS = (
    "but", "however", "although", "which", "except", "though", "other than", "aside from", "apart from",
    "otherwise", "yet", "suggesting", "consistent with", "compatible with", "likely", "probably", "may",
)

_TOKEN = re.compile(r"[a-z_]+|\d+(?:\.\d+)?|,")
# Sentences end at punctuation or at enumerations ("1. ... 2. ...") common in impressions.
_SENTENCE = re.compile(r"(?<=[.;:!?])\s+|\s\d\.\s|^\d\.\s")
_PSEUDO = re.compile(r"\b(?:" + "|".join(map(re.escape, PSEUDO_TRIGGERS)) + r")\b")
_TRIGGER_SET = set(TRIGGERS)
_TERMINATOR_SET = set(TERMINATORS)
_CLOSER_SET = set(CLOSERS)


def normalise(text: str) -> str:
    """Lower-case and drop the de-identification placeholder "XXXX" (it carries no meaning)."""
    return re.sub(r"x{3,}", " ", text.lower())


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE.split(normalise(text)) if s.strip()]


def _match(tokens: list[str], i: int, phrases: set[str]) -> int:
    """Length in tokens of the longest phrase in ``phrases`` starting at ``tokens[i]`` (0 if none)."""
    for n in (3, 2, 1):
        if i + n <= len(tokens) and " ".join(tokens[i : i + n]) in phrases:
            return n
    return 0


def split_affirmed_negated(text: str) -> tuple[list[str], list[str]]:
    """Tokens of ``text`` outside and inside negated scopes (triggers themselves dropped)."""
    affirmed: list[str] = []
    negated: list[str] = []
    for sentence in sentences(text):
        # Glue pseudo-triggers into one token so the trigger scan cannot see their "no"/"not".
        sentence = _PSEUDO.sub(lambda m: m.group(0).replace(" ", "_"), sentence)
        tokens = _TOKEN.findall(sentence)
        in_scope = False
        i = 0
        while i < len(tokens):
            token = tokens[i]
            if token == ",":  # commas only ever end a scope closed by its verb; they are never emitted
                if in_scope and i > 0 and tokens[i - 1] in _CLOSER_SET:
                    in_scope = False
                i += 1
                continue
            if "_" in token:
                affirmed.extend(token.split("_"))
                in_scope = False
                i += 1
                continue
            n = _match(tokens, i, _TRIGGER_SET)
            if n:
                in_scope = True
                i += n
                continue
            if _match(tokens, i, _TERMINATOR_SET):
                in_scope = False
            (negated if in_scope else affirmed).append(token)
            i += 1
    return affirmed, negated
