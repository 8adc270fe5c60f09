"""Crash reports: every record of the crash history sent to a Sentry-protocol error
tracker (Sentry, GlitchTip, Bugsink), stored and forwarded.

    dsn          the tracker's address, from a Sentry DSN
    tracebacks   Python tracebacks and faulthandler dumps, parsed from a log's lines
    event        a history record as one Sentry event; the envelope that carries it
    send         one bounded HTTP exchange with the tracker
    queue        what is left to send, the day's bound, the back-off; marks records sent

The init starts ``python3 -m appliance.report`` as a process of its own once the core
has had its start: nothing the tracker sends is read by PID 1.
"""
