from apps.medical.negation import sentences, split_affirmed_negated


def test_negated_list_does_not_affirm_findings():
    affirmed, negated = split_affirmed_negated("Heart size normal. No pneumonia, effusions, nodules or masses.")
    assert "nodules" in negated and "masses" in negated
    assert "nodules" not in affirmed and "masses" not in affirmed


def test_affirmed_finding_stays_affirmed():
    affirmed, negated = split_affirmed_negated("There is a 2 cm nodule in the right upper lobe.")
    assert "nodule" in affirmed and not negated


def test_pseudo_negation_keeps_the_finding():
    affirmed, _ = split_affirmed_negated("No change in the small calcified right upper lobe nodule.")
    assert "nodule" in affirmed


def test_terminator_closes_the_scope():
    affirmed, negated = split_affirmed_negated("No effusion, but a nodule is seen in the left base.")
    assert "effusion" in negated
    assert "nodule" in affirmed


def test_scope_ends_at_the_sentence_and_placeholders_vanish():
    affirmed, negated = split_affirmed_negated("No pneumothorax. XXXX mass in the right apex.")
    assert "pneumothorax" in negated and "mass" in affirmed
    assert all("xxxx" not in s for s in sentences("XXXX seen. 1. Normal XXXX."))


def test_a_comma_after_the_negated_phrases_verb_ends_the_scope():
    text = "No focal consolidation, no definite pleural effusion seen, left hilar calcifications and dense nodule."
    affirmed, negated = split_affirmed_negated(text)
    assert "nodule" in affirmed and "effusion" in negated and "consolidation" in negated
    affirmed, negated = split_affirmed_negated("No focal consolidation, pleural effusion, or suspicious nodules.")
    assert "nodules" in negated and not affirmed  # a plain list stays negated
    assert "," not in affirmed + negated


def test_a_trigger_at_the_end_of_a_sentence_counts_its_own_length():
    from apps.medical.negation import _TRIGGER_SET, _match

    assert _match(["effusion", "no"], 1, _TRIGGER_SET) == 1  # not 3: the slice past the end is shorter
    assert _match(["negative", "for", "x"], 0, _TRIGGER_SET) == 2
