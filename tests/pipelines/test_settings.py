"""Settings: defaults < .env < environment < explicit values; .env parse errors name file:line."""

from __future__ import annotations

import pytest

from pipelines.settings import SettingsError, load_settings, read_env_file


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("PROJECT_ID", "REGION", "BUCKET_NAME", "LOCAL_DATA_PATH", "MODEL_NAME"):
        monkeypatch.delenv(var, raising=False)


def test_precedence(tmp_path, monkeypatch):
    env = tmp_path / ".env"
    env.write_text(
        "# comment\nexport PROJECT_ID=from-file\nREGION='europe-west4'\n"
        'BUCKET_NAME="gs://file-bucket/"\nMODEL_NAME=Qwen/Qwen2.5-0.5B-Instruct  # inline\n\n'
    )
    s = load_settings(env)
    assert (s.project_id, s.region, s.bucket_uri) == (
        "from-file",
        "europe-west4",
        "gs://file-bucket",
    )
    assert s.model_name == "Qwen/Qwen2.5-0.5B-Instruct"
    assert s.local_data_path == "dataset/sample.jsonl"  # the default
    monkeypatch.setenv("PROJECT_ID", "from-env")
    assert load_settings(env).project_id == "from-env"
    # an explicit value wins; None (a flag not given) falls through
    s = load_settings(env, project_id="from-flag", region=None)
    assert (s.project_id, s.region) == ("from-flag", "europe-west4")


def test_bad_line_names_file_and_line(tmp_path):
    env = tmp_path / ".env"
    env.write_text("PROJECT_ID=p\nthis is not a setting\n")
    with pytest.raises(SettingsError, match=r"\.env:2: expected KEY=VALUE"):
        read_env_file(env)


def test_missing_file_is_empty_and_require_names_flags(tmp_path):
    s = load_settings(tmp_path / "none.env")
    with pytest.raises(SettingsError) as err:
        s.require("project_id", "bucket_name")
    assert str(err.value).startswith("missing --project / PROJECT_ID, --bucket / BUCKET_NAME")
