"""Every rule of the validation table at its bounds (issue 29): both ends accepted, just outside refused.

The test iterates over ``validation.RULES`` itself, so a rule added later is covered without editing this file.
"Just outside" is the nearest representable value beyond each end: the next float for a real-valued rule, the next
integer (the next multiple, and a non-multiple inside) for an integer one. A refusal must be one line that names the
value's label and the allowed range, as for every user mistake.
"""

from __future__ import annotations

import math

import pytest

from emo_model.validation import RULES, InputError, check


def inside_ends(rule) -> list:
    """The two ends a user may give: lo and hi, or for a multiple-of rule the first and last multiple in range."""
    if not rule.integer:
        return [float(rule.lo), float(rule.hi)]
    m = rule.multiple
    return [-(-int(rule.lo) // m) * m, int(rule.hi) // m * m]


def just_outside(rule) -> list:
    if not rule.integer:
        return [math.nextafter(float(rule.lo), -math.inf), math.nextafter(float(rule.hi), math.inf)]
    first, last = inside_ends(rule)
    out = [int(rule.lo) - 1, int(rule.hi) + 1, first - rule.multiple, last + rule.multiple]
    if rule.multiple > 1:
        out += [first + 1, last - 1]  # inside the range, not a multiple
    out += [first + 0.5]  # not an integer
    return out


def test_the_table_is_not_empty_and_every_rule_is_a_proper_range():
    """Sanity of the table the tests below walk: at least the sampling rules, each with lo < hi."""
    assert {"steps", "cfg", "audio_cfg", "seed", "size", "fps"} <= set(RULES)
    for name, rule in RULES.items():
        assert rule.lo < rule.hi and rule.multiple >= 1, name
        first, last = inside_ends(rule)
        assert rule.lo <= first <= last <= rule.hi, name


@pytest.mark.parametrize("name", sorted(RULES))
def test_both_ends_are_accepted_as_given(name):
    rule = RULES[name]
    for value in inside_ends(rule):
        got = check(name, value)
        assert got == value and type(got) is (int if rule.integer else float), (name, value, got)
        # the same value as a string (how a CLI flag arrives before argparse's type) or, for an integer rule, as a
        # float without a fraction (a JSON number, a FLOAT widget) is accepted too, and comes back as the rule's type
        if rule.integer and abs(value) < 2**53:
            assert check(name, float(value)) == value and type(check(name, float(value))) is int, (name, value)
        if not rule.integer:
            assert check(name, repr(value)) == value, (name, value)
            if value == int(value):  # an int for a real-valued rule comes back as a float
                assert type(check(name, int(value))) is float, (name, value)


def expected_message(label: str, rule, value, hint: str) -> str:
    """The refusal, spelled out from the rule's fields (not from Rule.describe)."""
    if rule.integer:
        allowed = f"an integer from {int(rule.lo)} to {int(rule.hi)}"
    else:
        allowed = f"a number from {rule.lo:g} to {rule.hi:g}"
    if rule.multiple > 1:
        allowed += f", a multiple of {rule.multiple}"
    return f"{label} must be {allowed}, got {value!r}" + (f"; {hint}" if hint else "")


@pytest.mark.parametrize("name", sorted(RULES))
def test_just_outside_each_end_is_refused_in_one_line(name):
    rule = RULES[name]
    for value in just_outside(rule):
        with pytest.raises(InputError) as info:
            check(name, value, label=f"--{name}")
        message = str(info.value)
        assert "\n" not in message and message == expected_message(f"--{name}", rule, value, rule.hint), message
        assert rule.describe() in message, message
    # a caller's own advice replaces the rule's; an empty one leaves none
    value = just_outside(rule)[1]
    with pytest.raises(InputError, match=r"; use the preset$"):
        check(name, value, hint="use the preset")
    with pytest.raises(InputError) as info:
        check(name, value, hint="")
    assert str(info.value) == expected_message(name, rule, value, "")


@pytest.mark.parametrize("name", sorted(RULES))
def test_values_that_are_not_numbers_are_refused_with_the_same_line(name):
    """A bool (a checkbox wired into a number), text, NaN and infinity: refused with the rule's line, never
    compared with the bounds (True would pass 0..1 as 1)."""
    rule = RULES[name]
    for value in (True, False, "many", None, math.nan, math.inf, -math.inf):
        with pytest.raises(InputError) as info:
            check(name, value, label=f"--{name}")
        assert str(info.value) == expected_message(f"--{name}", rule, value, rule.hint)
