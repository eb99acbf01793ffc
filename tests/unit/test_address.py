"""Envelope path parsing, formatting and ordering (qpsmtpd_py.address)."""

import operator

import pytest

from qpsmtpd_py.address import Address, canonify

# canonify()


@pytest.mark.parametrize("path", ["sample@path", "", "<a@b", "a@b>", "<a@b> "])
def test_path_without_angle_brackets_is_missing_delimiters(path):
    assert canonify(path) == (None, None, "missing delimiters")


def test_empty_path_canonifies_to_empty_local_part():
    assert canonify("<>") == ("", None, "empty path")


@pytest.mark.parametrize("path", ["<postmaster>", "<PostMaster>", "<POSTMASTER>"])
def test_bare_postmaster_is_a_valid_recipient(path):
    assert canonify(path) == ("postmaster", None, "bare postmaster")


def test_bare_postmaster_lookalike_with_unicode_long_s_is_not_postmaster():
    assert canonify("<po\u017ftmaster>") == (None, None, "")


def test_postmaster_with_domain_is_an_ordinary_mailbox():
    assert canonify("<postmaster@test>") == ("postmaster", "test", "local matches atom")


def test_simple_mailbox_splits_into_local_part_and_domain():
    assert canonify("<ask@perl.org>") == ("ask", "perl.org", "local matches atom")


def test_single_hop_source_route_is_stripped():
    assert canonify("<@a:postmaster@test>") == (
        "postmaster",
        "test",
        "local matches atom",
    )


def test_multi_hop_source_route_with_address_literal_is_stripped():
    path = "<@relay.example,@[10.0.0.1],@b.example:user@example.com>"
    assert canonify(path) == ("user", "example.com", "local matches atom")


def test_source_route_alone_leaves_the_empty_path():
    assert canonify("<@relay.example:>") == ("", None, "empty path")


def test_address_literal_without_local_part_falls_through():
    assert canonify("<@192.168.1.1>") == (None, None, "fall through")


def test_local_part_only_needs_to_start_like_an_atom():
    assert canonify("<ask @perl.org>") == ("ask ", "perl.org", "local matches atom")


def test_non_ascii_local_part_starting_with_an_atom_is_accepted():
    assert canonify("<postm\u00e1ster@test>") == (
        "postm\u00e1ster",
        "test",
        "local matches atom",
    )


def test_local_part_starting_with_a_dot_falls_through():
    assert canonify("<.user@example.com>") == (None, None, "fall through")


@pytest.mark.parametrize(
    "path",
    [
        "<user>",
        "<user@>",
        "<user@example.com#>",
        "<user@-example.com>",
        "<user@example-.com>",
        "<user@example..com>",
        "<user@example.com.>",
        "<user@.example.com>",
    ],
)
def test_path_without_a_valid_domain_is_rejected(path):
    assert canonify(path) == (None, None, "")


@pytest.mark.parametrize(
    "path",
    ["<a@exa!mple.com>", "<a@my_host.example.com>", "<a@exa mple.com>", "<a@b\rc>"],
)
def test_domain_labels_are_separated_only_by_dots(path):
    assert canonify(path) == (None, None, "")


def test_last_at_sign_before_a_valid_domain_splits_the_mailbox():
    assert canonify("<a@b@example.com>") == ("a@b", "example.com", "local matches atom")


def test_hyphenated_and_numeric_domain_labels_are_accepted():
    assert canonify("<ask@p.qpsmtpd-test.askask.com>")[1] == "p.qpsmtpd-test.askask.com"
    assert canonify("<a@123.example>")[1] == "123.example"


def test_ipv4_address_literal_is_a_domain():
    assert canonify("<ask@[1.2.3.4]>") == ("ask", "[1.2.3.4]", "local matches atom")


def test_ipv4_literal_octets_are_checked_for_shape_only():
    assert canonify("<a@[999.1.1.1]>")[1] == "[999.1.1.1]"


@pytest.mark.parametrize("path", ["<a@[1.2.3]>", "<a@[1.2.3.4.5]>", "<a@[1234.1.1.1]>"])
def test_malformed_ipv4_literal_is_rejected(path):
    assert canonify(path) == (None, None, "")


@pytest.mark.parametrize(
    "literal", ["[IPv6:2001:db8::1]", "[IPv6:::1]", "[IPv6:::ffff:192.0.2.1]"]
)
def test_ipv6_address_literal_is_a_domain(literal):
    assert canonify(f"<user@{literal}>") == ("user", literal, "local matches atom")


@pytest.mark.parametrize(
    "path", ["<a@[ipv6:2001:db8::1]>", "<a@[IPv6:xyz]>", "<a@[tag:stuff]>"]
)
def test_other_address_literals_are_rejected(path):
    assert canonify(path) == (None, None, "")


def test_quoted_local_part_is_unquoted():
    path = '<"musa_ibrah@caramail.comandrea.luger"@wifo.ac.at>'
    assert canonify(path) == ("musa_ibrah@caramail.comandrea.luger", "wifo.ac.at", "")


@pytest.mark.parametrize(
    ("quoted", "local"),
    [
        (r'"foo\ bar"', "foo bar"),
        (r'"a\"b"', 'a"b'),
        (r'"a\\b"', "a\\b"),
        (r'"\a\b\c"', "abc"),
        ('""', ""),
    ],
)
def test_backslash_escapes_in_quoted_local_part_are_removed(quoted, local):
    assert canonify(f"<{quoted}@example.com>") == (local, "example.com", "")


@pytest.mark.parametrize(
    "quoted", ['"foo bar"', '"tab\there"', '"caf\u00e9"', '"a"b"', '"a\\"', '"a"x']
)
def test_quoted_local_part_with_unescaped_specials_falls_through(quoted):
    assert canonify(f"<{quoted}@example.com>") == (None, None, "fall through")


# Address construction


def test_null_address_formats_as_empty_path():
    null = Address.null()
    assert null.user is None
    assert null.host is None
    assert null.is_null
    assert null.format() == "<>"
    assert str(null) == "<>"
    assert null.address() == ""


def test_parsed_empty_path_is_the_null_address():
    null = Address.parse("<>")
    assert null is not None
    assert null.user is None
    assert null.is_null
    assert null == Address.null()


def test_source_route_alone_parses_to_the_null_address():
    assert Address.parse("<@relay.example:>").is_null


def test_parse_splits_user_and_host():
    addr = Address.parse("<foo@example.com>")
    assert addr.user == "foo"
    assert addr.host == "example.com"
    assert addr.format() == "<foo@example.com>"
    assert addr.address() == "foo@example.com"
    assert not addr.is_null


def test_parse_of_bare_postmaster_has_no_host():
    addr = Address.parse("<postmaster>")
    assert (addr.user, addr.host) == ("postmaster", None)
    assert addr.format() == "<postmaster>"
    assert addr.address() == "postmaster"
    assert not addr.is_null


@pytest.mark.parametrize(
    "path",
    ["<user@example.com#>", "foo@example.com", "postmaster", "<@192.168.1.1>", ""],
)
def test_parse_returns_none_for_unacceptable_paths(path):
    assert Address.parse(path) is None


def test_constructor_takes_user_and_host_unchecked():
    addr = Address("matt", "test.com")
    assert addr.format() == "<matt@test.com>"
    assert addr.address() == "matt@test.com"


def test_constructor_without_arguments_is_the_null_address():
    assert Address().is_null


def test_empty_user_without_host_counts_as_null():
    assert Address("", None).is_null
    assert Address("", None).format() == "<>"


def test_empty_user_with_host_is_not_null():
    addr = Address("", "example.com")
    assert not addr.is_null
    assert addr.format() == "<@example.com>"


def test_repr_shows_user_and_host():
    assert (
        repr(Address("foo", "example.com")) == "Address(user='foo', host='example.com')"
    )
    assert repr(Address.null()) == "Address(user=None, host=None)"


def test_notes_are_a_per_address_dict():
    first = Address.parse("<a@example.com>")
    second = Address.parse("<a@example.com>")
    first.notes["seen"] = 1
    assert first.notes == {"seen": 1}
    assert second.notes == {}


def test_addresses_carry_no_instance_dict():
    with pytest.raises(AttributeError):
        Address.null().extra = 1


# Formatting and quoting


@pytest.mark.parametrize(
    "path",
    [
        "<foo@example.com>",
        "<foo@foo.x.example.com>",
        "<ask@[1.2.3.4]>",
        "<user@[IPv6:2001:db8::1]>",
        "<first.last+tag@example.com>",
        "<!#$%&'*+-/=?^_`{|}~@example.com>",
    ],
)
def test_dot_atom_addresses_format_unchanged(path):
    assert Address.parse(path).format() == path


def test_local_part_with_at_sign_is_requoted_with_backslash():
    addr = Address.parse('<"musa_ibrah@caramail.comandrea.luger"@wifo.ac.at>')
    assert addr.user == "musa_ibrah@caramail.comandrea.luger"
    assert addr.format() == r'<"musa_ibrah\@caramail.comandrea.luger"@wifo.ac.at>'
    assert addr.address() == "musa_ibrah@caramail.comandrea.luger@wifo.ac.at"


def test_local_part_with_space_is_quoted():
    addr = Address.parse("<foo bar@example.com>")
    assert addr.user == "foo bar"
    assert addr.format() == r'<"foo\ bar"@example.com>'


def test_ask_with_trailing_space_keeps_it_in_the_address():
    addr = Address.parse("<ask @perl.org>")
    assert addr.address() == "ask @perl.org"
    assert addr.format() == r'<"ask\ "@perl.org>'


def test_quotes_and_backslashes_are_escaped_when_formatting():
    assert Address('a"b\\c', "example.com").format() == r'<"a\"b\\c"@example.com>'


def test_quoted_local_part_without_host_formats_without_at_sign():
    assert Address("foo bar").format() == r'<"foo\ bar">'


@pytest.mark.parametrize(
    "path",
    [
        '<"musa_ibrah@caramail.comandrea.luger"@wifo.ac.at>',
        "<foo bar@example.com>",
        r'<"a\"b\\c"@example.com>',
        r'<"tab\	in"@example.com>',
    ],
)
def test_formatted_address_parses_back_to_the_same_address(path):
    addr = Address.parse(path)
    again = Address.parse(addr.format())
    assert (again.user, again.host) == (addr.user, addr.host)
    assert again.format() == addr.format()


# Comparison and sorting


def test_sorting_orders_by_host_then_user():
    paths = [
        '<"musa_ibrah@caramail.comandrea.luger"@wifo.ac.at>',
        "<foo@example.com>",
        "<ask@perl.org>",
        "<foo@foo.x.example.com>",
        "<jpeacock@cpan.org>",
        "<test@example.com>",
    ]
    ordered = sorted(Address.parse(path) for path in paths)
    assert [addr.format() for addr in ordered] == [
        "<jpeacock@cpan.org>",
        "<foo@example.com>",
        "<test@example.com>",
        "<foo@foo.x.example.com>",
        "<ask@perl.org>",
        r'<"musa_ibrah\@caramail.comandrea.luger"@wifo.ac.at>',
    ]


def test_host_is_compared_as_a_plain_string_not_by_hierarchy():
    assert Address.parse("<a@b.example.org>") < Address.parse("<a@example.com>")


def test_address_literal_brackets_are_ignored_when_sorting():
    # "[" sorts after "Z"; without the brackets "1" sorts before it.
    assert Address.parse("<a@[1.2.3.4]>") < Address.parse("<a@Zeta.example>")


def test_null_address_sorts_first():
    assert Address.null() < Address.parse("<a@a.example>")


def test_comparison_is_case_sensitive():
    assert Address.parse("<Foo@example.com>") != Address.parse("<foo@example.com>")
    assert Address.parse("<a@Example.com>") < Address.parse("<a@example.com>")


def test_equal_addresses_hash_alike():
    first = Address.parse("<foo@example.com>")
    second = Address("foo", "example.com")
    assert first == second
    assert hash(first) == hash(second)
    assert len({first, second}) == 1


def test_address_equals_unbracketed_string():
    assert Address.parse("<foo@foo.x.example.com>") == "foo@foo.x.example.com"
    assert "foo@foo.x.example.com" == Address.parse("<foo@foo.x.example.com>")


def test_address_equals_bracketed_string():
    assert Address.parse("<foo@example.com>") == "<foo@example.com>"
    assert Address.parse("<foo@example.com>") != "<bar@example.com>"


def test_string_without_at_sign_compares_as_null_address():
    assert Address.null() == "postmaster"
    assert Address.null() == "<>"


def test_address_orders_against_strings():
    assert Address.parse("<a@b.example>") < "a@c.example"
    assert Address.parse("<a@c.example>") > "<a@b.example>"


def test_unparseable_bracketed_string_is_never_equal():
    assert Address.parse("<user@example.com>") != "<user@example.com#>"


def test_comparison_with_other_types_is_unsupported():
    addr = Address.parse("<user@example.com>")
    assert not operator.eq(addr, None)
    assert operator.ne(addr, 5)
    with pytest.raises(TypeError):
        sorted([addr, 5])
