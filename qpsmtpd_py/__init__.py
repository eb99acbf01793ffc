"""qpsmtpd-py: qpsmtpd's plugin-driven SMTP front end, re-implemented on Twisted."""

__version__ = "0.1.0"
