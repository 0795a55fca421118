"""`llm-batcher operator`: ties the workers' Redis consumers to their pods on Kubernetes (kopf)."""
