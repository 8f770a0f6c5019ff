"""Cluster mode: one logic node and K gateway nodes over a real Redis (bus, registries, seq allocator).

    logic node  (python -m reference_server --role logic ...)    storage, seqs, unread, offline, fan-out
    gateway i   (python -m reference_server --role gateway ...)  sockets, local online index, filtering

Both are built from the embedded server's parts (nodes.py). The cluster plugs in through the same interfaces:
the logic node is the cluster fan-out modes' ``roles.Routes``, Redis seqs the store's ``roles.SeqAllocator``,
Redis unread counters a ``CounterStore``. Outside this package only ``__main__`` imports it, for a cluster role.

``chatbench serve --cluster --gateways K`` starts them all on this machine; docs/cluster.md shows how to
start gateways on other hosts.
"""
