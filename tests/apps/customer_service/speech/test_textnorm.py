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
