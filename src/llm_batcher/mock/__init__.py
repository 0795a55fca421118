"""The mock LLM, `llm-mock FILE...`: echoes its contexts as a batched model would.

See docs/protocol.md, part 2.
"""
