"""The service around one library pipeline: what makes ``shmpiped run`` a well-behaved daemon.

``daemon`` (signals, sd_notify, reload, exit statuses, the 10 Hz main loop),
``supervisor`` (restart back-off, budget, watchdog verdicts), ``httpapi``
(/metrics, /healthz, /readyz, /status), ``metrics`` (one Prometheus collector
over a snapshot), ``notify`` (sd_notify) and ``control_socket`` (the Unix-socket
control server and the ``shmpiped ctl`` client).

This package imports the library (``shmpiped.manager``, ``shmpiped.config``,
...); nothing in the library imports it.
"""
