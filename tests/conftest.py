"""Shared fixtures: each lives in tests/fixtures/<name>.py, loaded here as a plugin."""

import os

# Tests never reach the hub; the tiny model is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["tests.fixtures.models", "tests.fixtures.gcs"]
