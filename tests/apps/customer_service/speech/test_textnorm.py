"""Inverse normalisation: spoken numbers, amounts, dates -> written form, with source offsets."""

from __future__ import annotations

import pytest

from apps.customer_service.speech.textnorm import normalise, normalise_aligned, parse_cardinal, parse_year


@pytest.mark.parametrize("spoken,written", [
    ("my card number is four five three two double one seven eight", "my card number is 45321178"),
    ("i want to send twelve pounds fifty to my mum", "i want to send £12.50 to my mum"),
    ("one hundred and twenty three", "123"),
    ("three hundred thousand euros", "€300,000"),
    ("fifty pence", "£0.50"),
    ("a pound", "£1"),
    ("twenty dollars and five cents", "$20.05"),
    ("five percent", "5%"),
    ("born on the third of march nineteen eighty five", "born on 3 March 1985"),
    ("march the twenty first twenty twenty four", "21 March 2024"),
    ("first of may two thousand and three", "1 May 2003"),
    ("dob 12th Dec 1990", "dob 12 December 1990"),
    ("oh seven seven double oh nine", "077009"),
    ("forty five thirty two", "45 32"),
    # left alone: small numbers, ordinals outside dates, the verb "may"
    ("i have one card", "i have one card"),
    ("the second time", "the second time"),
    ("may i ask", "may i ask"),
    ("", ""),
])
def test_normalise(spoken, written):
    assert normalise(spoken) == written


def test_pieces_point_at_their_source():
    text = "send twelve pounds fifty today"
    pieces = normalise_aligned(text)
    amount = next(p for p in pieces if p.text == "£12.50")
    assert text[amount.start:amount.end] == "twelve pounds fifty"
    assert [p.text for p in pieces] == ["send", "£12.50", "today"]


def test_a_typed_date_is_one_piece():
    """"3 March 1985" as typed is a date (one piece, as the spoken form is), so PII rules can see it."""
    assert [p.text for p in normalise_aligned("born 3 March 1985 in Leeds")] == ["born", "3 March 1985", "in", "Leeds"]
    assert [p.text for p in normalise_aligned("the 3 may be late")] == ["the", "3", "may", "be", "late"]


def test_parsers():
    assert parse_cardinal(["two", "thousand", "and", "five"], 0) == (2005, 4)
    assert parse_cardinal(["five", "twenty"], 0) == (5, 1)  # two numbers, not one
    assert parse_cardinal(["hello"], 0) is None
    assert parse_year(["nineteen", "oh", "five"], 0) == (1905, 3)
    assert parse_year(["twenty", "twenty"], 0) == (2020, 2)
    assert parse_year(["seventeen"], 0) is None


def test_a_long_call_is_normalised_in_linear_time():
    """An hour's transcript (~20,000 words) in well under a second or two: the rules once rebuilt the
    word list at every token, so time grew with the square of the length (~25 s here)."""
    import time

    from apps.customer_service.speech.textnorm import normalise_aligned

    sentence = "on the third of march I paid twenty five pounds to four five six seven and called back "
    text = sentence * 1200
    started = time.perf_counter()
    pieces = normalise_aligned(text)
    assert time.perf_counter() - started < 3.0
    assert len(pieces) == 12_000 and [p.text for p in pieces[:10]] == [
        "on", "3 March", "I", "paid", "£25", "to", "4567", "and", "called", "back"]
    assert sum(p.text == "£25" for p in pieces) == 1200


@pytest.mark.parametrize("spoken,written", [
    # "oh" is a zero only in a run with another digit
    ("oh oh I think I lost my card", "oh oh I think I lost my card"),
    ("oh oh", "oh oh"),
    ("oh oh oh", "oh oh oh"),
    ("Oh oh, that's bad", "Oh oh, that's bad"),
    ("Oh, one more thing", "Oh, one more thing"),  # an "Oh," set off by punctuation opens no number
    ("Oh. One two three", "Oh. 123"),
    ("four oh two one", "4021"),
    ("oh one two three", "0123"),
    ("oh oh seven", "007"),
    ("one two oh", "120"),
    ("three zero one oh, nine nine oh three", "30109903"),  # inside a run an "oh," is still a digit
])
def test_oh_is_a_zero_only_among_other_digits(spoken, written):
    assert normalise(spoken) == written


@pytest.mark.parametrize("spoken,written", [
    ("I paid twelve pounds.", "I paid £12."),
    ("It was (twelve pounds), right?", "It was (£12), right?"),
    ("call four five six seven, please", "call 4567, please"),
    ("four, five, six.", "456."),  # punctuation inside a rewritten stretch goes, around it stays
    ("born on the third of march nineteen eighty five!", "born on 3 March 1985!"),
    ("Twenty percent?", "20%?"),
])
def test_punctuation_around_a_rewritten_stretch_stays(spoken, written):
    assert normalise(spoken) == written


def test_pieces_carry_no_punctuation_and_the_pii_reading_on_request():
    """The PII detector reads the pieces: a rewritten piece is the written form alone, and with pii_reading a run
    of "oh"s is zeros (a PIN of zeros is read only where a PIN is named)."""
    text = "it was twelve pounds."
    amount = normalise_aligned(text)[-1]
    assert amount.text == "£12" and text[amount.start:amount.end] == "twelve pounds."
    assert [p.text for p in normalise_aligned("my pin is oh oh oh oh")] == ["my", "pin", "is", "oh", "oh", "oh", "oh"]
    assert [p.text for p in normalise_aligned("my pin is oh oh oh oh", pii_reading=True)] == ["my", "pin", "is", "0000"]
    assert [p.text for p in normalise_aligned("Oh, one two", pii_reading=True)] == ["012"]


def test_a_digit_run_ends_with_its_sentence_except_in_the_pii_reading():
    """Whisper punctuates: "Five, five. 8 of spades" was written "558 of spades"."""
    assert normalise("Five, five. 8 of spades") == "55. 8 of spades"
    assert normalise("four five six seven. Thanks") == "4567. Thanks"
    assert normalise("it is four five six.") == "it is 456."
    pieces = normalise_aligned("four five six seven. eight nine zero one.", pii_reading=True)
    assert [p.text for p in pieces] == ["45678901"]
