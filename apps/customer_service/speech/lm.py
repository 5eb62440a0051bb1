"""The bank-domain language model: corpus assembly and a trigram ARPA built from it.

Corpus = BANKING77 train queries + NLU++ banking utterances (both PolyAI, CC BY 4.0, read from
their original layout) + our own call phrases (``datasets/customer_service/asr/call_phrases.txt``)
whose {DIGITS}/{AMOUNT}/{DATE}/{NAME} slots are filled with random spoken values, so that the LM
knows how card numbers, amounts and dates are read out. Text is put in spoken form first
("£20" -> "twenty pounds") because that is what the recogniser hears.

About 2% of BANKING77 (chosen by a hash of the text, see :func:`is_heldout`) never enters the
LM: it is the held-out set on which generic vs bank vs interpolated LMs are measured.

Build (about a second; the shipped file is ``resources/bank.lm``)::

    python -m apps.customer_service.speech.lm --banking77 ../shared/data/banking77
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from pathlib import Path

from apps.customer_service.speech.textnorm import MONTHS

RESOURCES = Path(__file__).resolve().parent / "resources"
BANK_LM = RESOURCES / "bank.lm"
BANK_DICT = RESOURCES / "bank.dict"  # pronunciations of bank words missing from the CMU dictionary
REPO_ROOT = Path(__file__).resolve().parents[3]
CALL_PHRASES = REPO_ROOT / "datasets" / "customer_service" / "asr" / "call_phrases.txt"

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_ORD = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth", "nine": "ninth",
        "twelve": "twelfth"}
_CURRENCY = {"£": "pounds", "$": "dollars", "€": "euros"}
# Frequent BANKING77 spellings the dictionary lacks, as the caller would say them
_RESPELL = {
    "dont": "don't", "didnt": "didn't", "thats": "that's", "isnt": "isn't", "ive": "i've", "havent": "haven't",
    "hasnt": "hasn't", "doesnt": "doesn't", "couldnt": "couldn't", "wasnt": "wasn't", "shouldnt": "shouldn't",
    "wheres": "where's", "cant": "can't", "wont": "won't", "im": "i'm", "havn't": "haven't", "gbp": "pounds",
    "usd": "dollars", "eur": "euros", "withdrawl": "withdrawal", "recieve": "receive", "payed": "paid",
    "adress": "address", "transcation": "transaction", "transation": "transaction", "pls": "please",
    "apr": "a p r", "checque": "cheque", "beneficiery": "beneficiary", "tranferred": "transferred",
}
_NAMES = ["sarah", "james", "emma", "david", "olivia", "michael", "sophie", "daniel", "laura", "tom"]


def number_to_words(n: int) -> str:
    """0 <= n < 10**9 in British spoken form ("one hundred and five")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_to_words(rest))
    for scale, name in ((1_000_000, "million"), (1_000, "thousand")):
        if n >= scale:
            rest = n % scale
            tail = "" if rest == 0 else (" and " if rest < 100 else " ") + number_to_words(rest)
            return number_to_words(n // scale) + " " + name + tail
    raise ValueError(n)


def ordinal_words(n: int) -> str:
    words = number_to_words(n).split()
    last = words[-1]
    if last in _ORD:
        words[-1] = _ORD[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def year_words(year: int) -> str:
    if 2000 <= year < 2010:
        return "two thousand" + ("" if year == 2000 else " and " + _ONES[year % 10])
    hi, lo = divmod(year, 100)
    if lo == 0:
        return number_to_words(hi) + " hundred"
    return number_to_words(hi) + " " + (("oh " + _ONES[lo]) if lo < 10 else number_to_words(lo))


def _money(symbol: str, amount: str) -> str:
    whole, _, frac = amount.replace(",", "").partition(".")
    words = f"{number_to_words(int(whole))} {_CURRENCY[symbol]}" if whole else ""
    if frac and int(frac):
        words += f" {number_to_words(int(frac[:2].ljust(2, '0')))}"
    return words


def spoken_form(text: str) -> str:
    """Lower-case words as a caller would say them: currency, numbers, symbols spelled out."""
    t = text.lower().replace("&", " and ").replace("%", " percent ").replace("’", "'")
    t = re.sub(r"([£$€])\s?(\d[\d,]*(?:\.\d+)?)", lambda m: " " + _money(m.group(1), m.group(2)) + " ", t)
    t = re.sub(r"(\d[\d,]*(?:\.\d+)?)\s?(?:gbp|pounds?)\b", lambda m: " " + _money("£", m.group(1)) + " ", t)
    t = re.sub(r"(\d[\d,]*(?:\.\d+)?)\s?(?:usd|dollars?)\b", lambda m: " " + _money("$", m.group(1)) + " ", t)
    t = re.sub(r"(\d[\d,]*(?:\.\d+)?)\s?(?:eur|euros?)\b", lambda m: " " + _money("€", m.group(1)) + " ", t)
    t = re.sub(r"\b(\d{1,2})(st|nd|rd|th)\b", lambda m: " " + ordinal_words(int(m.group(1))) + " ", t)

    def num(m: re.Match[str]) -> str:
        digits = m.group().replace(",", "")
        if len(digits) > 6 or (len(digits) > 1 and digits[0] == "0"):
            return " " + " ".join(_ONES[int(d)] for d in digits) + " "  # read digit by digit
        return " " + number_to_words(int(digits)) + " "

    t = re.sub(r"\d[\d,]*", num, t)
    t = re.sub(r"(?<=\w)-(?=\w)", " ", t)
    t = re.sub(r"[^a-z' ]+", " ", t)
    t = re.sub(r"(^|\s)'+|'+(\s|$)", " ", t)
    return " ".join(_RESPELL.get(w, w) for w in t.split())


def is_heldout(text: str) -> bool:
    """The ~2% of BANKING77 kept out of the LM to measure it on."""
    return int(hashlib.sha1(text.strip().encode()).hexdigest(), 16) % 50 == 0


def read_banking77(root: Path) -> list[str]:
    with open(Path(root) / "train.csv", newline="", encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f)]


def read_nlupp(root: Path) -> list[str]:
    texts = []
    for path in sorted((Path(root) / "nlupp_banking").glob("fold*.json")):
        texts += [ex["text"] for ex in json.loads(path.read_text()) if ex.get("text")]
    return texts


def _random_slot(kind: str, rng: random.Random) -> str:
    if kind == "DIGITS":
        n = rng.choice([4, 6, 8, 11, 16])
        return " ".join(_ONES[rng.randrange(10)] for _ in range(n))
    if kind == "AMOUNT":
        value = rng.choice([rng.randrange(1, 20), rng.randrange(20, 1000), rng.randrange(1000, 20000)])
        cur = rng.choice(["pounds", "pounds", "euros", "dollars"])
        pence = rng.choice(["", "", f" {number_to_words(rng.randrange(1, 99))}", f" and {number_to_words(rng.randrange(1, 99))} pence"])
        return f"{number_to_words(value)} {cur}{pence if cur == 'pounds' else ''}"
    if kind == "DATE":
        day, month, year = rng.randrange(1, 29), rng.choice(MONTHS), rng.randrange(1940, 2026)
        if rng.random() < 0.5:
            return f"the {ordinal_words(day)} of {month} {year_words(year)}"
        return f"{month} the {ordinal_words(day)} {year_words(year)}"
    if kind == "NAME":
        return rng.choice(_NAMES)
    raise KeyError(kind)


def call_phrases(path: Path = CALL_PHRASES, *, copies: int = 20, seed: int = 0) -> list[str]:
    """Our call phrases, each templated line filled ``copies`` times with random spoken values."""
    rng = random.Random(seed)
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        n = copies if "{" in line else 1
        for _ in range(n):
            out.append(re.sub(r"\{(\w+)\}", lambda m: _random_slot(m.group(1), rng), line))
    return out


def assemble_bank_corpus(banking77: Path | None, phrases: Path = CALL_PHRASES) -> list[str]:
    """Spoken-form sentences: BANKING77 (minus the held-out rows) + NLU++ + call phrases."""
    texts: list[str] = []
    if banking77 is not None:
        texts += [t for t in read_banking77(banking77) if not is_heldout(t)]
        texts += read_nlupp(banking77)
    texts += call_phrases(phrases)
    return [s for s in (spoken_form(t) for t in texts) if s]


def load_dictionary_words(dict_paths: list[Path] | None = None) -> set[str]:
    """Words the decoder can emit: the wheel's CMU dictionary plus our bank words (resources/bank.dict)."""
    if dict_paths is None:
        from pocketsphinx import get_model_path

        dict_paths = [Path(get_model_path()) / "en-us" / "cmudict-en-us.dict", BANK_DICT]
    words = set()
    for path in dict_paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                word = line.split(" ", 1)[0]
                words.add(word.split("(", 1)[0])
    return words


def in_vocabulary(sentences: list[str], vocab: set[str]) -> tuple[list[str], dict[str, int]]:
    """Sentences cut at out-of-dictionary words (the decoder cannot emit them) and the OOV counts."""
    kept, oov = [], {}
    for sentence in sentences:
        piece: list[str] = []
        for w in sentence.split():
            if w in vocab:
                piece.append(w)
            else:
                oov[w] = oov.get(w, 0) + 1
                if piece:
                    kept.append(" ".join(piece))
                piece = []
        if piece:
            kept.append(" ".join(piece))
    return kept, oov


def build_arpa(sentences: list[str], out_path: Path, *, discount_mass: float = 0.5) -> dict[str, int]:
    """A Katz-style trigram with fixed discount (pocketsphinx's ArpaBoLM), <s>/</s> added."""
    from pocketsphinx.lm import ArpaBoLM

    lm = ArpaBoLM(text="\n".join(sentences), add_start=True, discount_mass=discount_mass)
    lm.compute()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        lm.write(f)
    return {"unigrams": lm.count_1, "bigrams": lm.count_2, "trigrams": lm.count_3, "sentences": len(sentences)}


def build_bank_lm(banking77: Path | None, out_path: Path = BANK_LM, phrases: Path = CALL_PHRASES) -> dict[str, int]:
    vocab = load_dictionary_words()
    sentences, oov = in_vocabulary(assemble_bank_corpus(banking77, phrases), vocab)
    stats = build_arpa(sentences, out_path)
    stats["oov_types"] = len(oov)
    stats["oov_tokens"] = sum(oov.values())
    return stats


def heldout_sentences(banking77: Path) -> list[str]:
    """The BANKING77 rows the shipped LM never saw, original spelling."""
    return [t for t in read_banking77(banking77) if is_heldout(t)]


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Build the bank-domain trigram LM (ARPA).")
    parser.add_argument("--banking77", type=Path, default=None, help="shared/data/banking77 (original layout)")
    parser.add_argument("--phrases", type=Path, default=CALL_PHRASES)
    parser.add_argument("--out", type=Path, default=BANK_LM)
    args = parser.parse_args(argv)
    print(json.dumps(build_bank_lm(args.banking77, args.out, args.phrases)))


if __name__ == "__main__":
    main()
