"""`xmodel2 serve`: an OpenAI-compatible HTTP API over a model folder (chat and text completions)."""
