"""
C{SIGHUP}: reload what can change under a running node, never stop it.

A node run by C{twistd cairn} (or C{cairn-server run}) answers C{kill -HUP}
(systemd's C{ExecReload}) by:

  - re-reading the management API token (C{CAIRN_MGMT_TOKEN_FILE}, or the
    generated C{<data dir>/mgmt.token}; a token given in C{CAIRN_MGMT_TOKEN}
    cannot change without a restart), keeping the current one if the file
    cannot be read;
  - reopening twistd's log file, so that an external rotation (logrotate
    moving the file away) takes effect; twistd itself only offers
    C{SIGUSR1}, which renames the file it has open;
  - logging one line saying what it did.

Without a handler the default action of C{SIGHUP} ends the process at once,
with no log line and no clean stop.
"""

import signal

from twisted.logger import Logger, globalLogPublisher
from twisted.python.logfile import BaseLogFile

from cairn.config import ConfigError
from cairn.management.token import reread_token

log = Logger()


def install(reactor, reload):
    """
    Call C{reload()} in the reactor thread on every C{SIGHUP}.

    @return: a callable that puts the previous handler back.
    """

    def handler(signum, frame):
        # A signal handler may run between any two bytecodes: hand over.
        reactor.callFromThread(reload)

    previous = signal.signal(signal.SIGHUP, handler)
    return lambda: signal.signal(signal.SIGHUP, previous)


def reopen_log_files(publisher=globalLogPublisher) -> int:
    """
    Reopen every log file (L{BaseLogFile}) that a file observer of
    C{publisher} writes to; return how many.

    twistd keeps its log file to itself, so it is found through the
    observers' C{_outFile}: private attributes of Twisted's
    C{FileLogObserver} and C{LogPublisher}, read defensively (with nothing
    found, nothing is reopened and the log line says so).
    """
    reopened = 0
    observers = list(getattr(publisher, "_observers", ()))
    while observers:
        observer = observers.pop()
        # The log gate (L{cairn.logfilter.LogGate}) and the level filter
        # (L{cairn.logs}, a FilteringLogObserver) stand in front of the file
        # observers: look behind them.
        observers.extend(getattr(observer, "observers", ()))
        inner = getattr(observer, "_observer", None)
        if inner is not None:
            observers.append(inner)
        out = getattr(observer, "_outFile", None)
        if isinstance(out, BaseLogFile):
            out.reopen()
            reopened += 1
    return reopened


def reload(api, config) -> None:
    """
    What SIGHUP does: re-read the management token of C{api} (a
    L{cairn.management.app.ManagementAPI}, or None when it is not served)
    as C{config} says, reopen the log files, and say so in one line.
    """
    token = "not served"
    if api is not None:
        try:
            new = reread_token(config, log)
        except ConfigError as e:
            token = f"kept ({e})"
        else:
            token = "unchanged" if new == api.token else "changed"
            api.token = new
    reopened = reopen_log_files()
    log.info("SIGHUP: management token {token}; {count} log file(s) reopened", token=token, count=reopened)
