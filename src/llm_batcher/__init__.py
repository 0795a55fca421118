"""llm-batcher: batch LLM requests through Redis and stream the answers as Server-Sent Events."""

__version__ = "0.1.0"
