"""The reference server's abuse suite: hostile clients, a canary group measured throughout, the server's memory.

``tools`` holds what both parts use: a raw WebSocket client that can say anything (malformed frames, pipelined
writes, never reading), the canary, the server process' RSS and CPU. The fast part is
``tests/integration/test_abuse.py`` (in ``make test``); the long part is ``python -m tests.abuse`` (``make
abuse``), whose figures are in docs/abuse.md.
"""
