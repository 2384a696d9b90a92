"""heap: how a cutover process keeps the cyclic garbage collector off its answers.

CPython's collector walks every tracked object of the generations it collects; an oldest-
generation pass over a process that has imported aiohttp, read its config and built its
router walks hundreds of thousands of objects that live as long as the process, and takes
tens of milliseconds of one core, during which the process answers nothing: a flip's or
a reload's answer waits for it, a worker's requests stall behind it. settle() is called
once a process serves (the supervisor or the one process, admin/serve.py; each worker,
proxy/agent.py): one collection of what start-up left, then gc.freeze() moves everything
alive into the permanent generation, which no collection walks again. What is made later
(history events, snapshots, connections) is still collected as usual.
"""

from __future__ import annotations

import gc


def settle() -> int:
    """settle: collect what start-up left, then keep everything alive now out of every later
    collection; returns how many objects that froze."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
