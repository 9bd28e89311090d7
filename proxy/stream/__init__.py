"""The data plane: a run's body from the backend connection to the client, chunk by chunk.

:mod:`.pump` (decode → meter → hooks → encode → write, pushed from the upstream socket), its
compiled front for text bodies :mod:`.textpath` (Cython), and the sinks it writes to
(:mod:`.sinks`: the client's transport, or a buffer for a non-streaming run)."""
