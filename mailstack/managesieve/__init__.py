"""ManageSieve (RFC 5804): users manage their Sieve scripts over the network.

``grammar`` reassembles commands (strings, literals) with bounded sizes; ``core`` is the
protocol state machine without I/O; ``scripts`` carries out script requests on the
user's ``mailstack.sieve.store.ScriptStore`` (where Pigeonhole keeps them); ``server`` is
the thin asyncio adapter, the ``managesieve`` service of ``mailstack serve``.
"""
