"""Logger.enabled / Plugin.log_enabled: may a caller skip building a log line?"""

from harness import make_qp

from qpsmtpd_py.constants import LOGDEBUG, LOGINFO, LOGWARN
from qpsmtpd_py.log import Logger


def test_a_line_above_the_threshold_goes_nowhere():
    logger = Logger(LOGWARN)
    assert logger.enabled(LOGWARN) and not logger.enabled(LOGINFO)


def test_a_logging_plugin_gets_every_line_whatever_the_threshold():
    logger = Logger(LOGWARN)
    logger.hook_runner = lambda level, hook, plugin, message: True
    assert logger.enabled(LOGDEBUG)


def test_a_plugins_loglevel_argument_counts(tmp_path):
    qp = make_qp(tmp_path, plugins=["rcpt_ok", "queue/discard loglevel 2"])
    qp.logger.level = LOGWARN
    discard = next(p for p in qp.plugins if p.name == "queue::discard")
    assert discard.log_enabled(LOGINFO)  # logged at level 2 whatever the message's own level
