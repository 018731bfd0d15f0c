"""``shmpipeline`` served by shmpiped: importing this package makes ``shmpipeline`` the ``shmpiped`` package.

Every public module of shmpipeline 1.3.0 resolves to shmpiped's module of the
same name (``shmpipeline.config`` is ``shmpiped.config``); see ``shmpiped.compat``.
"""

from shmpiped.compat import alias_shmpipeline

alias_shmpipeline()
