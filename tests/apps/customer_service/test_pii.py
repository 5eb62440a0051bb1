"""PII redaction: each type written and spoken, hard negatives, offsets, audio silencing, corpus scores."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest

from apps.customer_service.pii import (
    CORPUS,
    TYPES,
    evaluate_pii,
    find_pii,
    iban_ok,
    luhn_ok,
    ni_prefix_ok,
    redact,
    redact_audio,
    redact_words,
    ssn_ok,
)
from apps.customer_service.speech.asr import Word

HELDOUT = CORPUS.with_name("pii_heldout.jsonl")


def test_luhn_and_iban_checks():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and not iban_ok("GB00 WEST 1234 5698 7654 32")


@pytest.mark.parametrize("text,kind,value", [
    ("my card is 4111 1111 1111 1111 ok", "card", "4111 1111 1111 1111"),
    ("card four one one one one one one one one one one one one one one one",
     "card", "four one one one one one one one one one one one one one one one"),
    ("my iban is GB82 WEST 1234 5698 7654 32", "iban", "GB82 WEST 1234 5698 7654 32"),
    ("sort code 20-00-00", "account", "20-00-00"),
    ("my account number is one two three four five six seven eight", "account",
     "one two three four five six seven eight"),
    ("call me on 07700 900123", "phone", "07700 900123"),
    ("it is john dot smith at gmail dot com", "email", "john dot smith at gmail dot com"),
    ("mail me at a.b@example.org", "email", "a.b@example.org"),
    ("I was born on the third of march nineteen eighty five", "dob", "the third of march nineteen eighty five"),
])
def test_each_type_is_found_with_offsets(text, kind, value):
    spans = find_pii(text)
    assert [(s.type, text[s.start:s.end]) for s in spans] == [(kind, value)]


@pytest.mark.parametrize("text", [
    "order reference 1234567890123456 from the shop",  # 16 digits, Luhn-invalid, no card word
    "the payment on the third of march two thousand and twenty four",  # a date, not a birth date
    "I sent £1,250 and then 45 pounds",
    "my card ending 4467 was used",  # last four digits are not PII
    "we met at home at five",
    "GB00 WEST 1234 5698 7654 32",  # bad IBAN checksum
])
def test_hard_negatives_stay(text):
    assert find_pii(text) == []
    assert redact(text).text == text


def test_redaction_text_and_map():
    text = "card 4111 1111 1111 1111 and email a@b.com"
    result = redact(text)
    assert result.text == "card [CARD] and email [EMAIL]"
    assert [(r.type, text[r.start:r.end]) for r in result.redactions] == [("card", "4111 1111 1111 1111"), ("email", "a@b.com")]
    assert "4111" not in str(result.to_dict()["redactions"])  # the map holds no values


@pytest.mark.parametrize("text,redacted", [
    # recogniser output for espeak-ng reading Luhn-valid numbers: a misheard word splits the digits
    ("my card number is four five three nine one four a say zero three four three six four six seven",
     "my card number is [CARD] a say [CARD]"),
    ("my card number is three zero six zero want to say they four seven seven nine three six one five",
     "my card number is [CARD] want to say they [CARD]"),
    ("my card number is five eight six a day zero nine one eight nine one six three four a through",
     "my card number is [CARD] a day [CARD] a through"),
    # ...but written amounts and announced accounts near "card" are not card fragments
    ("the card cost 1500 and my account is 12345678", "the card cost 1500 and my account is [ACCOUNT]"),
    ("my card ending four four six seven was used", "my card ending four four six seven was used"),
])
def test_card_split_by_a_recognition_error_is_still_hidden(text, redacted):
    assert redact(text).text == redacted


@pytest.mark.parametrize("text,redacted", [
    # the live stream's recognition of a card read out by espeak-ng: "card" heard, then garbled words
    ("that card i'm where is for what will you what one one will you what one one one one one one one one please",
     "that card i'm where is for what will you what one one will you what [ACCOUNT] please"),
    ("it is two four six eight one three five seven thanks", "it is [ACCOUNT] thanks"),
    # shorter spoken runs and numbers said as numbers stay
    ("my reference is one two three four five six seven", "my reference is one two three four five six seven"),
    ("i paid one thousand two hundred pounds in twenty twenty four", "i paid one thousand two hundred pounds in twenty twenty four"),
])
def test_long_runs_of_spoken_digits_are_identifiers(text, redacted):
    assert redact(text).text == redacted


def test_words_and_audio_redaction():
    words = [Word(w, 0.5 * i, 0.5 * i + 0.4, 0.9) for i, w in enumerate(
        ["my", "card", "is", "four", "one", "one", "one", "one", "one", "one", "one", "one", "one", "one", "one", "one", "one", "one", "one", "thanks"])]
    result, hit = redact_words(words)
    assert result.text == "my card is [CARD] thanks"
    assert hit == list(range(3, 19))
    rate = 1000
    audio = np.ones(int(rate * 10), dtype=np.float32)
    out = redact_audio(audio, rate, words, hit, pad_s=0.0)
    assert out[int(1.2 * rate)] == 1.0  # "is"
    assert np.all(out[int(1.5 * rate):int(9.4 * rate)][100:-100] == 0.0)  # the digits, gaps included
    assert out[int(9.7 * rate)] == 1.0  # "thanks"
    assert np.all(audio == 1.0)  # input untouched


@pytest.mark.parametrize("text,kind,value", [
    # dates of birth as they are typed: a plain day, an abbreviated month
    ("my date of birth is 3 March 1985", "dob", "3 March 1985"),
    ("I was born on 12 December 1990.", "dob", "12 December 1990"),
    ("born 03/03/1985, phone me", "dob", "03/03/1985"),
    ("dob: 12th Dec 1990", "dob", "12th Dec 1990"),
    ("born on the 1st of Jan 2001", "dob", "the 1st of Jan 2001"),
    ("my dob is 3rd of march 85", "dob", "3rd of march 85"),  # a two-digit year
    ("birth date: 03-Mar-1985", "dob", "03-Mar-1985"),
    ("my birthday is the fifth of november", "dob", "the fifth of november"),  # no year: still the birthday
    # an IBAN followed by a word, or typed in lower case
    ("IBAN: GB82 WEST 1234 5698 7654 32 OK", "iban", "GB82 WEST 1234 5698 7654 32"),
    ("send it to GB82WEST12345698765432 A B", "iban", "GB82WEST12345698765432"),
    ("my iban is gb82 west 1234 5698 7654 32 thanks", "iban", "gb82 west 1234 5698 7654 32"),
    # a phone number dialled with 00 for the +
    ("tel. 0044 7700 900123", "phone", "0044 7700 900123"),
    # a sort code written before the account number, no "sort code" said
    ("Account: 12-34-56 78901234", "account", "12-34-56 78901234"),
    # an address with written dots but a spoken "at"; a year-first date with slashes
    ("my email is john.smith at gmail.com", "email", "john.smith at gmail.com"),
    ("dob 1985/03/03", "dob", "1985/03/03"),
    ("card 4539\u20131488\u20130343\u20136467 please", "card", "4539\u20131488\u20130343\u20136467"),  # en dashes
    ("my card is 4539\u00a01488\u00a00343\u00a06467.", "card", "4539\u00a01488\u00a00343\u00a06467"),  # no-break spaces
    ("call 07700\u2013900123", "phone", "07700\u2013900123"),
])
def test_realistic_phrasings_are_found(text, kind, value):
    assert [(s.type, text[s.start:s.end]) for s in find_pii(text)] == [(kind, value)]


@pytest.mark.parametrize("text", [
    "the 3 may be late",  # a day-like number before the verb "may"
    "I paid 12 December 1990 no wait",  # a date, no birth word
    "ab12 cdef ghij klmn opqr stuv",  # IBAN-shaped words without a valid checksum
    "I shopped at amazon.com",  # "at <domain>" after a verb is no address
    "I opened my account on 12-03-85",  # dd-dd-dd near "account" but no account number after it: a date
    "from 10\u201312 March I was away",  # an en-dash range of days
])
def test_realistic_negatives_stay(text):
    assert find_pii(text) == []


def test_corpus_scores_per_type():
    scores = evaluate_pii(CORPUS)
    assert scores["card_support"] >= 150
    assert scores["card_recall"] >= 0.99  # the brief's target
    for t in TYPES:
        assert scores[f"{t}_support"] > 0
        assert scores[f"{t}_recall"] >= 0.9 and scores[f"{t}_precision"] >= 0.9
    held = evaluate_pii(HELDOUT)
    assert held["sentences"] >= 25 and held["micro_precision"] >= 0.9
    security = evaluate_pii(HELDOUT.with_name("pii_heldout_security.jsonl"))  # written before its rules
    assert security["cvv_recall"] == security["expiry_recall"] == 1.0 and security["micro_precision"] == 1.0
    # written before the credential rules; first score credential 7/8 (", it's pineapple"), cvv 0/1 (the code's
    # name 9 words back), precision 1.0; both fixed with development examples of their own, then measured 1.0
    credentials = evaluate_pii(HELDOUT.with_name("pii_heldout_credentials.jsonl"))
    assert credentials["sentences"] >= 12 and credentials["credential_support"] >= 6
    assert credentials["credential_recall"] == credentials["micro_recall"] == credentials["micro_precision"] == 1.0
    # written and committed before the national_id rules; first score 1.0 / 1.0 (9 NI and SSN numbers, 7 look-alikes)
    national = evaluate_pii(HELDOUT.with_name("pii_heldout_national_id.jsonl"))
    assert national["sentences"] >= 14 and national["national_id_support"] >= 8
    assert national["national_id_recall"] == national["national_id_precision"] == national["micro_precision"] == 1.0
    assert national["micro_recall"] == 1.0
    # written and committed before the rules for passphrases of several words, codes said to have come in a text with
    # no "code" said, and 3-digit one-time codes; first score credential 0/15 (4 passphrases redacted only their first
    # word), cvv 0/1 ("the three digits on the back"), precision 1.0, none of its 12 look-alikes redacted
    secrets = evaluate_pii(HELDOUT.with_name("pii_heldout_secrets.jsonl"))
    assert secrets["sentences"] >= 24 and secrets["credential_support"] >= 12
    assert secrets["credential_recall"] == secrets["cvv_recall"] == secrets["micro_precision"] == 1.0
    # written and committed before the rules for a qualifier between a secret's name and its link ("my password for the
    # mobile app is ..."), 3-digit PINs and digits a text held ("a text with 7 1 4 6 in it"); first score credential
    # 0/16 (none predicted), cvv 1/1, precision 1.0, none of its 13 look-alikes redacted
    secrets2 = evaluate_pii(HELDOUT.with_name("pii_heldout_secrets2.jsonl"))
    assert secrets2["sentences"] >= 26 and secrets2["credential_support"] >= 14
    assert secrets2["credential_recall"] == secrets2["cvv_recall"] == secrets2["micro_precision"] == 1.0
    # session 20, third round: written and committed (b97fa21) before the rules for a description after the link, a
    # secret with no link word, a partial PIN, a qualifier holding digits and codes in an e-mail; first score credential
    # 4/14 (0.286), precision 1.0, none of its 11 look-alikes redacted
    secrets3 = evaluate_pii(HELDOUT.with_name("pii_heldout_secrets3.jsonl"))
    assert secrets3["sentences"] >= 25 and secrets3["credential_support"] >= 14
    assert secrets3["credential_recall"] == secrets3["micro_precision"] == 1.0
    # round 4: written and committed (755c4b9) before the rules for a password said in words with no link word, a second
    # part of a PIN after "and", a lone digit word, passphrases of more than 8 words, a code the caller got or received
    # and words after a "has been" secret; first score credential 7/25 (0.28), precision 10/11 ("the password v3 page")
    secrets4 = evaluate_pii(HELDOUT.with_name("pii_heldout_secrets4.jsonl"))
    assert secrets4["sentences"] >= 30 and secrets4["credential_support"] >= 20
    assert secrets4["credential_recall"] == secrets4["account_recall"] == secrets4["micro_precision"] == 1.0


@pytest.mark.parametrize(("words", "types"), [
    ("and the security code is seven three nine", ["cvv"]),
    ("card four five three nine one four eight eight zero three four three six four six seven expiry oh nine two eight "
     "and the cvv is one two three", ["card", "expiry", "cvv"]),
    ("the security deposit is five hundred", []),
])
def test_a_card_read_out_with_its_expiry_and_security_code_leaves_none_of_them(words, types):
    """PCI DSS: the security code may never be stored after authorisation, the expiry not beside the
    number; a caller paying by phone reads all three, in words."""
    result, hit = redact_words([SimpleNamespace(text=w) for w in words.split()])
    assert [r.type for r in result.redactions] == types
    assert not any(d in result.text for d in ("seven three nine", "one two three", "oh nine two eight"))


def test_many_digit_runs_before_a_card_take_linear_time():
    """A chain of short digit runs before a card run was marked one run per pass over all pairs (cubic):
    600 of them took about ten seconds, a 20,000-character text minutes."""
    import time

    text = "a one two three " * 600 + "card four five three nine one four eight eight zero three four three six four six seven"
    t0 = time.perf_counter()
    spans = find_pii(text)
    assert time.perf_counter() - t0 < 3.0
    assert len(spans) == 601 and {s.type for s in spans} == {"card"}


@pytest.mark.parametrize(("text", "found"), [
    # PINs, passcodes and codes sent to the caller, typed and as the recogniser writes them
    ("my pin is one two three four", [("credential", "one two three four")]),
    ("PIN: 5831", [("credential", "5831")]),
    ("my telephone banking passcode is double oh seven one", [("credential", "double oh seven one")]),
    ("the code you texted me is 4 8 2 9 1 7", [("credential", "4 8 2 9 1 7")]),
    ("one time code nine oh four four one two", [("credential", "nine oh four four one two")]),
    ("my pin, it's 3 3 0 8", [("credential", "3 3 0 8")]),
    # passwords and memorable words: the word, or the letters spelled out
    ("my memorable word is giraffe", [("credential", "giraffe")]),
    ("password: Tr0ub4dor&3 thanks", [("credential", "Tr0ub4dor&3")]),
    ("my memorable word is g i r a f f e", [("credential", "g i r a f f e")]),
    # with cvv: the card's code stays cvv; a code sent by text or an app is a credential, 3 digits or 6
    ("the security code on the back is four five six", [("cvv", "four five six")]),
    ("the security code on the back of the card is 4 1 2", [("cvv", "4 1 2")]),
    ("the verification code you sent by text is four four two one", [("credential", "four four two one")]),
    ("verification code 482913 was sent by text", [("credential", "482913")]),
    # a card read out, then its PIN: both, each its own type (the PIN is no fragment of the card)
    ("card 4111 1111 1111 1111 and my pin is four four oh nine",
     [("card", "4111 1111 1111 1111"), ("credential", "four four oh nine")]),
    # look-alikes: no value, a count, an amount, a year, another kind of code, a word that is no password
    ("what is the pin number for the branch", []),
    ("I forgot my PIN and need a password reset", []),
    ("the code didn't arrive", []),
    ("it asked for a 4 digit code", []),
    ("I paid 1500 pounds with my pin", []),
    ("I changed my pin in 2019", []),
    ("the voucher code is 7 7 3 1", []),
    ("the error code in the app is 5004", []),
    ("the word is fine", []),
    ("my password is not working", []),
    ("my password is 8 characters long", []),
    ("I forgot my pin and my account number is 12345678", [("account", "12345678")]),
    ("the code was sent to 07700 900123", [("phone", "07700 900123")]),
])
def test_credentials_are_found_and_their_look_alikes_are_not(text, found):
    assert [(s.type, text[s.start:s.end]) for s in find_pii(text)] == found


def test_a_pin_read_out_is_silenced_in_the_audio():
    words = [Word(w, 0.5 * i, 0.5 * i + 0.4, 0.9) for i, w in enumerate("my pin is four four oh nine thanks".split())]
    result, hit = redact_words(words)
    assert result.text == "my pin is [CREDENTIAL] thanks" and hit == [3, 4, 5, 6]
    assert result.to_dict()["redactions"] == [{"type": "credential", "start": 10, "end": 27}]  # no value in the map


@pytest.mark.parametrize(("text", "value"), [
    # after an e-mail cue the whole name is the mailbox, not only its last word
    ("my email is john smith at gmail dot com", "john smith at gmail dot com"),
    ("my email address is mary jane cole at outlook dot com", "mary jane cole at outlook dot com"),
    ("email's um sam lee at example dot org", "sam lee at example dot org"),
    ("my email is still john smith at gmail dot com", "john smith at gmail dot com"),
    ("e-mail: john smith@example.com", "john smith@example.com"),
    # without the cue (or too far from it) the match stands as it was
    ("you can write to john smith at gmail dot com", "smith at gmail dot com"),
    ("my email is working but I sent it to john at gmail dot com", "john at gmail dot com"),
    ("the email was from john at gmail dot com", "john at gmail dot com"),
])
def test_a_spoken_email_with_a_space_in_the_name_is_redacted_whole(text, value):
    assert [(s.type, text[s.start:s.end]) for s in find_pii(text)] == [("email", value)]


@pytest.mark.parametrize(("text", "value"), [
    ("my email is john.smith@bank.com.Thanks for helping", "john.smith@bank.com"),  # next sentence typed without a space
    ("mail me at a@b.co.uk.Cheers", "a@b.co.uk"),
    ("write to jo@mail.example.com. Thanks", "jo@mail.example.com"),
    ("it is John@Mail.Bank.Com.", "John@Mail.Bank.Com"),  # a capitalised top-level label is the address's own
    ("x jo@bank.com.Org", "jo@bank.com.Org"),
    ("jo@bank.com.thanks", "jo@bank.com.thanks"),  # lower case: nothing says where it ends, so all of it goes
])
def test_a_typed_email_ends_before_a_sentence_glued_to_it(text, value):
    assert [(s.type, text[s.start:s.end]) for s in find_pii(text)] == [("email", value)]


def test_a_wife_at_home_is_no_email():
    assert find_pii("I sent it to my wife at home") == []


def test_national_id_format_checks():
    assert ni_prefix_ok("AB") and ni_prefix_ok("jt") and ni_prefix_ok("OA")  # O may come first, not second
    assert not any(ni_prefix_ok(p) for p in ("QQ", "DA", "FA", "IA", "UA", "VA", "AO", "AD", "BG", "GB", "NK", "TN", "ZZ"))
    assert ssn_ok("123456789") and ssn_ok("899010001")
    assert not any(ssn_ok(d) for d in ("000123456", "666123456", "900123456", "999123456", "123006789", "123450000", "12345678"))


@pytest.mark.parametrize(("text", "value"), [
    # UK National Insurance numbers: typed (capitals, or joined to the digits), spelled, by name, NATO
    ("NI no. AB 12 34 56 C", "AB 12 34 56 C"),
    ("it's JM401993D on the tax form", "JM401993D"),  # no name said: a prefix HMRC issues and its suffix
    ("ni: jm401993d", "jm401993d"),
    ("the one on my payslip is c e 55 66 77 a", "c e 55 66 77 a"),  # spelled one letter a word, no name said
    ("national insurance number, tee why forty four ten eighty two bee", "tee why forty four ten eighty two bee"),
    ("my n i number is sierra kilo one two three four five six charlie", "sierra kilo one two three four five six charlie"),
    # after its name: a prefix HMRC never issues (a misheard letter), letters the recogniser lost
    ("my national insurance number is q q 12 34 56 c", "q q 12 34 56 c"),
    ("my national insurance number is um six one two two oh nine b", "six one two two oh nine b"),
    ("my ni number is (ab 12 34 56 c)", "ab 12 34 56 c"),
    ('NI: "AB123456C".', "AB123456C"),  # the quotes and the full stop stay outside
    # US Social Security numbers: typed with dashes (no name needed), after or before their name in any grouping
    ("the W-9 shows 402-81-3367", "402-81-3367"),
    ("my social security number is 231 40 7788", "231 40 7788"),
    ("SSN: 602118445", "602118445"),
    ("my ssn is five two four dash six one dash nine nine three oh", "five two four dash six one dash nine nine three oh"),
    ("five four one two two eight nine oh three, that's my ssn", "five four one two two eight nine oh three"),
    ("ssn 666-12-3456", "666-12-3456"),  # a never-issued area, but the caller said it is their SSN
])
def test_national_ids_are_found(text, value):
    assert [(s.type, text[s.start:s.end]) for s in find_pii(text)] == [("national_id", value)]


@pytest.mark.parametrize(("found", "not_found"), [
    # HMRC never issues these prefixes: with no name said, an NI-shaped string with one is a reference
    ("JT 40 12 77 B", "QQ 40 12 77 B"),
    ("a b one two three four five six c", "q q one two three four five six c"),
    ("reference AB123456A", "reference DF123456A"),
    ("booking CB 12 34 56 A", "booking GB 12 34 56 A"),
    ("ticket TA 40 12 77 B", "ticket TN 40 12 77 B"),
    # a two-letter word is no prefix unless typed in capitals; no suffix, no name: a reference
    ("AT 12 34 56 A", "at 12 34 56 a"),
    ("my national insurance number is 123456", "my car insurance policy number is 123456"),
    ("order AB123456C has shipped", "order AB123456 has shipped"),
    # the SSA never issues area 000, 666, 900-999, group 00, serial 0000: with no name, no SSN
    ("667-12-3456 is the claim reference", "666-12-3456 is the claim reference"),
    ("the case is 812-45-6789", "the case is 912-45-6789"),
    ("123-01-4567 on the parcel", "123-00-4567 on the parcel"),
    ("claim 123-45-0001", "claim 123-45-0000"),
    ("ssn 123456789", "reference 123456789 on the letter"),  # 9 digits typed together need the name
    # after "social security", amounts, dates and a missing number stay
    ("my social security number is 231 40 7788", "my social security check of 1,250 dollars came on 03/05/2024"),
    ("my ni number is ab 12 34 56 c", "my ni number is on my payslip"),
])
def test_national_id_look_alikes_stay(found, not_found):
    assert [s.type for s in find_pii(found)] == ["national_id"]
    assert find_pii(not_found) == []


@pytest.mark.parametrize(("national", "other"), [
    # a 9-digit run after "social security" is a national id, after "account" an account number
    (("social security number is one two three four five six seven eight nine",
      [("national_id", "one two three four five six seven eight nine")]),
     ("account number is one two three four five six seven eight nine",
      [("account", "one two three four five six seven eight nine")])),
    # "card" said before it: the SSN is no card fragment; with no name, 8+ digits read out are an account
    (("my card was blocked and my social security number is one two three four five six seven eight nine",
      [("national_id", "one two three four five six seven eight nine")]),
     ("the number they gave me was nine eight one two three four five six seven",
      [("account", "nine eight one two three four five six seven")])),
    # "social security number" announces no card security code: the last four of an SSN are the SSN's
    (("the last four of my social security number are 6789", [("national_id", "6789")]),
     ("the security number on the back is 412", [("cvv", "412")])),
    # a name said after the value names it, but not across "and": a sort code then an NI number
    (("12 34 56 c, that's my ni number", [("national_id", "12 34 56 c")]),
     ("sort code 20-00-00 and ni number ab 12 34 56 c", [("account", "20-00-00"), ("national_id", "ab 12 34 56 c")])),
    # ddd-dd-dddd is an SSN, ddd-ddd-dddd a (NANP) phone number
    (("I was born on 12/05/1985 and my number is 231-40-7788", [("dob", "12/05/1985"), ("national_id", "231-40-7788")]),
     ("I was born on 12/05/1985 and my number is 231-407-7880", [("dob", "12/05/1985"), ("phone", "231-407-7880")])),
])
def test_national_id_precedence(national, other):
    for text, found in (national, other):
        assert [(s.type, text[s.start:s.end]) for s in find_pii(text)] == found


def test_a_national_insurance_number_read_out_is_silenced_in_the_audio():
    said = "my national insurance number is q q one two three four five six c thanks"
    words = [Word(w, 0.5 * i, 0.5 * i + 0.4, 0.9) for i, w in enumerate(said.split())]
    result, hit = redact_words(words)
    assert result.text == "my national insurance number is [NATIONAL_ID] thanks" and hit == list(range(5, 14))
    assert "national_id" in TYPES


@pytest.mark.parametrize(("text", "found"), [
    # a password, passphrase or memorable word of several words is redacted whole, up to where the next clause starts
    ("my passphrase is correct horse battery staple", [("credential", "correct horse battery staple")]),
    ("my memorable word is blue elephant", [("credential", "blue elephant")]),
    ("my password is purple monkey dishwasher 7 and can you unlock it", [("credential", "purple monkey dishwasher 7")]),
    ("my password is orange giraffe but it says it's wrong", [("credential", "orange giraffe")]),
    ("my memorable phrase is the cat sat on the mat", [("credential", "the cat sat on the mat")]),
    ("passphrase: salt and pepper forever, is that right", [("credential", "salt and pepper forever")]),
    ("my password's tiger lily nine", [("credential", "tiger lily nine")]),
    ("my memorable word is giraffe and my pin is 4 4 0 9", [("credential", "giraffe"), ("credential", "4 4 0 9")]),
    ("my password is hunter2 the sort code is 20-00-00", [("credential", "hunter2"), ("account", "20-00-00")]),
    # bounded: at most 8 words, and a clause start ends it even without punctuation
    ("my password is hunter2 for online banking since last tuesday", [("credential", "hunter2 for online banking")]),
    ("my passphrase is one two three four five six seven eight nine ten eleven", [
        ("credential", "one two three four five six seven eight nine ten eleven")]),  # digits never count
    # a description of the password is no password
    ("my password is not working and I can't log in", []),
    ("my passphrase is the same as my old one", []),
    ("my password is correct but it still won't let me in", []),
    ("my password's been changed by someone", []),
    ("my password is twelve characters", []),
    ("my memorable word is a bit long", []),
    # a code said to have come in a text, without the word "code"
    ("you texted me 4829", [("credential", "4829")]),
    ("the number you sent me is 482913", [("credential", "482913")]),
    ("you just sent me four eight two nine", [("credential", "four eight two nine")]),
    ("you sent me a text saying 4 8 2 9", [("credential", "4 8 2 9")]),
    # ...but money sent, counts and amounts in a text are no code
    ("you sent me 1500 by mistake", []),
    ("you sent me 250 pounds", []),
    ("I sent you 40 pounds", []),
    ("you texted me 100 times today", []),
    ("the text said 1500 was paid to a shop", []),
    ("the text said my payment of 250 failed", []),
    ("you texted me 07700 900123", [("phone", "07700 900123")]),
    # one-time codes of 3 digits; a card's 3-digit code stays the cvv; a PIN said with 3 digits after its name and link
    # is a PIN missing a digit (session 20, second round; it was left in the clear before)
    ("the code you texted me is 482", [("credential", "482")]),
    ("the text said 3 1 7", [("credential", "3 1 7")]),
    ("otp is nine one two", [("credential", "nine one two")]),
    ("the security code is 412", [("cvv", "412")]),
    ("the three digits on the back are 412", [("cvv", "412")]),
    ("the cvv is 318 and the code you texted me is 902", [("cvv", "318"), ("credential", "902")]),
    ("the three digits on the front are 412", []),
    ("my pin is 123", [("credential", "123")]),
])
def test_secrets_of_several_words_and_codes_sent_by_text(text, found):
    assert [(s.type, text[s.start:s.end]) for s in find_pii(text)] == found


def test_a_passphrase_read_out_is_silenced_whole_in_the_audio():
    words = [Word(w, 0.5 * i, 0.5 * i + 0.4, 0.9) for i, w in enumerate(
        "my passphrase is correct horse battery staple thanks".split())]
    result, hit = redact_words(words)
    assert result.text == "my passphrase is [CREDENTIAL] thanks" and hit == [3, 4, 5, 6]


@pytest.mark.parametrize(("text", "found"), [
    # a qualifier phrase between a secret's name and its link: what it is for, who chose or sent it, a hedge
    ("my password for online banking is hunter2", [("credential", "hunter2")]),
    ("the password I set was rover99", [("credential", "rover99")]),
    ("the password you sent me is Xk92pq", [("credential", "Xk92pq")]),
    ("my memorable word for the app is giraffe", [("credential", "giraffe")]),
    ("my pin for the new card is 4 4 0 9", [("credential", "4 4 0 9")]),
    ("the pin number I chose is 1 9 8 4", [("credential", "1 9 8 4")]),
    ("my telephone banking passcode that I use is 7 7 3 1", [("credential", "7 7 3 1")]),
    ("my password I think is orange giraffe thanks", [("credential", "orange giraffe")]),
    ("my password for netflix is hunter2", [("credential", "hunter2")]),
    ("the password for it is hunter2", [("credential", "hunter2")]),
    ("My password for online banking: Kettle-42", [("credential", "Kettle-42")]),
    ("the passphrase they sent me in the post was green apple tree", [("credential", "green apple tree")]),
    ("my pin you sent me by post is 5 5 1 8", [("credential", "5 5 1 8")]),
    # a hedge after the link, "to" after a change
    ("my pin is actually 4 4 0 9", [("credential", "4 4 0 9")]),
    ("my password is still hunter2", [("credential", "hunter2")]),
    ("I changed my pin to 4 4 0 9", [("credential", "4 4 0 9")]),
    ("the pin was changed to four four oh nine", [("credential", "four four oh nine")]),
    ("I changed my password to hunter2", [("credential", "hunter2")]),
    ("the password has been reset to Hunter22", [("credential", "Hunter22")]),
    # ... and their look-alikes: a description after the qualifier, a new clause, money, counts, dates, a purpose
    ("my password is not working and my balance is 400 pounds", []),
    ("my pin was blocked so I paid 1500", []),
    ("my password for the app is not working", []),
    ("the pin I chose is the one on the letter", []),
    ("my pin for the new card is blocked", []),
    ("the password I set was changed on 12/03/2024", []),
    ("the password I set up is 12 characters long", []),
    ("my memorable word for the app is the same as my old one", []),
    ("my pin for the card I opened in 2015 is blocked", []),
    ("my pin yesterday it was 2500", []),
    ("the pin machine said 250", []),
    ("the password field is empty", []),
    ("I changed my password to log in", []),
    ("I changed my password to something easier", []),
    ("I changed my pin 3 times this year", []),
    # a PIN said with 3 digits after its name and link; a card's code stays cvv; amounts after a PIN stay
    ("my pin is 1 2 3", [("credential", "1 2 3")]),
    ("my pin number is nine four one", [("credential", "nine four one")]),
    ("PIN: 417", [("credential", "417")]),
    ("the pin on my new card is eight two one", [("credential", "eight two one")]),
    ("my pin is 6 6 1 and cvv 412", [("credential", "6 6 1"), ("cvv", "412")]),
    ("cvv 412", [("cvv", "412")]),
    ("the first three digits of my pin are 4 4 0", [("credential", "4 4 0")]),
    ("my pin was 250 pounds short", []),
    ("the payment with my pin was 250", []),
    ("the daily limit on my pin is 300", []),
    ("my cash limit with the pin is 300 pounds", []),
    ("the pin on my new card is 4 digits", []),
    ("my passcode is 123", [("credential", "123")]),  # a password or typed passcode of 3 digits, as before
    # digits a text held
    ("I got a text with 4829 in it", [("credential", "4829")]),
    ("you sent me a text with 7 1 4 6 in it", [("credential", "7 1 4 6")]),
    ("the message you sent me had 3 1 9 9 in it", [("credential", "3 1 9 9")]),
    ("I got a text with 2 links in it", []),
    ("I got a text with 250 pounds in it", []),
    ("you sent me a text with 100 offers", []),
])
def test_secrets_after_a_qualifier_3_digit_pins_and_digits_in_a_text(text, found):
    assert [(s.type, text[s.start:s.end]) for s in find_pii(text)] == found


def test_a_password_named_with_a_qualifier_is_silenced_in_the_audio():
    words = [Word(w, 0.5 * i, 0.5 * i + 0.4, 0.9) for i, w in enumerate(
        "my password for online banking is hunter two and my pin is one two three".split())]
    result, hit = redact_words(words)
    assert result.text == "my password for online banking is [CREDENTIAL] and my pin is [CREDENTIAL]"
    assert hit == [6, 7, 12, 13, 14]


@pytest.mark.parametrize(("text", "found"), [
    # session 20, third round: an adjective after the link describes the password unless the words hold a digit
    ("my password is still super secure", []),
    ("my password is really long and complicated", []),
    ("my memorable word is something my mum chose", []),
    ("my password is super secret 99", [("credential", "super secret 99")]),
    ("my password is purple monkey dishwasher 7", [("credential", "purple monkey dishwasher 7")]),
    # no link word
    ("my password hunter2", [("credential", "hunter2")]),
    ("My password Kestrel77 isn't accepted.", [("credential", "Kestrel77")]),
    ("my password stopped working", []),
    ("my password 2fa is on", []),
    ("pin 4 4 0 9", [("credential", "4 4 0 9")]),
    ("PIN: 4409", [("credential", "4409")]),
    # a partial PIN
    ("my pin ends in 0 9", [("credential", "0 9")]),
    ("my pin starts with 4 4", [("credential", "4 4")]),
    ("the last two digits of my pin are 4 9", [("credential", "4 9")]),
    ("The first digit of my PIN is 3.", [("credential", "3")]),
    ("my pin ends up being blocked", []),
    ("my pin ends in 2 days", []),
    ("the last two digits of my account balance are 50", []),
    # a qualifier holding digits
    ("my pin for the last 10 years has been 1 9 8 4", [("credential", "1 9 8 4")]),
    ("My password since 2019 has been tulip8.", [("credential", "tulip8")]),
    ("my password for 2 years was 8 characters", []),
    # codes in an e-mail
    ("the email you sent me has 4829 in it", [("credential", "4829")]),
    ("the code in the email was 551290", [("credential", "551290")]),
    ("you emailed me 7 7 0 3", [("credential", "7 7 0 3")]),
    ("you emailed me 1500", []),
    ("email me at 3pm", []),
    ("the email said 2000 was paid", []),
    ("I sent you an email with 3 photos in it", []),
])
def test_descriptions_unlinked_secrets_partial_pins_and_codes_in_an_email(text, found):
    assert [(s.type, text[s.start:s.end]) for s in find_pii(text)] == found


@pytest.mark.parametrize(("text", "found"), [
    # round 4: a password said in words with no link word
    ("my password hunter two", [("credential", "hunter two")]),
    ("my password tulip eight eight doesn't work", [("credential", "tulip eight eight")]),
    ("my password Banjo 7 was rejected", [("credential", "Banjo 7")]),
    ("my password purple monkey three", [("credential", "purple monkey three")]),
    ("my password needs one capital letter", []),
    ("my password expired three weeks ago", []),
    ("I entered my password three times", []),
    ("my password has two numbers in it", []),
    # a second part of a PIN after "and", its PIN named by the first
    ("my pin starts with 0 and ends with 9", [("credential", "0"), ("credential", "9")]),
    ("the pin begins with four and it ends in six", [("credential", "four"), ("credential", "six")]),
    ("the first digit of my pin is 4 and the last is 7", [("credential", "4"), ("credential", "7")]),
    ("my pin's first digit is four and the last one is seven", [("credential", "four"), ("credential", "seven")]),
    ("my pin starts with 7 and my balance ends in 20", [("credential", "7")]),
    # a part of a PIN said as one digit word
    ("my pin begins with nine", [("credential", "nine")]),
    ("the first digit of my pin is five", [("credential", "five")]),
    ("my pin starts with one of my birthdays", []),
    ("my pin ends in five days", []),
    ("my pin starts with, oh, I forget", []),
    ("the last one is eight", []),
    # passphrases of more than 8 words
    ("my passphrase is purple elephants dance under the silver moon every friday night",
     [("credential", "purple elephants dance under the silver moon every friday night")]),
    ("my passphrase is purple rain falling softly thanks for checking", [("credential", "purple rain falling softly")]),
    # a code the caller got or received
    ("the code I got was 5 5 1 2 9 0", [("credential", "5 5 1 2 9 0")]),
    ("the code i received was nine nine one two", [("credential", "nine nine one two")]),
    ("the code that i got this morning is 304 118", [("credential", "304 118")]),
    ("the code didn't work", []),
    ("I got 5 emails", []),
    ("the discount code i got was 2024", []),
    ("the reference code on my letter is 4 4 7 1 2 2", []),
    ("the code i got at 10 30 never worked", []),
    ("the sort code is 20 00 00", [("account", "20 00 00")]),
    # no over-redaction: a version after "password", how long after a secret
    ("my password v2 login page", []),
    ("my password has been hunter2 for years", [("credential", "hunter2")]),
    ("my password was fluffy for ages", [("credential", "fluffy")]),
    ("my password is tea for two", [("credential", "tea for two")]),
    # other look-alikes
    ("my password is not working", []),
    ("it says my pin is wrong", []),
    ("pin number please", []),
])
def test_unlinked_spoken_passwords_second_pin_parts_received_codes_and_long_passphrases(text, found):
    assert [(s.type, text[s.start:s.end]) for s in find_pii(text)] == found


def test_text_models_get_the_redacted_text_without_its_placeholders():
    from apps.customer_service.pii import without_placeholders

    assert without_placeholders(redact("My card number is 4111 1111 1111 1111, please block it").text) == \
        "My card number is, please block it"
    assert without_placeholders("my pin is [CREDENTIAL] and [sic] [NOT_A_TYPE]") == "my pin is and [sic] [NOT_A_TYPE]"
    assert without_placeholders("[CARD].") == "" and without_placeholders("") == ""


SPOKEN_CARD_AND_AMOUNT = ("my card number is four five three nine one four eight eight oh three four three six four six "
                          "seven and i paid twelve pounds fifty on the third of march")


def test_the_written_form_of_a_redacted_transcript_keeps_its_placeholders_and_no_pii():
    from apps.customer_service.pii import normalise_redacted

    redacted = redact_words([SimpleNamespace(text=w) for w in SPOKEN_CARD_AND_AMOUNT.split()])[0].text
    assert redacted == "my card number is [CARD] and i paid twelve pounds fifty on the third of march"
    written = normalise_redacted(redacted)
    assert written == "my card number is [CARD] and i paid £12.50 on 3 March"
    assert re.findall(r"\d+", written) == ["12", "50", "3"]  # the amount and the date, no digit of the card
    every = " ".join(f"[{t.upper()}]" for t in TYPES)
    assert normalise_redacted(every) == every
    assert normalise_redacted("my card is [CARD]. Thanks, one thousand two hundred pounds") == \
        "my card is [CARD]. Thanks, £1,200"
    # each stretch between placeholders is written on its own: digits never run on across a redaction
    assert normalise_redacted("four five [CARD] six seven") == "45 [CARD] 67"
    # what the written form shows is read by the detector again: a number written out is never shown as PII
    assert normalise_redacted("call me on oh seven seven oh oh nine oh oh one two three") == "call me on [PHONE]"
    assert normalise_redacted("") == ""


ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"]  # spaces, joiners, word joiner, BOM, soft hyphen


@pytest.mark.parametrize("sep", ZERO_WIDTH + ["/", "_", ","])
def test_a_card_number_with_unusual_separators_is_redacted_whole(sep):
    """Invisible format characters show one number; "/", "_" and "," are separators when the digits pass Luhn."""
    card = sep.join(["4111", "1111", "1111", "1111"])
    text = f"my card number is {card} thanks"
    assert [(s.type, text[s.start:s.end]) for s in find_pii(text)] == [("card", card)]
    assert redact(text).text == "my card number is [CARD] thanks"


@pytest.mark.parametrize("text,kind,value", [
    ("iban GB82\u200bWEST\u200b1234\u200b5698\u200b7654\u200b32 please",
     "iban", "GB82\u200bWEST\u200b1234\u200b5698\u200b7654\u200b32"),
    ("iban GB82/WEST/1234/5698/7654/32", "iban", "GB82/WEST/1234/5698/7654/32"),
    ("email waylon\uff20example.com now", "email", "waylon\uff20example.com"),  # full-width @
    ("email wa\u200bylon@exam\u200bple.com", "email", "wa\u200bylon@exam\u200bple.com"),
    ("4539_1488_0343_6467, is it blocked?", "card", "4539_1488_0343_6467"),  # no card word: Luhn alone
    ("my card is \u202e4111 1111 1111 1111\u202c", "card", "4111 1111 1111 1111"),  # a direction override
])
def test_invisible_and_compatibility_characters_hide_nothing(text, kind, value):
    """Spans point into the text as given, invisible characters included, so the redacted text keeps none of it."""
    assert [(s.type, text[s.start:s.end]) for s in find_pii(text)] == [(kind, value)]


@pytest.mark.parametrize("text", [
    "we paid 1200,1500,1800,2000 last year",  # a list of amounts, 16 digits failing Luhn
    "the payments were 1,250,000 and 2,500",  # thousands separators
    "statements from 01/02/2023,03/04/2023 and 05/06/2023",  # a list of dates
    "order 1234/5678/9012/3456 from the shop",  # a card's shape, Luhn-invalid, no card word
    "file report_2023_01_15_final.pdf",  # an underscore name
    "GB00/WEST/1234/5698/7654/32",  # an IBAN's shape with a bad checksum
    "my\u200bwife is at home",  # a zero-width space between words
    "ｔｈｅ ｃａｒｄ ｉｓ ｂｌｏｃｋｅｄ",  # full-width letters, no number
])
def test_unusual_separators_take_no_list_for_pii(text):
    assert find_pii(text) == []


@pytest.mark.parametrize("card", ["4539 1488 O343 6467", "4539-1488-o343-6467", "4539 l488 0343 6467",
                                  "45391488O3436467", "4I11 1111 1111 1111"])
def test_a_card_number_typed_with_letters_for_digits_is_redacted(card):
    """O for 0 and I or l for 1 in a typed card number: the number a person reads is still the card."""
    text = f"my card is {card} thanks"
    assert [(s.type, text[s.start:s.end]) for s in find_pii(text)] == [("card", card)]


@pytest.mark.parametrize("text", [
    "it is OO7 and IO",  # letters and few digits: words
    "my card is 4539 1488 O343 6468 thanks",  # read with digits it fails Luhn
    "room 1O1 on floor 2",
    "meet at 1O:30",
    "ref OO12 3456 7890 1234",
])
def test_letters_among_digits_stay_unless_they_make_a_card(text):
    assert [s for s in find_pii(text) if s.type == "card"] == []


@pytest.mark.parametrize("text,cards", [
    ("4539 1488 0343 6467. 4111 1111 1111 1111.", 2),  # one run of digits to the parser: only the first was found
    ("4539 1488 0343 6467, 4539 1488 0343 6467, 4539 1488 0343 6467", 3),
    ("cards 4539148803436467 4111111111111111", 2),
])
def test_every_card_in_one_run_of_digits_is_redacted(text, cards):
    redacted = redact(text).text
    assert redacted.count("[CARD]") == cards and not any(ch.isdigit() for ch in redacted), redacted


def test_oh_is_no_zero_in_the_written_form_but_a_pin_of_zeros_is_still_redacted():
    """The written form reads "oh" as zero only among other digits ("oh oh I think..." once became "00 I think...");
    the detector still reads a run of "oh"s as zeros where a PIN, code or account is named."""
    from apps.customer_service.pii import normalise_redacted

    assert normalise_redacted("oh oh I think I lost my card") == "oh oh I think I lost my card"
    assert normalise_redacted("Oh, one more thing, I paid twelve pounds.") == "Oh, one more thing, I paid £12."
    assert normalise_redacted("my pin is oh oh oh oh") == "my pin is [CREDENTIAL]"
    assert normalise_redacted("the sort code is oh oh oh oh oh oh") == "the sort code is [ACCOUNT]"
    assert [(r.type, r.start) for r in find_pii("my pin is oh oh oh oh")] == [("credential", 10)]
    card = "my card is four five three nine one four eight eight oh three four three six four six seven."
    assert normalise_redacted(card) == "my card is [CARD]."


# Values as callers type them or recognisers write them, each in a sentence "{}" stands in for.
EDGE_VALUES = [
    ("my card is {}", "card", "4539 1488 0343 6467"),
    ("my card is {}", "card", "4539148803436467"),
    ("my card number is {}", "card",
     "four five three nine one four eight eight zero three four three six four six seven"),
    ("card {}", "card", "forty one ten sixty six fifty eight oh three fifty one nine"),  # pairs, a lone digit last
    ("my iban is {}", "iban", "GB82 WEST 1234 5698 7654 32"),
    ("my account number is {}", "account", "12345678"),
    ("account {}", "account", "1 2 3 4 5 6 7 8"),
    ("sort code {}", "account", "12-34-56"),
    ("call me on {}", "phone", "07700 900123"),
    ("my number is {}", "phone", "+44 7700 900123"),
    ("phone {}", "phone", "555-123-4567"),
    ("my mobile is {}", "phone", "oh seven seven oh oh nine oh oh one two three"),
    ("email me at {}", "email", "john.smith@gmail.com"),
    ("write to {}", "email", "a.b@example.co.uk"),
    ("my email is {}", "email", "john dot smith at gmail dot com"),
    ("my email is {}", "email", "john smith at gmail dot com"),  # the name after the cue is the mailbox
    ("I was born on {}", "dob", "3 March 1985"),
    ("my date of birth is {}", "dob", "03/04/1985"),
    ("born {}", "dob", "1985-04-03"),
    ("my date of birth is {}", "dob", "the third of march nineteen eighty five"),
    ("my cvv is {}", "cvv", "412"),
    ("expiry {}", "expiry", "09/28"),
    ("my pin is {}", "credential", "4 3 2 1"),
    ("my ni number is {}", "national_id", "QQ123456C"),
]
AROUND = [("", "."), ("", ","), ("", "?"), ("", "!"), ("", ")"), ("", '"'), ("", "'"), ("", "..."), ("", ".)"),
          ("", '."'), ("", "?)"), ("(", ")."), ('"', '".'), ("'", "'?"), ("\u201c", "\u201d."), ("(", "?)")]


@pytest.mark.parametrize("lead,tail", AROUND)
@pytest.mark.parametrize("sentence,kind,value", EDGE_VALUES)
def test_a_redaction_stops_at_the_punctuation_around_its_value(sentence, kind, value, lead, tail):
    """The map's offsets point at the value alone, and the redacted text keeps the sentence's punctuation. A span
    used to take a spoken value's full stop ("... six four six seven." -> "[CARD]"), and a quoted or bracketed typed
    value ('"4539 1488 0343 6467"', "03/04/1985?") was not found at all."""
    for after in ("", " thanks"):  # the sentence's end, or more words after it
        text = sentence.format(lead + value + tail) + after
        result = redact(text)
        assert [(r.type, text[r.start:r.end]) for r in result.redactions] == [(kind, value)], text
        assert result.text == sentence.format(f"{lead}[{kind.upper()}]{tail}") + after


@pytest.mark.parametrize("text,value", [
    ("call me on (020) 7946 0958.", "(020) 7946 0958"),  # the bracket closes inside the number: it is part of it
    ("call me on ((020) 7946 0958).", "(020) 7946 0958"),
    ("her mobile is (555) 123-4567?", "(555) 123-4567"),
    ("my number is (+44 7700 900123).", "+44 7700 900123"),  # a country code in the bracket used to be left out
])
def test_a_bracket_that_belongs_to_a_phone_number_stays_in_its_span(text, value):
    assert [(r.type, text[r.start:r.end]) for r in find_pii(text)] == [("phone", value)]


@pytest.mark.parametrize("text,address", [
    ("Email me at john.smith@gmail.com.", "john.smith@gmail.com"),
    ("it's jo@mail.co.uk. Thanks", "jo@mail.co.uk"),
    ("my email is a.b@example.org...", "a.b@example.org"),
    ("(john_smith@example.com).", "john_smith@example.com"),
    ("my email is john dot smith at gmail dot com.", "john dot smith at gmail dot com"),
    ("email's um (sam lee at example dot org).", "sam lee at example dot org"),
])
def test_a_full_stop_after_an_e_mail_address_is_the_sentence_s(text, address):
    result = redact(text)
    assert [(r.type, text[r.start:r.end]) for r in result.redactions] == [("email", address)]
    assert result.text == text.replace(address, "[EMAIL]")


def test_recognised_words_with_punctuation_keep_it_outside_the_placeholder():
    """Whisper writes "seven." as one word: the placeholder takes the digits, the full stop stays, and the word is
    still among those silenced in the audio."""
    spoken = "four five three nine one four eight eight zero three four three six four six seven.".split()
    words = [Word(w, 0.3 * i, 0.3 * i + 0.2, 0.9) for i, w in enumerate(["my", "card", "number", "is", *spoken])]
    result, hit = redact_words(words)
    assert result.text == "my card number is [CARD]."
    assert hit == list(range(4, 20))


@pytest.mark.parametrize("text", ["my password (2fa) is on", 'my password "2fa" is on', "my password 2fa) is on"])
def test_punctuation_around_a_token_makes_no_password_of_it(text):
    assert find_pii(text) == []
