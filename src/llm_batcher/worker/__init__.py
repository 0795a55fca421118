"""The batching worker: claims tasks from Redis, runs the LLM on batches, relays its output."""
