"""JSGF grammars for what callers read out: single digits, digit strings (card / account / sort
code / phone numbers) and money amounts.

A grammar confines the search to the sentences it allows, which is what makes isolated digits
recognisable at all (the generic LM puts "two" next to "to" and "too"). Grammar names double as
pocketsphinx search names.
"""

from __future__ import annotations

# "sixnarrow" is "six" without the /s/ noise that 8 kHz audio cuts off (IH K S, S IH K, IH K):
# on FSDD training speakers (8 kHz) "six" was heard as "eight" 9 times in 20 without it. It lives
# only in the grammars (no LM knows it), so free-speech decoding never emits it.
NARROW_BAND_WORDS = {"sixnarrow": "six"}
NARROW_BAND_PRONUNCIATIONS = [("sixnarrow", "IH K S"), ("sixnarrow(2)", "S IH K"), ("sixnarrow(3)", "IH K")]
_DIGIT = "zero | oh | one | two | three | four | five | six | sixnarrow | seven | eight | nine"

# Isolated digits (FSDD-style recordings, IVR menus "press one")
DIGIT = f"""#JSGF V1.0;
grammar digit;
public <digit> = {_DIGIT} ;
"""

# A run of digits with the "double five" / "triple oh" idioms (card, account, sort code, phone)
DIGITS = f"""#JSGF V1.0;
grammar digits;
<d> = {_DIGIT} ;
<item> = <d> | double <d> | triple <d> ;
public <digits> = <item>+ ;
"""

# "twelve pounds fifty", "one hundred and twenty euros", "fifty pence", "two thousand dollars"
AMOUNT = """#JSGF V1.0;
grammar amount;
<unit> = one | two | three | four | five | six | seven | eight | nine ;
<teen> = ten | eleven | twelve | thirteen | fourteen | fifteen | sixteen | seventeen | eighteen | nineteen ;
<tens> = twenty | thirty | forty | fifty | sixty | seventy | eighty | ninety ;
<below100> = <unit> | <teen> | <tens> [<unit>] ;
<below1000> = <below100> | (a | <unit>) hundred [and <below100>] ;
<number> = <below1000> | <below1000> thousand [[and] <below1000>] | a thousand [[and] <below1000>] ;
<currency> = pound | pounds | dollar | dollars | euro | euros ;
<sub> = pence | cents ;
public <amount> = <number> <currency> [[and] <below100> [<sub>]] | <below100> <sub> ;
"""

GRAMMARS: dict[str, str] = {"digit": DIGIT, "digits": DIGITS, "amount": AMOUNT}
DIGIT_VALUES = {"zero": 0, "oh": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
                "seven": 7, "eight": 8, "nine": 9}
