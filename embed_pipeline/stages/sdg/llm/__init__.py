"""LLM synthetic Q&A: endpoint config, a retrying structured-output client with an answer cache, prompts, generator."""
