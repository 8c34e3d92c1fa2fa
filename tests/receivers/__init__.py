"""Real receivers (rsyslogd, ...) started by tests on free local ports."""
