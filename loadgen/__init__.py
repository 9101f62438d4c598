"""loadgen: measure how fast an OpenAI-compatible (vLLM) server serves vision-language work."""

__version__ = "0.1.0"
