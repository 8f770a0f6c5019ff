"""The system under test as child processes: the reference server (embedded), Redis, a cluster of a logic node
and K gateways. Used by the CLI, the tests and the benchmarks; it imports drivers (for the admin client), never
the CLI."""
