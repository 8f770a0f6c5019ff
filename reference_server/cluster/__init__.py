"""Cluster mode: one logic node and K gateway nodes over a real Redis (bus, registries, seq allocator).

    logic node  (python -m reference_server --role logic ...)    storage, seqs, unread, offline, fan-out
    gateway i   (python -m reference_server --role gateway ...)  sockets, local online index, filtering

``chatbench serve --cluster --gateways K`` starts them all on this machine; docs/cluster.md shows how to
start gateways on other hosts.
"""
