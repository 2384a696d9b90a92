"""Flow control: why a client's reading is paused, and every bound on what the data plane buffers.

Nothing here runs: it is the one list of the limits that make "nothing buffers without a
bound" (SPEC §4) true, read by ClientConnection (downstream.py), Exchange (exchange.py),
UpstreamConnection (upstream.py), the idle pool (pool.py) and Proxy (server.py).

Backpressure goes across the two sides: a client connection stops reading while any
PAUSE_* reason is set in ClientConnection.paused and resumes when the last one is cleared
(ClientConnection.pause_reading/resume_reading); an upstream connection stops reading while
its client's write buffer is full (UpstreamConnection.reading_paused).
"""

from __future__ import annotations

from typing import Final

# Reasons for pausing a client's reading, as bits of ClientConnection.paused.
PAUSE_UPSTREAM: Final = 1   # the upstream's write buffer is full (UpstreamConnection.pause_writing)
PAUSE_BUFFER: Final = 2     # body bytes wait for an upstream connection past BUFFER_HIGH
PAUSE_PIPELINE: Final = 4   # more than PIPELINE_DEPTH requests queued, or parsing stopped on bad input

# What one read of the event loop brings at most (uvloop reads 256 KiB at a time).
READ_BYTES: Final = 256 * 1024

# Pipelined requests accepted ahead of the active one before reading pauses (PAUSE_PIPELINE).
PIPELINE_DEPTH: Final = 16

# Request body bytes an exchange buffers while no upstream connection is attached; past
# this the client's reading pauses (PAUSE_BUFFER) until the connection takes them.
BUFFER_HIGH: Final = 256 * 1024

# Bytes a client may send after an Upgrade request before the upstream answered it; past
# this the client's reading pauses (PAUSE_BUFFER) until the tunnel starts.
UPGRADE_BUFFER_HIGH: Final = 256 * 1024

# Raw bytes a partial request head may take beyond limits.max_header_bytes: one read.
HEAD_SLACK: Final = READ_BYTES

# Chunk framing and trailers of a request body are bounded like a head: limits.max_header_bytes
# plus this slack (what ends a body may share a read with more) plus CHUNK_LINE_BYTES per chunk.
TRAILER_SLACK: Final = 64 * 1024
CHUNK_LINE_BYTES: Final = 32

# Bytes of a head begun in an earlier read that the protocols gather before they parse them
# (see headers.head_may_end and the gather methods of both protocols).
GATHER_BYTES: Final = 32 * 1024

# Idle keep-alive connections kept per server (pool.py); more are closed when released.
MAX_IDLE_PER_SERVER: Final = 512

# Connections the kernel queues for the listeners before Proxy accepts them.
LISTEN_BACKLOG: Final = 4096
PREVIEW_BACKLOG: Final = 1024
