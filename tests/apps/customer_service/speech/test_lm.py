"""The bank LM: spoken-form corpus text, the ARPA builder, the shipped model."""

from __future__ import annotations

import pytest

from apps.customer_service.speech import lm


@pytest.mark.parametrize("text,spoken", [
    ("I paid £20.50 for 3 items", "i paid twenty pounds fifty for three items"),
    ("Why's my top-up taking 3-5 days?", "why's my top up taking three five days"),
    ("dont know, 100 USD", "don't know one hundred dollars"),
    ("on the 21st", "on the twenty first"),
    ("code 0044", "code zero zero four four"),
])
def test_spoken_form(text, spoken):
    assert lm.spoken_form(text) == spoken


def test_number_words():
    assert lm.number_to_words(105) == "one hundred and five"
    assert lm.number_to_words(2_300_017) == "two million three hundred thousand and seventeen"
    assert lm.ordinal_words(22) == "twenty second" and lm.ordinal_words(30) == "thirtieth"
    assert lm.year_words(1985) == "nineteen eighty five" and lm.year_words(2007) == "two thousand and seven"


def test_call_phrases_fill_every_slot():
    phrases = lm.call_phrases(copies=2)
    assert len(phrases) > 100 and not any("{" in p for p in phrases)


def test_heldout_split_is_stable_and_small():
    texts = [f"query number {i}" for i in range(5000)]
    held = [t for t in texts if lm.is_heldout(t)]
    assert 0.01 < len(held) / len(texts) < 0.03
    assert held == [t for t in texts if lm.is_heldout(t)]


def test_build_arpa_and_decode_with_it(tmp_path):
    from pocketsphinx import Decoder, NGramModel

    sentences, oov = lm.in_vocabulary(["my card is lost", "my card is blocked", "zzqx card"], lm.load_dictionary_words())
    assert oov == {"zzqx": 1} and "card" in sentences
    stats = lm.build_arpa(sentences, tmp_path / "t.lm")
    assert stats["unigrams"] >= 5 and stats["trigrams"] >= 2
    dec = Decoder(lm=None, loglevel="FATAL")
    model = NGramModel(dec.config, dec.logmath, str(tmp_path / "t.lm"))
    # P(card | my) seen in training beats P(lost | my) never seen
    assert model.prob(["card", "my"]) > model.prob(["lost", "my"])


def test_shipped_lm_and_dictionary_exist():
    assert lm.BANK_LM.is_file() and lm.BANK_LM.stat().st_size < 5_000_000
    words = lm.load_dictionary_words([lm.BANK_DICT])
    assert {"unblock", "topup", "passcode"} <= words
