"""Shared fixtures: each lives in tests/fixtures/<name>.py, loaded here as a plugin."""

import os

# Tests never reach the hub; the tiny model is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Cloud compiles refuse the placeholder registry; tests compile for this (fake) one.
os.environ.setdefault("LLMFT_IMAGE_REPO", "europe-docker.pkg.dev/llmft-test/llmft")

pytest_plugins = ["tests.fixtures.models", "tests.fixtures.gcs", "tests.fixtures.smollm2"]
