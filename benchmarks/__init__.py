"""`just bench`: the gateway's throughput, latency and memory against a fast local upstream.

`bench` runs everything; `upstream` is the fast fake provider, `loadgen` the load generator,
`profile` summarises a py-spy profile. See `docs/benchmarks.md` for the layout and results.
"""
