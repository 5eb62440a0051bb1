"""Writes pii_corpus.jsonl: the PII redaction test corpus (our own text, CC0).

Hand-written sentences (positives in many surface forms and hard negatives that look like PII
but are not) plus templated ones filled with random values: Luhn-valid card numbers written in
groups, with dashes, digit by digit in words, with "double", or in pairs ("forty one eleven");
valid IBANs; UK phone numbers; spoken and written e-mails; dates of birth. Hard negatives:
Luhn-invalid 16-digit references, amounts, transaction dates, years, quantities, "at" phrases,
IBAN-shaped strings with a wrong checksum. National identity numbers (UK National Insurance, US Social
Security) typed and spoken, with prefixes HMRC never issues, never-issued SSN ranges and 9-digit references as
look-alikes. Run from the repo root:

    .venv/bin/python datasets/customer_service/asr/make_pii_corpus.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).with_name("pii_corpus.jsonl")
ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEENS = ["ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december"]

HAND = [
    # positives, written
    ("My card number is 4539 1488 0343 6467.", [("card", "4539 1488 0343 6467")]),
    ("card no. 5555-5555-5555-4444 expiring soon", [("card", "5555-5555-5555-4444")]),
    ("Use 378282246310005 for the amex", [("card", "378282246310005")]),
    ("The number on the front is 4111111111111111 and the expiry is 05/27", [("card", "4111111111111111"), ("expiry", "05/27")]),
    ("please send it to jane.doe+bank@example.co.uk today", [("email", "jane.doe+bank@example.co.uk")]),
    ("Email: a.b@c.io", [("email", "a.b@c.io")]),
    ("my iban is GB82 WEST 1234 5698 7654 32", [("iban", "GB82 WEST 1234 5698 7654 32")]),
    ("IBAN DE89370400440532013000 for the transfer", [("iban", "DE89370400440532013000")]),
    ("sort code 20-00-00 and account number 12345678", [("account", "20-00-00"), ("account", "12345678")]),
    ("my account is 31926819", [("account", "31926819")]),
    ("you can reach me on 07700 900123", [("phone", "07700 900123")]),
    ("call +44 20 7946 0958 after five", [("phone", "+44 20 7946 0958")]),
    ("her mobile is (555) 123-4567", [("phone", "(555) 123-4567")]),
    ("my date of birth is 14/02/1987", [("dob", "14/02/1987")]),
    ("DOB 1990-07-21", [("dob", "1990-07-21")]),
    # positives, spoken
    ("it's four five three nine one four eight eight zero three four three six four six seven",
     [("card", "four five three nine one four eight eight zero three four three six four six seven")]),
    ("the card is four one one one double one one one one one one one one one one one",
     [("card", "four one one one double one one one one one one one one one one one")]),
    ("my email is john dot smith at gmail dot com", [("email", "john dot smith at gmail dot com")]),
    ("send it to sarah underscore jones at outlook dot co dot uk", [("email", "sarah underscore jones at outlook dot co dot uk")]),
    ("I was born on the third of march nineteen eighty five", [("dob", "the third of march nineteen eighty five")]),
    ("my birthday is july the fourth nineteen seventy", [("dob", "july the fourth nineteen seventy")]),
    ("date of birth twenty first of june two thousand and one", [("dob", "twenty first of june two thousand and one")]),
    ("my phone number is oh seven seven double oh nine oh oh one two three",
     [("phone", "oh seven seven double oh nine oh oh one two three")]),
    ("my account number is one two three four five six seven eight",
     [("account", "one two three four five six seven eight")]),
    ("the sort code is two oh double oh oh oh", [("account", "two oh double oh oh oh")]),
    # unannounced identifiers read out digit by digit (session 9; these rows had been added to the
    # jsonl by hand, not here), shorter runs and years as negatives
    ("ok it is four four one two seven seven nine zero three one",
     [("account", "four four one two seven seven nine zero three one")]),
    ("the number they gave me was nine nine eight one zero two three four",
     [("account", "nine nine eight one zero two three four")]),
    ("my booking code is three three one five two eight", []),
    ("we were married in nineteen eighty eight and moved in two thousand and four", []),
    # card security code and expiry (session 18; PCI DSS: the code is never stored after authorisation)
    ("and the CVV is 123", [("cvv", "123")]),
    ("cvc2 0457", [("cvv", "0457")]),
    ("the security code on the back is four five six", [("cvv", "four five six")]),
    ("card verification value 987", [("cvv", "987")]),
    ("expiry 12/26", [("expiry", "12/26")]),
    ("it's valid thru 01/2030", [("expiry", "01/2030")]),
    ("the expiry date is oh three twenty seven", [("expiry", "oh three twenty seven")]),
    ("expires zero eight two six", [("expiry", "zero eight two six")]),
    # hard negatives
    ("my security question is my first pet", []),
    ("a security deposit of 750 pounds", []),
    ("the cvv field would not accept it", []),
    ("the voucher expires in 14 days", []),
    ("the code expired after 10 minutes", []),
    ("valid for 90 days from 12/05/2024", []),
    ("I want to transfer £1,250 to my savings", []),
    ("the payment on 3 March 2024 was declined", []),
    ("it was on the third of march two thousand and twenty four", []),
    ("my card was declined twice at the shop", []),
    ("order reference 1234567890123456 from the online store", []),
    ("tracking number 9400111899223100012345", []),
    ("I have been waiting for 45 minutes", []),
    ("I topped up twenty pounds fifty yesterday", []),
    ("we arrived at home at five", []),
    ("look at the app dot", []),
    ("my pin is blocked", []),
    ("the exchange rate was 1.1634 yesterday", []),
    ("I was charged 3 times on 12/10/2023", []),
    ("it happened in 1999 and again in 2005", []),
    ("GB00 WEST 1234 5698 7654 32 is not a real iban", []),
    ("the transaction id is 4539148803436468", []),
    ("I need it by the fifth of may", []),
    ("about one two three times a week", []),
    ("the card arrived on the second of april", []),
    ("my card ending 4467 was used", []),
    ("the fee was 2.5% of 1,000 euros", []),
    ("I called at 10:30 and again at 14:45", []),
    ("there are 365 days in a year and 24 hours in a day", []),
    ("born in the eighties, I still use cash", []),
    # credentials: PINs, one-time / verification codes sent by text or an app, passwords,
    # memorable words, telephone-banking passcodes, typed and spoken; then their look-alikes
    ("my pin is one two three four", [("credential", "one two three four")]),
    ("my PIN is 5831", [("credential", "5831")]),
    ("my pin number is um four four two two", [("credential", "four four two two")]),
    ("the pin for my card is 9 0 1 2", [("credential", "9 0 1 2")]),
    ("passcode 0 0 7 1", [("credential", "0 0 7 1")]),
    ("my telephone banking passcode is one nine eight seven two", [("credential", "one nine eight seven two")]),
    ("the code you texted me is 4 8 2 9 1 7", [("credential", "4 8 2 9 1 7")]),
    ("I got a text with the code 551204", [("credential", "551204")]),
    ("the otp is eight one five five three nine", [("credential", "eight one five five three nine")]),
    ("the verification code you sent by text is four four two one", [("credential", "four four two one")]),
    ("the security code in the app says 7 7 1 9", [("credential", "7 7 1 9")]),
    ("the one time code 90 44 12 came through", [("credential", "90 44 12")]),
    ("my memorable word is giraffe", [("credential", "giraffe")]),
    ("memorable information: Rover1990", [("credential", "Rover1990")]),
    ("my password is hunter2", [("credential", "hunter2")]),
    ("password: Tr0ub4dor&3", [("credential", "Tr0ub4dor&3")]),
    ("the second and fifth letters of my memorable word are k and p", [("credential", "k and p")]),
    # added after the held-out file's first score: "it's" (read as "it" once its 's is dropped) links a
    # name to its value; a card's code far after "security code" with only where it is printed between
    ("my pin, it's 3 3 0 8", [("credential", "3 3 0 8")]),
    ("the password? it's rover99", [("credential", "rover99")]),
    ("memorable answer, it's Fluffy", [("credential", "Fluffy")]),
    ("the security code on the back of my debit card is 3 0 8", [("cvv", "3 0 8")]),
    ("the security code didn't work so I paid 150", []),
    ("what is the pin number for the branch", []),
    ("I forgot my PIN", []),
    ("can I get a password reset", []),
    ("the code didn't arrive", []),
    ("it asked for a 4 digit code", []),
    ("my pin was blocked after 3 tries", []),
    ("I changed my pin in 2019", []),
    ("the voucher code is 7 7 3 1", []),
    ("the word is fine", []),
    ("my password is not working", []),
    ("my password is 8 characters long", []),
    ("my password was changed on 12/03/2024", []),
    ("I paid 1500 pounds with my pin", []),
    ("the error code in the app is 5004", []),
    ("my memorable word is the same as before", []),
    ("the code was sent to 07700 900123", [("phone", "07700 900123")]),
    ("I forgot my pin and my account number is 12345678", [("account", "12345678")]),
    # e-mail addresses said with a space in the name: after "email is" the whole name is the
    # mailbox; without the cue, and for words that are no name, nothing changes
    ("my email is john smith at gmail dot com", [("email", "john smith at gmail dot com")]),
    ("my email address is mary jane cole at outlook dot com", [("email", "mary jane cole at outlook dot com")]),
    ("email's um sam lee at example dot org", [("email", "sam lee at example dot org")]),
    ("I sent it to my wife at home", []),
    ("my email is working but I sent it to john at gmail dot com", [("email", "john at gmail dot com")]),
    # national identity numbers: UK National Insurance (two letters, six digits, a suffix A-D) and US Social Security
    # (ddd-dd-dddd), typed and as the recogniser writes them; after their name any such shape, without it only
    # prefixes HMRC issues and SSNs typed with dashes outside the SSA's never-issued ranges
    ("my national insurance number is q q 12 34 56 c", [("national_id", "q q 12 34 56 c")]),
    ("national insurance q q one two three four five six c", [("national_id", "q q one two three four five six c")]),
    ("NI no. AB 12 34 56 C", [("national_id", "AB 12 34 56 C")]),
    ("ni: jm401993d", [("national_id", "jm401993d")]),
    ("it's JM401993D on the tax form", [("national_id", "JM401993D")]),
    ("my nino is h w one nine two two four seven a", [("national_id", "h w one nine two two four seven a")]),
    ("national insurance number, tee why forty four ten eighty two bee",
     [("national_id", "tee why forty four ten eighty two bee")]),
    ("my n i number is sierra kilo one two three four five six charlie",
     [("national_id", "sierra kilo one two three four five six charlie")]),
    ("my national insurance number is um six one two two oh nine b", [("national_id", "six one two two oh nine b")]),
    ("the one on my payslip is c e 55 66 77 a", [("national_id", "c e 55 66 77 a")]),
    ("ssn 123-45-6789", [("national_id", "123-45-6789")]),
    ("social security number is one two three four five six seven eight nine",
     [("national_id", "one two three four five six seven eight nine")]),
    ("my social security number is 231 40 7788", [("national_id", "231 40 7788")]),
    ("SSN: 602118445", [("national_id", "602118445")]),
    ("my social's six oh two one one eight four four five", [("national_id", "six oh two one one eight four four five")]),
    ("my ssn is five two four dash six one dash nine nine three oh",
     [("national_id", "five two four dash six one dash nine nine three oh")]),
    ("five four one two two eight nine oh three, that's my ssn", [("national_id", "five four one two two eight nine oh three")]),
    ("the W-9 shows 402-81-3367", [("national_id", "402-81-3367")]),
    ("the last four of my social security number are 6789", [("national_id", "6789")]),
    ("my card was blocked and my social security number is one two three four five six seven eight nine",
     [("national_id", "one two three four five six seven eight nine")]),
    ("the social security number on file is 7 7 1 2 0 4 5 5 3", [("national_id", "7 7 1 2 0 4 5 5 3")]),
    ("I was born on 12/05/1985 and my ssn is 231-40-7788", [("dob", "12/05/1985"), ("national_id", "231-40-7788")]),
    ("sort code 20-00-00 and ni number ab 12 34 56 c", [("account", "20-00-00"), ("national_id", "ab 12 34 56 c")]),
    ("q q one two three four five six c", []),  # HMRC's specimen prefix (Q is never first), no name said
    ("QQ 12 34 56 C is the example on the website", []),
    ("reference DF123456A", []),
    ("the booking is GB 12 34 56 A", []),
    ("ticket TN 40 12 77 B", []),
    ("it is 12 34 56 on my statement", []),
    ("my ref is 12 34 56 a", []),
    ("so at 10 11 12 a man rang", []),
    ("my car insurance policy number is 123456", []),
    ("order AB123456 has shipped", []),  # no suffix letter, no name: a reference
    ("my account number is 123456789", [("account", "123456789")]),
    ("account number is one two three four five six seven eight nine",
     [("account", "one two three four five six seven eight nine")]),
    ("reference 123456789 on the letter", []),
    ("666-12-3456 is the claim reference", []),
    ("123-00-4567 on the parcel", []),
    ("the case is 912-45-6789", []),
    ("call 555-123-4567", [("phone", "555-123-4567")]),
    ("social security paid 1,250.00 on 03/05/2024", []),
    ("my social security payment is 900 dollars", []),
    ("my social security number is missing from the form", []),
    ("national insurance contributions of 3,200 in 2023", []),
    ("my ni number is on my payslip", []),
    ("the security number on the back is 412", [("cvv", "412")]),
    # credentials, session 20 (after pii_heldout_secrets.jsonl was written and scored): a password, passphrase or
    # memorable word of several words, redacted whole up to where the caller's next clause starts; a code said to
    # have come in a text without the word "code"; one-time codes of 3 digits; a card's code named by its length
    ("my passphrase is correct horse battery staple", [("credential", "correct horse battery staple")]),
    ("my memorable word is blue elephant", [("credential", "blue elephant")]),
    ("my password is purple monkey dishwasher 7 and can you unlock it", [("credential", "purple monkey dishwasher 7")]),
    ("the pass phrase is rainy days in paris thanks", [("credential", "rainy days in paris")]),
    ("Password: blue Sky 2024! is that ok", [("credential", "blue Sky 2024")]),
    ("my memorable phrase is the cat sat on the mat", [("credential", "the cat sat on the mat")]),
    ("my password's tiger lily nine", [("credential", "tiger lily nine")]),
    ("um my password is uh red red wine so I dunno", [("credential", "red red wine")]),
    ("passphrase: salt and pepper forever, is that right", [("credential", "salt and pepper forever")]),
    ("my memorable word is giraffe and my pin is 4 4 0 9", [("credential", "giraffe"), ("credential", "4 4 0 9")]),
    ("my memorable answer is new york city but I might have spelled it wrong", [("credential", "new york city")]),
    ("you texted me 4829", [("credential", "4829")]),
    ("the number you sent me is 482913", [("credential", "482913")]),
    ("you just sent me four eight two nine", [("credential", "four eight two nine")]),
    ("I got your message it says 7 7 0 4 1 9", [("credential", "7 7 0 4 1 9")]),
    ("the sms you sent said three one nine nine four two", [("credential", "three one nine nine four two")]),
    ("your text was 55 18 02", [("credential", "55 18 02")]),
    ("I got a text saying 9 9 1 4 0 2", [("credential", "9 9 1 4 0 2")]),
    ("the code you texted me is 482", [("credential", "482")]),
    ("the text said 3 1 7", [("credential", "3 1 7")]),
    ("otp is nine one two", [("credential", "nine one two")]),
    ("the login code was 8 0 3", [("credential", "8 0 3")]),
    ("the 3 digits on the back of my card are 7 0 9", [("cvv", "7 0 9")]),
    ("the three numbers on the signature strip are five five one", [("cvv", "five five one")]),
    ("the cvv is 318 and the code you texted me is 902", [("cvv", "318"), ("credential", "902")]),
    ("my password is not working and I need it reset", []),
    ("my passphrase is the same as my old one", []),
    ("my password is correct but it still won't let me in", []),
    ("my memorable word is a bit long", []),
    ("my password's been changed by someone", []),
    ("my password is hard to remember", []),
    ("my password is the problem not my card", []),
    ("my password is twelve characters", []),
    ("you sent me 1500 by mistake", []),
    ("you texted me 100 times today", []),
    ("you sent me 250 quid", []),
    ("the text said my balance was 320 pounds", []),
    ("you texted me at 9 about a payment of 45 pounds", []),
    ("the message you sent me on 12/03/2024 was about my card", []),
    ("I sent you 3 messages yesterday", []),
    ("the code you texted me didn't work", []),
    ("you sent me 2 texts and 1 email", []),
    ("I got a text saying 2000 had gone out", []),
    ("the text said 1500 was paid to a shop", []),
    ("the three digits on the front are 412", []),
    # credentials, session 20, second round (after pii_heldout_secrets2.jsonl was written and scored): a qualifier phrase between a
    # secret's name and its link ("my password for online banking is ...", "the pin number I chose is ..."), a hedge
    # after the link, "to" after a change; a PIN said with 3 digits after its name and link; digits a text held
    ("my password for online banking is hunter2", [("credential", "hunter2")]),
    ("the password I set was rover99", [("credential", "rover99")]),
    ("the password you sent me is Xk92pq", [("credential", "Xk92pq")]),
    ("my memorable word for the app is giraffe", [("credential", "giraffe")]),
    ("the pin number I chose is 1 9 8 4", [("credential", "1 9 8 4")]),
    ("my telephone banking passcode that I use is 7 7 3 1", [("credential", "7 7 3 1")]),
    ("the password for my email is Sunny2020", [("credential", "Sunny2020")]),
    ("Password for the app: Marble77", [("credential", "Marble77")]),
    ("the passphrase we set up last year is river stone bridge", [("credential", "river stone bridge")]),
    ("my memorable word I think is lighthouse", [("credential", "lighthouse")]),
    ("my pin for the card I lost was eight oh eight one", [("credential", "eight oh eight one")]),
    ("my pin is actually 2 7 7 5", [("credential", "2 7 7 5")]),
    ("my password is still pancake", [("credential", "pancake")]),
    ("I changed my pin to 6 0 1 8", [("credential", "6 0 1 8")]),
    ("I changed my password to Waffles9", [("credential", "Waffles9")]),
    ("my pin has been changed to five five two oh", [("credential", "five five two oh")]),
    ("my pin is 1 2 3", [("credential", "1 2 3")]),
    ("my pin number is nine four one", [("credential", "nine four one")]),
    ("PIN: 582", [("credential", "582")]),
    ("my pin is 7 0 2 and the cvv is 318", [("credential", "7 0 2"), ("cvv", "318")]),
    ("I got a text with 4829 in it", [("credential", "4829")]),
    ("the message you sent me had 3 1 9 9 in it", [("credential", "3 1 9 9")]),
    ("my password is not working and my balance is 400 pounds", []),
    ("my pin was blocked so I paid 1500", []),
    ("my password for the app is not working", []),
    ("the pin I chose is the one on the letter", []),
    ("my pin for the new card is blocked", []),
    ("my password for the app is the same as online banking", []),
    ("the password I set up is 12 characters long", []),
    ("the password they gave me does not work", []),
    ("the pin you sent me is in the post", []),
    ("my pin for the card was wrong 3 times", []),
    ("I changed my pin 3 times this year", []),
    ("I reset my password to log in", []),
    ("I changed my password to something easier", []),
    ("the payment with my pin was 250", []),
    ("the daily limit on my pin is 300", []),
    ("the pin machine said 250", []),
    ("my pin was 250 pounds short", []),
    ("I used my pin and it was 2500", []),
    ("I got a text with 250 pounds in it", []),
    ("you sent me a text with 100 offers", []),
    # credentials, session 20, third round (after pii_heldout_secrets3.jsonl was written and scored): a description
    # after the link is no password; a secret with no link word; a partial PIN ("ends in", "the last two digits of");
    # a qualifier holding digits ("for the last 10 years"); codes in an e-mail
    ("my password is super secret 99", [("credential", "super secret 99")]),
    ("my passphrase is really purple dinosaur 7", [("credential", "really purple dinosaur 7")]),
    ("my password is still super secure", []),
    ("my password is really long and complicated", []),
    ("my memorable word is something my mum chose", []),
    ("my password is extra complicated now", []),
    ("my password is fairly simple", []),
    ("my password hunter2", [("credential", "hunter2")]),
    ("my password Rover77 stopped working", [("credential", "Rover77")]),
    ("my pin 4 4 0 9", [("credential", "4 4 0 9")]),
    ("the pin 3 3 1 7 does not work", [("credential", "3 3 1 7")]),
    ("pin number 8 2 2 0", [("credential", "8 2 2 0")]),
    ("PIN: 4409", [("credential", "4409")]),
    ("my password 3 times wrong", []),
    ("my password 2fa is on", []),
    ("my pin ends in 0 9", [("credential", "0 9")]),
    ("my pin ends with four two", [("credential", "four two")]),
    ("my pin starts with 4 4", [("credential", "4 4")]),
    ("the pin begins with nine one", [("credential", "nine one")]),
    ("the last two digits of my pin are 4 9", [("credential", "4 9")]),
    ("The first digit of my PIN is 3.", [("credential", "3")]),
    ("my pin ends up being blocked", []),
    ("my pin ends in 2 days", []),
    ("my pin starts with a zero", []),
    ("the last two digits of my account balance are 50", []),
    ("my pin for the last 10 years has been 1 9 8 4", [("credential", "1 9 8 4")]),
    ("my password since 2015 has been Robin2015", [("credential", "Robin2015")]),
    ("the pin I had for 3 years was 6 6 2 1", [("credential", "6 6 2 1")]),
    ("my pin for the last 10 years has been the same", []),
    ("my password for 2 years was fine", []),
    ("the email you sent me has 4829 in it", [("credential", "4829")]),
    ("the code in the email was 551290", [("credential", "551290")]),
    ("you emailed me 7 7 0 3", [("credential", "7 7 0 3")]),
    ("I got an email with 6 1 8 8 in it", [("credential", "6 1 8 8")]),
    ("email me at 3pm", []),
    ("the email said 2000 was paid", []),
    ("you emailed me 1500", []),
    ("the email you sent me has 2 attachments in it", []),
    # credentials, round 4 (after pii_heldout_secrets4.jsonl was written and scored): a password said in words with no
    # link word; a second part of a PIN after "and"; a part of a PIN said as one digit word; passphrases of 9-12 words;
    # a code the caller got or received; words of how long after a secret; a version after "password"
    ("my password hunter two", [("credential", "hunter two")]),
    ("my password tulip eight eight doesn't work", [("credential", "tulip eight eight")]),
    ("the password rocket five", [("credential", "rocket five")]),
    ("my password Banjo 7 was rejected", [("credential", "Banjo 7")]),
    ("my password purple monkey three", [("credential", "purple monkey three")]),
    ("my password needs one capital letter", []),
    ("my password expired three weeks ago", []),
    ("my password reset two times", []),
    ("my password has two numbers in it", []),
    ("my password lasted two months", []),
    ("the password step two", []),
    ("I entered my password three times", []),
    ("my password problem 2", []),
    ("my pin starts with 2 and ends with 5", [("credential", "2"), ("credential", "5")]),
    ("the pin begins with four and it ends in six", [("credential", "four"), ("credential", "six")]),
    ("the first digit of my pin is 1 and the last is 9", [("credential", "1"), ("credential", "9")]),
    ("my pin's first digit is four and the last one is seven", [("credential", "four"), ("credential", "seven")]),
    ("my pin starts with 8 8 and ends in 0", [("credential", "8 8"), ("credential", "0")]),
    ("my pin starts with 7 and my balance ends in 20", [("credential", "7")]),
    ("my pin begins with 3 and the account ends in 4421", [("credential", "3")]),
    ("my pin ends in nine", [("credential", "nine")]),
    ("the pin starts with zero", [("credential", "zero")]),
    ("the first digit of my pin is five", [("credential", "five")]),
    ("my pin starts with one of my birthdays", []),
    ("my pin ends in five days", []),
    ("the last one is eight", []),
    ("my pin starts with, oh, I forget", []),
    ("my passphrase is purple elephants dance under the silver moon every friday night",
     [("credential", "purple elephants dance under the silver moon every friday night")]),
    ("my memorable phrase is tea for two and biscuits for three on sunday afternoons",
     [("credential", "tea for two and biscuits for three on sunday afternoons")]),
    ("My password is: green apples and red cherries grow on the old farm.",
     [("credential", "green apples and red cherries grow on the old farm")]),
    ("my passphrase is purple rain falling softly thanks for checking", [("credential", "purple rain falling softly")]),
    ("the code i got was 5 5 1 2 9 0", [("credential", "5 5 1 2 9 0")]),
    ("the code i received was nine nine one two", [("credential", "nine nine one two")]),
    ("the code that i got this morning is 304 118", [("credential", "304 118")]),
    ("the code we received is 7 1 7 1", [("credential", "7 1 7 1")]),
    ("the code i was given is 22 83 19", [("credential", "22 83 19")]),
    ("the discount code i got was 2024", []),
    ("the code i got at 10 30 never worked", []),
    ("the reference code i received is 4471 2290", []),
    ("the code i got is 3 days old", []),
    ("the code i got was 1500 pounds", []),
    ("my password has been kestrel9 for years", [("credential", "kestrel9")]),
    ("my password was fluffy for ages", [("credential", "fluffy")]),
    ("my password has been bluebird for the last two years", [("credential", "bluebird")]),
    ("my password is tea for two", [("credential", "tea for two")]),
    ("the password v2 login page", []),
    ("my password v4 reset form", []),
]


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def two_digit_words(n: int) -> str:
    if n < 10:
        return "oh " + ONES[n]
    if n < 20:
        return TEENS[n - 10]
    return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])


def spoken_digits(digits: str, rng: random.Random, doubles: bool = True) -> str:
    out, i = [], 0
    while i < len(digits):
        if doubles and i + 1 < len(digits) and digits[i] == digits[i + 1] and rng.random() < 0.5:
            out.append("double " + ONES[int(digits[i])])
            i += 2
        else:
            out.append(rng.choice(["oh", "zero"]) if digits[i] == "0" else ONES[int(digits[i])])
            i += 1
    return " ".join(out)


def card_surface(number: str, rng: random.Random) -> str:
    style = rng.choice(["plain", "spaces", "dashes", "words", "words", "pairs"])
    if style == "plain":
        return number
    if style in ("spaces", "dashes"):
        sep = " " if style == "spaces" else "-"
        groups = [number[i:i + 4] for i in range(0, len(number), 4)] if len(number) != 15 else [number[:4], number[4:10], number[10:]]
        return sep.join(groups)
    if style == "words":
        return spoken_digits(number, rng)
    pairs = [number[i:i + 2] for i in range(0, len(number), 2)]
    return " ".join(two_digit_words(int(p)) if len(p) == 2 else ONES[int(p)] for p in pairs)


def iban_gb(rng: random.Random) -> str:
    bank = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(4))
    digits = "".join(str(rng.randrange(10)) for _ in range(14))
    bban = bank + digits
    num = int("".join(str(int(c, 36)) for c in bban + "GB00"))
    check = 98 - num % 97
    s = f"GB{check:02d}{bban}"
    return " ".join(s[i:i + 4] for i in range(0, len(s), 4)) if rng.random() < 0.6 else s


def ordinal(n: int) -> str:
    base = {1: "first", 2: "second", 3: "third", 5: "fifth", 8: "eighth", 9: "ninth", 12: "twelfth", 20: "twentieth"}
    if n in base:
        return base[n]
    if n < 20:
        return (ONES + TEENS)[n] + "th"
    if n % 10 == 0:
        return TENS[n // 10][:-1] + "ieth"
    return TENS[n // 10] + " " + (base.get(n % 10) or ONES[n % 10] + "th")


def year_words(y: int) -> str:
    if 2000 <= y < 2010:
        return "two thousand" + ("" if y == 2000 else " and " + ONES[y % 10])
    return two_digit_words(y // 100) + " " + (two_digit_words(y % 100) if y % 100 else "hundred")


def generated(rng: random.Random) -> list[tuple[str, list[tuple[str, str]]]]:
    rows = []
    card_frames = ["my card number is {}", "the long number is {} thanks", "it's {}", "card {} please",
                   "ok the number on my visa is {}", "{} is the card", "yes it is {} and the expiry is next year"]
    for _ in range(150):
        prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15), ("6011", 16), ("4", 13)])
        number = luhn_complete(prefix, length, rng)
        surface = card_surface(number, rng)
        rows.append((rng.choice(card_frames).format(surface), [("card", surface)]))
    for _ in range(40):
        mobile = "07" + "".join(str(rng.randrange(10)) for _ in range(9))
        style = rng.choice(["plain", "space", "intl", "words"])
        surface = {"plain": mobile, "space": mobile[:5] + " " + mobile[5:], "intl": "+44 " + mobile[1:5] + " " + mobile[5:],
                   "words": spoken_digits(mobile, rng)}[style]
        frame = rng.choice(["my mobile is {}", "call me back on {}", "the number to reach me is {}", "it's {} after six"])
        rows.append((frame.format(surface), [("phone", surface)]))
    for _ in range(30):
        acc = "".join(str(rng.randrange(10)) for _ in range(8))
        sort = "-".join(f"{rng.randrange(100):02d}" for _ in range(3))
        surface = acc if rng.random() < 0.6 else spoken_digits(acc, rng)
        if rng.random() < 0.5:
            rows.append((f"my account number is {surface}", [("account", surface)]))
        else:
            rows.append((f"sort code {sort} account {surface}", [("account", sort), ("account", surface)]))
    for _ in range(20):
        iban = iban_gb(rng)
        rows.append((rng.choice(["my iban is {}", "send it to {} please", "IBAN {}"]).format(iban), [("iban", iban)]))
    names, domains = ["john", "mary", "a.khan", "li.wei", "tom_b", "sara"], ["gmail", "outlook", "example", "mybank"]
    for _ in range(30):
        name, dom = rng.choice(names), rng.choice(domains)
        if rng.random() < 0.5:
            surface = f"{name}{rng.randrange(100)}@{dom}.com"
        else:
            spoken_name = name.replace(".", " dot ").replace("_", " underscore ")
            surface = f"{spoken_name} at {dom} dot {rng.choice(['com', 'co dot uk', 'org'])}"
        rows.append((rng.choice(["my email is {}", "you can email {}", "it's {}"]).format(surface), [("email", surface)]))
    for _ in range(30):
        d, m, y = rng.randrange(1, 29), rng.randrange(12), rng.randrange(1940, 2006)
        style = rng.choice(["numeric", "spoken", "spoken2"])
        surface = {"numeric": f"{d:02d}/{m + 1:02d}/{y}", "spoken": f"the {ordinal(d)} of {MONTHS[m]} {year_words(y)}",
                   "spoken2": f"{MONTHS[m]} the {ordinal(d)} {year_words(y)}"}[style]
        frame = rng.choice(["my date of birth is {}", "I was born on {}", "dob {}", "birthday {}"])
        rows.append((frame.format(surface), [("dob", surface)]))
    # hard negatives
    for _ in range(40):
        ref = "".join(str(rng.randrange(10)) for _ in range(16))
        if luhn_ok(ref):
            continue
        rows.append((rng.choice(["reference {} on the receipt", "transaction {} is pending", "order number {}"]).format(ref), []))
    for _ in range(30):
        d, m, y = rng.randrange(1, 29), rng.randrange(12), rng.randrange(2018, 2026)
        surface = rng.choice([f"{d:02d}/{m + 1:02d}/{y}", f"the {ordinal(d)} of {MONTHS[m]} {year_words(y)}"])
        rows.append((rng.choice(["the payment on {} bounced", "I topped up on {}", "my card arrived {}"]).format(surface), []))
    for _ in range(20):
        amount = rng.randrange(100, 100000)
        rows.append((rng.choice(["I sent £{:,} last week", "a transfer of {:,} euros", "I was charged {} pounds"]).format(amount), []))
    # national identity numbers (drawn after everything above, so the rows before them stay as they were)
    for _ in range(40):
        prefix = ni_prefix(rng)
        digits, suffix = "".join(str(rng.randrange(10)) for _ in range(6)), rng.choice("ABCD")
        surface = ni_surface(prefix, digits, suffix, rng)
        typed = surface[:2].isupper() or surface[:2].isalpha() and surface[2].isdigit()
        frames = ["my national insurance number is {}", "ni number {}", "national insurance no {}", "my nino is {}"]
        frames += ["it's {} for the isa", "{} on the P60"] if typed else []
        rows.append((rng.choice(frames).format(surface), [("national_id", surface)]))
    for _ in range(30):
        digits = ssn_digits(rng)
        style = rng.choice(["dashes", "dashes", "spaces", "plain", "words"])
        surface = {"dashes": f"{digits[:3]}-{digits[3:5]}-{digits[5:]}", "spaces": f"{digits[:3]} {digits[3:5]} {digits[5:]}",
                   "plain": digits, "words": spoken_digits(digits, rng)}[style]
        frames = ["my social security number is {}", "ssn {}", "social security no. {} please", "{} is my ssn"]
        frames += ["the form says {}", "{} on the W-2"] if style == "dashes" else []
        rows.append((rng.choice(frames).format(surface), [("national_id", surface)]))
    # their look-alikes: prefixes HMRC never issues, SSNs in never-issued ranges, 9-digit references, with no name said
    for _ in range(15):
        bad = rng.choice(["D", "F", "I", "Q", "U", "V"]) + rng.choice("ABCEHJKLMNPRSTWXYZ")
        bad = rng.choice([bad, rng.choice(["BG", "GB", "KN", "NK", "NT", "TN", "ZZ"])])
        digits, suffix = "".join(str(rng.randrange(10)) for _ in range(6)), rng.choice("ABCD")
        surface = rng.choice([f"{bad}{digits}{suffix}", f"{bad} {digits[:2]} {digits[2:4]} {digits[4:]} {suffix}"])
        rows.append((rng.choice(["reference {} on the letter", "the part number is {}", "ticket {}"]).format(surface), []))
    for _ in range(15):
        area, group, serial = rng.randrange(100, 900), rng.randrange(1, 100), rng.randrange(1, 10000)
        area, group, serial = rng.choice([(0, group, serial), (666, group, serial), (rng.randrange(900, 1000), group, serial),
                                          (area, 0, serial), (area, group, 0)])
        surface = f"{area:03d}-{group:02d}-{serial:04d}"
        rows.append((rng.choice(["claim {} on the letter", "the case number is {}", "parcel {}"]).format(surface), []))
    for _ in range(10):
        ref = "".join(str(rng.randrange(10)) for _ in range(9))
        rows.append((rng.choice(["reference {}", "invoice {} is overdue", "my policy number is {}"]).format(ref), []))
    return rows


# NI prefixes HMRC issues: the first letter not D F I Q U V, the second not D F I O Q U V, none of these pairs;
# O is left out of the first too (said aloud, "oh" is the digit 0)
NI_FIRST = [c for c in "ABCEGHJKLMNPRSTWXYZ"]
NI_SECOND = [c for c in "ABCEGHJKLMNPRSTWXYZ"]
NI_NEVER = {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}
LETTER_NAMES = {"A": "ay", "B": "bee", "C": "see", "D": "dee", "E": "ee", "G": "gee", "H": "aitch", "J": "jay", "K": "kay",
                "L": "el", "M": "em", "N": "en", "P": "pee", "R": "ar", "S": "ess", "T": "tee", "W": "w", "X": "ex",
                "Y": "why", "Z": "zed"}


def ni_prefix(rng: random.Random) -> str:
    while True:
        prefix = rng.choice(NI_FIRST) + rng.choice(NI_SECOND)
        if prefix not in NI_NEVER:
            return prefix


def ni_surface(prefix: str, digits: str, suffix: str, rng: random.Random) -> str:
    style = rng.choice(["compact", "spaced", "lower", "spelled", "pairs", "named"])
    if style == "compact":
        return f"{prefix}{digits}{suffix}"
    if style == "spaced":
        return f"{prefix} {digits[:2]} {digits[2:4]} {digits[4:]} {suffix}"
    if style == "lower":
        return f"{prefix}{digits}{suffix}".lower()
    letters = " ".join(c.lower() for c in prefix)
    if style == "spelled":
        return f"{letters} {spoken_digits(digits, rng)} {suffix.lower()}"
    pairs = " ".join(two_digit_words(int(digits[i:i + 2])) for i in (0, 2, 4))
    if style == "pairs":
        return f"{letters} {pairs} {suffix.lower()}"
    return f"{LETTER_NAMES[prefix[0]]} {LETTER_NAMES[prefix[1]]} {pairs} {LETTER_NAMES[suffix]}"


def ssn_digits(rng: random.Random) -> str:
    """Nine digits the SSA may issue: area 001-899 but 666, group 01-99, serial 0001-9999."""
    while True:
        area = rng.randrange(1, 900)
        if area != 666:
            return f"{area:03d}{rng.randrange(1, 100):02d}{rng.randrange(1, 10000):04d}"


def main() -> None:
    rng = random.Random(20261128)
    rows = HAND + generated(rng)
    with open(OUT, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": text, "entities": [{"type": t, "value": v} for t, v in ents]}) + "\n" for text, ents in rows)
    print(f"{len(rows)} rows -> {OUT}")


if __name__ == "__main__":
    main()
