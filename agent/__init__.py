"""LookTwice reasoning agent: MLLM brains, the match-of-thought loop, chat, reports and the CLI."""
