"""Harness for end-to-end tests against a real webui: checkpoints, tokenizer cache, server."""
