"""The OpenAI-compatible HTTP front door (FastAPI on uvicorn), in the tokenizer service."""
