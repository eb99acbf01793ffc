"""SMTP command argument parsing (qpsmtpd_py.command)."""

import pytest

from qpsmtpd_py.command import params_dict, parse
from qpsmtpd_py.constants import DENY, OK

# MAIL / RCPT prefixes


@pytest.mark.parametrize(
    "line",
    [
        "FROM:<ask@perl.org>",
        "from:<ask@perl.org>",
        "From: <ask@perl.org>",
        "FROM:\t <ask@perl.org>",
    ],
)
def test_mail_from_prefix_is_case_insensitive_and_may_be_followed_by_spaces(line):
    assert parse("mail", line) == (OK, ["<ask@perl.org>"])


def test_command_name_is_case_insensitive():
    assert parse("MAIL", "FROM:<a@b.example>") == (OK, ["<a@b.example>"])
    assert parse("Rcpt", "TO:<a@b.example>") == (OK, ["<a@b.example>"])


@pytest.mark.parametrize(
    ("cmd", "line"),
    [
        ("mail", "<ask@perl.org>"),
        ("mail", "TO:<ask@perl.org>"),
        ("mail", "FROM :<ask@perl.org>"),
        ("mail", " FROM:<ask@perl.org>"),
        ("mail", ""),
        ("rcpt", "FROM:<ask@perl.org>"),
        ("rcpt", "<ask@perl.org>"),
        ("rcpt", ""),
    ],
)
def test_missing_from_or_to_prefix_is_a_command_syntax_error(cmd, line):
    assert parse(cmd, line) == (DENY, ["Syntax error in command"])


# Paths


@pytest.mark.parametrize(
    "path",
    [
        "<ask@perl.org>",
        "<ask @perl.org>",
        "ask@perl.org",
        "ask@[1.2.3.4]",
        "user=name@example.net",
        "<>",
        "<postmaster>",
    ],
)
def test_path_is_returned_as_given(path):
    assert parse("mail", f"FROM:{path}") == (OK, [path])


def test_empty_mail_from_is_the_null_sender():
    assert parse("mail", "FROM:") == (OK, ["<>"])
    assert parse("mail", "FROM:  \t ") == (OK, ["<>"])


def test_empty_rcpt_to_is_an_address_syntax_error():
    assert parse("rcpt", "TO:") == (DENY, ["Syntax error in address"])
    assert parse("rcpt", "TO:   ") == (DENY, ["Syntax error in address"])


@pytest.mark.parametrize("name", ["postmaster", "abuse", "Postmaster"])
def test_bare_postmaster_and_abuse_are_accepted_as_recipients(name):
    assert parse("rcpt", f"TO:{name}") == (OK, [name])


def test_lone_zero_is_an_address_not_an_empty_path():
    assert parse("mail", "FROM:0") == (OK, ["0"])
    assert parse("rcpt", "TO:0") == (OK, ["0"])


def test_trailing_whitespace_is_stripped():
    assert parse("rcpt", "TO:<a@b.example> \t \r") == (OK, ["<a@b.example>"])


@pytest.mark.parametrize("cmd", ["mail", "rcpt"])
def test_whitespace_after_the_at_sign_is_a_parameter_syntax_error(cmd):
    prefix = "FROM:" if cmd == "mail" else "TO:"
    assert parse(cmd, f"{prefix}<a@b c>") == (DENY, ["Syntax error in parameters"])


def test_unbracketed_path_with_trailing_garbage_is_a_parameter_syntax_error():
    assert parse("rcpt", "TO:a@b.example c@d") == (DENY, ["Syntax error in parameters"])


def test_whitespace_before_the_at_sign_is_left_to_the_address_parser():
    assert parse("rcpt", "TO:<a b>") == (OK, ["<a b>"])


# ESMTP parameters


def test_size_parameter_is_peeled_off():
    assert parse("mail", "FROM:<ask@perl.org> SIZE=1230") == (
        OK,
        ["<ask@perl.org>", "SIZE=1230"],
    )


def test_parameters_keep_their_order():
    line = "FROM:<ask@perl.org> SIZE=1230 BODY=8BITMIME CORRECT-WITHOUT-ARG"
    assert parse("mail", line) == (
        OK,
        ["<ask@perl.org>", "SIZE=1230", "BODY=8BITMIME", "CORRECT-WITHOUT-ARG"],
    )


def test_parameters_may_be_separated_by_any_ascii_whitespace():
    line = "TO:<a@b.example>  NOTIFY=NEVER\tORCPT=rfc822;a@b.example "
    assert parse("rcpt", line) == (
        OK,
        ["<a@b.example>", "NOTIFY=NEVER", "ORCPT=rfc822;a@b.example"],
    )


def test_unbracketed_path_takes_parameters_too():
    assert parse("mail", "FROM:ask@perl.org SIZE=10") == (
        OK,
        ["ask@perl.org", "SIZE=10"],
    )


def test_first_word_is_never_taken_for_a_parameter():
    assert parse("rcpt", "TO:postmaster NOTIFY=NEVER") == (
        OK,
        ["postmaster", "NOTIFY=NEVER"],
    )


def test_null_sender_with_parameters():
    assert parse("mail", "FROM:<> BODY=7BIT") == (OK, ["<>", "BODY=7BIT"])


def test_parameter_value_may_hold_any_printable_character_but_equals_sign():
    line = "FROM:<a@b.example> X-TAG=caf\u00e9;<ok>"
    assert parse("mail", line) == (OK, ["<a@b.example>", "X-TAG=caf\u00e9;<ok>"])


@pytest.mark.parametrize(
    "param",
    ["SIZE=1=2", "SIZE=", "-X", "X_Y", "=1", "X=a\x01", "KEY!"],
)
def test_malformed_parameter_is_a_parameter_syntax_error(param):
    assert parse("mail", f"FROM:<a@b.example> {param}") == (
        DENY,
        ["Syntax error in parameters"],
    )


def test_peeling_stops_at_the_first_malformed_parameter_from_the_right():
    assert parse("mail", "FROM:<a@b.example> BAD! SIZE=1") == (
        DENY,
        ["Syntax error in parameters"],
    )


def test_malformed_word_before_the_at_sign_stays_in_the_path():
    assert parse("mail", "FROM:<ask @perl.org> SIZE=1") == (
        OK,
        ["<ask @perl.org>", "SIZE=1"],
    )


def test_only_ascii_whitespace_separates_parameters():
    assert parse("mail", "FROM:<a@b.example>\u00a0SIZE=1") == (
        OK,
        ["<a@b.example>\u00a0SIZE=1"],
    )


# Other commands


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("example.com", ["example.com"]),
        ("PLAIN  dGVzdA==", ["PLAIN", "dGVzdA=="]),
        ("", []),
        ("   ", []),
        ("a   ", ["a"]),
        (" a", ["", "a"]),
        ("a\tb c", ["a\tb", "c"]),
    ],
)
def test_other_commands_split_on_runs_of_spaces(line, words):
    assert parse("helo", line) == (OK, words)


def test_other_commands_are_not_checked_for_a_prefix():
    assert parse("VRFY", "from:<a@b.example>") == (OK, ["from:<a@b.example>"])


# params_dict()


def test_params_dict_lowercases_keys_and_keeps_values():
    assert params_dict(["SIZE=123", "BODY=8BITMIME", "FOO"]) == {
        "size": "123",
        "body": "8BITMIME",
        "foo": None,
    }


def test_params_dict_splits_on_the_first_equals_sign():
    assert params_dict(["X=a=b"]) == {"x": "a=b"}


def test_params_dict_keeps_an_empty_value_distinct_from_none():
    assert params_dict(["X="]) == {"x": ""}


def test_params_dict_later_duplicate_wins():
    assert params_dict(["SIZE=1", "size=2"]) == {"size": "2"}


def test_params_dict_of_no_parameters_is_empty():
    assert params_dict([]) == {}
