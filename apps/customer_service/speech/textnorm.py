"""Inverse text normalisation for decoded speech: spoken numbers, amounts and dates -> written form.

ASR emits words ("four five six seven", "twelve pounds fifty", "the third of march nineteen
eighty five"); people and the PII detector want "4567", "£12.50", "3 March 1985". Every output
token remembers which source characters it came from (:func:`normalise_aligned`), so a detector
that works on the written form can still point at the spoken words (and their timestamps).

Rules, in the order tried at each position:
  1. dates: ORDINAL [of] MONTH [YEAR] | MONTH [the] ORDINAL [YEAR] -> "3 March 1985"
  2. digit runs: two or more digit words (zero/oh/one..nine, "double"/"triple" x) -> "4567"; "oh" is a zero
     only in a run that holds another digit ("four oh two one", "oh seven"): "oh oh" alone, or an "Oh,"
     set off by punctuation before the digits ("Oh, one more thing"), stays as said
  3. cardinals: "one hundred and twenty three" -> "123"; values below ten stay words unless an
     amount or percent follows ("one card" stays, "five pounds" -> "£5")
  4. amounts: NUMBER pounds|dollars|euros [and] [NUMBER pence|cents] -> "£12.50"; NUMBER pence -> "£0.50"
  5. percent: NUMBER percent|per cent -> "5%"
"""

from __future__ import annotations

import re
from dataclasses import dataclass

UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}
TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
SCALES = {"thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
DIGIT_WORDS = {"zero": "0", "oh": "0", "o": "0", "nought": "0", "one": "1", "two": "2", "three": "3", "four": "4",
               "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9"}
REPEAT = {"double": 2, "triple": 3}
ORDINAL_UNITS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
    "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13, "fourteenth": 14,
    "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18, "nineteenth": 19,
    "twentieth": 20, "thirtieth": 30,
}
MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december"]
# Written abbreviations (typed chat: "dob 12 Dec 1990"), read as the month they stand for.
MONTH_ABBREVIATIONS = {"jan": 0, "feb": 1, "mar": 2, "apr": 3, "jun": 5, "jul": 6, "aug": 7, "sep": 8, "sept": 8,
                       "oct": 9, "nov": 10, "dec": 11}
CURRENCY = {"pound": "£", "pounds": "£", "quid": "£", "dollar": "$", "dollars": "$", "euro": "€", "euros": "€"}
SUBUNIT = {"pence": 100, "penny": 100, "p": 100, "cent": 100, "cents": 100}

_TOKEN = re.compile(r"\S+")
_LEAD = re.compile(r"^[^\w£$€]+")  # punctuation before a word ("£" and "$" belong to an amount)
_TRAIL = re.compile(r"[^\w%]+$")  # after it ("%" belongs to a percentage)
_EDGE = re.compile(f"{_LEAD.pattern}|{_TRAIL.pattern}")
_OH = ("o", "oh")
_SENTENCE_END = re.compile(r"[.!?]['\")\]]*$")


@dataclass(frozen=True)
class Piece:
    """One output token and the source characters [start, end) it stands for."""

    text: str
    start: int
    end: int


@dataclass(frozen=True)
class _Tok:
    raw: str
    word: str  # lower-case, edge punctuation stripped: what the rules look at
    start: int
    end: int


def tokenize(text: str) -> list[_Tok]:
    return [_Tok(m.group(), _EDGE.sub("", m.group()).lower(), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def normalise(text: str) -> str:
    """Spoken-form numbers, amounts and dates in ``text`` rewritten in written form. Punctuation around
    a rewritten stretch stays with it ("(twelve pounds)." -> "(£12)."); inside it, it goes ("four, five" -> "45")."""
    out = []
    for p in normalise_aligned(text):
        source = text[p.start:p.end]
        if p.text != source:
            lead, trail = _LEAD.search(source), _TRAIL.search(source)
            out.append((lead.group() if lead else "") + p.text + (trail.group() if trail else ""))
        else:
            out.append(p.text)
    return " ".join(out)


def normalise_aligned(text: str, *, pii_reading: bool = False) -> list[Piece]:
    """:func:`normalise` as pieces that keep their source character offsets (a rewritten piece without
    the punctuation around it).

    ``pii_reading``: digit runs as the PII detector reads them, as many digits as were said: a run of "oh"s with
    no other digit ("oh oh oh oh") and an "Oh," set off by punctuation are zeros (it reads them only where a
    PIN, code or account is named: "my pin is oh oh oh oh"), and a run goes on across a sentence end (a
    recogniser that punctuates may put full stops between a card number's groups)."""
    toks = tokenize(text)
    words = [t.word for t in toks]  # once: rebuilt per token it made a long call's transcript quadratic
    out: list[Piece] = []
    digit_run = _digit_run_as_pii_reads if pii_reading else _digit_run
    i = 0
    while i < len(toks):
        for rule in (_date, digit_run, _number_phrase):
            hit = rule(toks, i, words)
            if hit is not None:
                written, j = hit
                out.append(Piece(written, toks[i].start, toks[j - 1].end))
                i = j
                break
        else:
            out.append(Piece(toks[i].raw, toks[i].start, toks[i].end))
            i += 1
    return out


# -- numbers -----------------------------------------------------------------------------------


def parse_cardinal(words: list[str], i: int) -> tuple[int, int] | None:
    """The cardinal starting at words[i] -> (value, index after it), or None.

    Accepts "a hundred", "one hundred and five", "twenty one thousand three hundred", digits "250".
    Stops where a new number would start ("five twenty" is two numbers).
    """
    if i < len(words) and re.fullmatch(r"\d+", words[i]):
        return int(words[i]), i + 1
    total, current, j, last = 0, 0, i, None  # last: kind of the previous token
    consumed = False
    while j < len(words):
        w = words[j]
        if w in UNITS and last not in ("unit", "teen"):
            v = UNITS[w]
            if last == "ten" and v >= 10:
                break
            current += v
            last = "teen" if v >= 10 else "unit"
        elif w in TENS and last in (None, "hundred", "scale", "and"):
            current += TENS[w]
            last = "ten"
        elif w == "a" and last is None and j + 1 < len(words) and words[j + 1] in ("hundred", "thousand", "million"):
            current, last = 1, "unit"
        elif w == "hundred" and last in ("unit", "teen") and current % 100 < 10 or w == "hundred" and last == "teen":
            current *= 100
            last = "hundred"
        elif w in SCALES and last in ("unit", "teen", "ten", "hundred"):
            total += max(current, 1) * SCALES[w]
            current, last = 0, "scale"
        elif w == "and" and last in ("hundred", "scale") and j + 1 < len(words) and (words[j + 1] in UNITS or words[j + 1] in TENS):
            last = "and"
        else:
            break
        consumed = True
        j += 1
    if not consumed or last == "and":
        return None
    return total + current, j


def _digit_run(toks: list[_Tok], i: int, words: list[str], *, pii_reading: bool = False) -> tuple[str, int] | None:
    """Two or more spoken digits ("four five", "double five", "oh seven") -> "45", "55", "07".

    "oh" ("o") is a zero only in a run with some other digit: "oh oh" alone is an exclamation, and an "Oh," with
    punctuation after it opens no run ("Oh, one more thing"). A run ends with its sentence ("Five, five. 8 of
    spades" is "55. 8 of spades"). ``pii_reading`` reads lone "oh"s as digits and runs across sentence ends."""
    digits, j, n_spoken, other = "", i, 0, False  # other: a digit that is no "oh" seen
    if not pii_reading and words[i] in _OH and _TRAIL.search(toks[i].raw):
        return None
    while j < len(toks):
        if j > i and not pii_reading and _SENTENCE_END.search(toks[j - 1].raw):
            break
        w = toks[j].word
        if w in REPEAT and j + 1 < len(toks) and toks[j + 1].word in DIGIT_WORDS:
            digits += DIGIT_WORDS[toks[j + 1].word] * REPEAT[w]
            n_spoken += REPEAT[w]
            other = other or toks[j + 1].word not in _OH
            j += 2
        elif w in DIGIT_WORDS and not (w in _OH and n_spoken == 0 and not _next_is_digit(toks, j)):
            digits += DIGIT_WORDS[w]
            n_spoken += 1
            other = other or w not in _OH
            j += 1
        elif re.fullmatch(r"\d+", w) and n_spoken:  # "four 5 6" mixes forms
            digits += w
            n_spoken += len(w)
            other = True
            j += 1
        else:
            break
    if not (other or pii_reading):
        return None
    if n_spoken >= 2 and j > i:
        # a trailing unit like "pounds" means the last word was an amount, not a digit string
        if j < len(toks) and (toks[j].word in CURRENCY or toks[j].word in SUBUNIT) and j - i == 2:
            return None
        return digits, j
    return None


def _digit_run_as_pii_reads(toks: list[_Tok], i: int, words: list[str]) -> tuple[str, int] | None:
    return _digit_run(toks, i, words, pii_reading=True)


def _next_is_digit(toks: list[_Tok], j: int) -> bool:
    return j + 1 < len(toks) and (toks[j + 1].word in DIGIT_WORDS or toks[j + 1].word in REPEAT)


def _number_phrase(toks: list[_Tok], i: int, words: list[str]) -> tuple[str, int] | None:
    if words[i] in ("a", "an") and i + 1 < len(words) and words[i + 1] in ("pound", "dollar", "euro", "quid"):
        value, j = 1, i + 1  # "a pound" -> £1
    else:
        parsed = parse_cardinal(words, i)
        if parsed is None:
            return None
        value, j = parsed
    if j < len(words) and words[j] in CURRENCY:
        symbol = CURRENCY[words[j]]
        j += 1
        cents = None
        k = j + 1 if j < len(words) and words[j] == "and" else j
        sub = parse_cardinal(words, k) if k < len(words) else None
        if sub is not None and sub[0] < 100:
            tail = sub[1]
            if tail < len(words) and words[tail] in SUBUNIT:
                cents, j = sub[0], tail + 1
            elif k == j:  # "twelve pounds fifty"
                cents, j = sub[0], tail
        return (f"{symbol}{value:,}" if cents is None else f"{symbol}{value:,}.{cents:02d}"), j
    if j < len(words) and words[j] in SUBUNIT and words[j] != "p" and value < 100:
        return f"£0.{value:02d}", j + 1
    if j < len(words) and words[j] == "percent":
        return f"{value}%", j + 1
    if j + 1 < len(words) and words[j] == "per" and words[j + 1] == "cent":
        return f"{value}%", j + 2
    if re.fullmatch(r"\d+", words[i]) or value < 10:
        return None  # already written, or a small number better left as a word
    return str(value), j


# -- dates -------------------------------------------------------------------------------------


def _parse_ordinal(words: list[str], i: int) -> tuple[int, int] | None:
    if i >= len(words):
        return None
    w = words[i]
    m = re.fullmatch(r"(\d{1,2})(st|nd|rd|th)", w)
    if m:
        return int(m.group(1)), i + 1
    if w in ORDINAL_UNITS:
        return ORDINAL_UNITS[w], i + 1
    if w in ("twenty", "thirty") and i + 1 < len(words) and words[i + 1] in ORDINAL_UNITS and ORDINAL_UNITS[words[i + 1]] < 10:
        return TENS[w] + ORDINAL_UNITS[words[i + 1]], i + 2
    return None


def _two_digit(words: list[str], i: int) -> tuple[int, int] | None:
    """10..99 spoken as one or two words ("eighty five", "twelve"), or "oh five" -> 5."""
    if i >= len(words):
        return None
    w = words[i]
    if w in ("oh", "o") and i + 1 < len(words) and words[i + 1] in UNITS and UNITS[words[i + 1]] < 10:
        return UNITS[words[i + 1]], i + 2
    if w in UNITS and UNITS[w] >= 10:
        return UNITS[w], i + 1
    if w in TENS:
        if i + 1 < len(words) and words[i + 1] in UNITS and 0 < UNITS[words[i + 1]] < 10:
            return TENS[w] + UNITS[words[i + 1]], i + 2
        return TENS[w], i + 1
    return None


def parse_year(words: list[str], i: int) -> tuple[int, int] | None:
    """'nineteen eighty five', 'twenty twenty four', 'two thousand and three', '1985' -> (year, next)."""
    if i >= len(words):
        return None
    if re.fullmatch(r"(19|20)\d\d", words[i]):
        return int(words[i]), i + 1
    if words[i] == "two" and i + 1 < len(words) and words[i + 1] == "thousand":
        parsed = parse_cardinal(words, i)
        if parsed and 2000 <= parsed[0] <= 2099:
            return parsed
        return None
    hi = _two_digit(words, i)
    if hi is None or hi[0] not in (19, 20):
        return None
    if hi[1] < len(words) and words[hi[1]] == "hundred":
        return hi[0] * 100, hi[1] + 1
    lo = _two_digit(words, hi[1])
    if lo is None:
        return None
    return hi[0] * 100 + lo[0], lo[1]


def _month(word: str) -> int | None:
    """0-based month of a month name or its written abbreviation ("dec", "sept"), else None."""
    if word in MONTHS:
        return MONTHS.index(word)
    return MONTH_ABBREVIATIONS.get(word)


def _date(toks: list[_Tok], i: int, words: list[str]) -> tuple[str, int] | None:
    k = i + 1 if words[i] == "the" else i
    ordinal = _parse_ordinal(words, k)
    # a written day without a suffix ("3 March 1985", the usual typed form) is a day only before a month;
    # before "may" only with a year after it ("the 3 may be late" is no date)
    numeral = ordinal is None and k < len(words) and re.fullmatch(r"\d{1,2}", words[k]) is not None
    if numeral:
        ordinal = (int(words[k]), k + 1)
    if ordinal is not None:
        day, j = ordinal
        if j < len(words) and words[j] == "of":
            j += 1
        month = _month(words[j]) if j < len(words) else None
        if month is None or not 1 <= day <= 31:
            return None
        if numeral and words[j] == "may" and parse_year(words, j + 1) is None:
            return None
        return _format_date(day, month, words, j + 1)
    month = _month(words[i])
    if month is not None and words[i] != "may":  # "may" is mostly the verb; "the third of may" still works
        j = i + 1
        if j < len(words) and words[j] == "the":
            j += 1
        ordinal = _parse_ordinal(words, j)
        if ordinal is None and j < len(words) and re.fullmatch(r"\d{1,2}", words[j]):
            ordinal = (int(words[j]), j + 1)
        if ordinal is not None and 1 <= ordinal[0] <= 31:
            return _format_date(ordinal[0], month, words, ordinal[1])
    return None


def _format_date(day: int, month: int, words: list[str], j: int) -> tuple[str, int]:
    name = MONTHS[month].capitalize()
    year = parse_year(words, j)
    if year is not None:
        return f"{day} {name} {year[0]}", year[1]
    return f"{day} {name}", j
