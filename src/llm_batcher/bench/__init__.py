"""`llm-batcher bench`: starts a stack (or uses a running one), drives it with a load generator in
a process of its own, and reports throughput, latency and the API's cost against the targets."""
