"""The tiny LLaVA-OneVision fixtures of tests/agent/mllm, for the tower tests here."""

from tests.agent.mllm.conftest import tiny_llava_dir, tiny_model  # noqa: F401 (fixtures)
