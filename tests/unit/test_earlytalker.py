"""earlytalker's arguments; its timing is tested against the real daemon (test_earlytalker_wire)."""

import pytest
from harness import make_qp


def loaded(tmp_path, line):
    qp = make_qp(tmp_path, plugins=[line, "rcpt_ok"])
    return next(p for p in qp.plugins if p.name == "earlytalker")


def test_defaults(tmp_path):
    plugin = loaded(tmp_path, "earlytalker")
    assert (plugin.wait, plugin.check_at, plugin.defer_reject) == (1.0, {"CONNECT"}, False)
    assert plugin.args["reject"] == "1" and plugin.args["reject_type"] == "perm"


def test_check_at_may_be_given_twice(tmp_path):
    plugin = loaded(tmp_path, "earlytalker check-at connect check-at DATA wait 3")
    assert plugin.check_at == {"CONNECT", "DATA"} and plugin.wait == 3.0


@pytest.mark.parametrize(("action", "reject"), [("deny", "1"), ("denysoft", "1"), ("log", "0")])
def test_legacy_action_sets_reject(tmp_path, action, reject):
    assert loaded(tmp_path, f"earlytalker action {action}").args["reject"] == reject


def test_defer_reject_registers_the_mail_hook(tmp_path):
    qp = make_qp(tmp_path, plugins=["earlytalker defer-reject 1", "rcpt_ok"])
    assert any(entry.name == "earlytalker" for entry in qp.hooks.entries("mail"))


@pytest.mark.parametrize("line", ["earlytalker wait", "earlytalker check-at HELO", "earlytalker wait soon"])
def test_bad_arguments_stop_start_up(tmp_path, line):
    with pytest.raises(AssertionError, match="earlytalker"):
        make_qp(tmp_path, plugins=[line, "rcpt_ok"])
