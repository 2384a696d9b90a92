"""early_signals: the signals `cutover serve` notes while it starts (SPEC §12).

Their default action would end a process that is still starting (SIGUSR1, SIGUSR2) or a
reload would go unseen (SIGHUP). cmd_serve (admin/cli.py) notes them from its first line,
before it imports serve and reads the config; serve (admin/serve.py) notes them on its loop
until it serves, then reloads (SIGHUP) and reopens the access log (SIGUSR1) once however
often each came, and refuses an upgrade (SIGUSR2). Only this module is imported for that, so
the window before the handlers is as short as the CLI's own imports.
"""

from __future__ import annotations

import signal

EARLY_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
