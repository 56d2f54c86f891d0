from __future__ import annotations

import re
from pathlib import Path

import pytest

from majordomo import config
from majordomo.config import SPECS, load_settings, read_sources
from majordomo.errors import ConfigError

pytestmark = pytest.mark.fast

REFERENCE_README = (
    Path(__file__).parents[2] / "shared" / "reference" / "majordomo-gateway-README.md"
)


def test_defaults_need_nothing_configured() -> None:
    s = load_settings()
    assert (s.server.host, s.server.port) == ("0.0.0.0", 7680)
    assert s.storage.postgres.host == ""  # embedded server
    assert s.storage.postgres.database == "majordomo"
    assert s.logging.body_storage == "none"
    assert s.pricing.refresh_interval == 3600.0
    assert s.providers.openai.base_url == "https://api.openai.com"
    assert s.providers.anthropic.base_url == "https://api.anthropic.com"
    assert s.providers.gemini.base_url == "https://generativelanguage.googleapis.com"


# The env names the reference README documents; each must map to the same dotted key here.
REFERENCE_ENV = {
    "MAJORDOMO_STORAGE_POSTGRES_HOST": "storage.postgres.host",
    "MAJORDOMO_STORAGE_POSTGRES_PORT": "storage.postgres.port",
    "MAJORDOMO_STORAGE_POSTGRES_USER": "storage.postgres.user",
    "MAJORDOMO_STORAGE_POSTGRES_PASSWORD": "storage.postgres.password",
    "MAJORDOMO_STORAGE_POSTGRES_DATABASE": "storage.postgres.database",
    "MAJORDOMO_S3_ACCESS_KEY_ID": "s3.access_key_id",
    "MAJORDOMO_S3_SECRET_ACCESS_KEY": "s3.secret_access_key",
    "MAJORDOMO_SERVER_PORT": "server.port",
    "MAJORDOMO_PROVIDERS_OPENAI_BASE_URL": "providers.openai.base_url",
}


@pytest.mark.parametrize(("env", "key"), REFERENCE_ENV.items())
def test_env_names_follow_the_reference(env: str, key: str) -> None:
    assert config.ENV_NAMES[env] == key


def test_reference_readme_env_table_is_covered() -> None:
    if not REFERENCE_README.exists():
        pytest.skip("shared/reference is not beside this checkout")
    documented = set(re.findall(r"`(MAJORDOMO_[A-Z0-9_]+)`", REFERENCE_README.read_text()))
    assert documented, "the reference README lists environment variables"
    assert documented <= set(config.ENV_NAMES)


def test_every_key_has_exactly_one_env_name() -> None:
    assert len(config.ENV_NAMES) == len(SPECS)
    for key, spec in SPECS.items():
        assert spec.env_name == "MAJORDOMO_" + key.upper().replace(".", "_")


def test_precedence_defaults_file_dotenv_environment(tmp_path: Path) -> None:
    (tmp_path / "majordomo.yaml").write_text(
        "server:\n  port: 9000\n  host: 127.0.0.1\n"
        "storage:\n  postgres:\n    host: db.internal\n    user: from_file\n"
    )
    (tmp_path / ".env").write_text(
        "MAJORDOMO_STORAGE_POSTGRES_USER=from_dotenv\nMAJORDOMO_SERVER_HOST=10.0.0.1\n"
    )
    sources = read_sources(cwd=tmp_path)
    assert sources.file_path == tmp_path / "majordomo.yaml"
    s = load_settings(
        sources.file_values,
        sources.dotenv_values,
        {"MAJORDOMO_SERVER_HOST": "::1", "UNRELATED": "x"},
    )
    assert s.server.port == 9000  # file over default
    assert s.storage.postgres.host == "db.internal"  # file
    assert s.storage.postgres.user == "from_dotenv"  # .env over file
    assert s.server.host == "::1"  # environment over .env
    assert s.server.read_timeout == 30.0  # default


def test_explicit_config_path_wins_over_working_directory(tmp_path: Path) -> None:
    (tmp_path / "majordomo.yaml").write_text("server:\n  port: 1111\n")
    other = tmp_path / "other.yaml"
    other.write_text("server:\n  port: 2222\n")
    s = config.load(other, environ={})
    assert s.server.port == 2222


def test_missing_explicit_config_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not exist; check the --config path"):
        config.load(tmp_path / "nope.yaml", environ={})


def test_empty_password_and_special_characters_are_kept_verbatim() -> None:
    password = "p@ss/w?rd:#%20$HOME"
    s = load_settings({}, {"MAJORDOMO_STORAGE_POSTGRES_PASSWORD": password})
    assert s.storage.postgres.password == password
    s = load_settings(
        {"storage": {"postgres": {"password": "secret"}}},
        {"MAJORDOMO_STORAGE_POSTGRES_PASSWORD": ""},
    )
    assert s.storage.postgres.password == ""


def test_dotenv_values_are_not_interpolated(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MAJORDOMO_STORAGE_POSTGRES_PASSWORD='a$b@c'\n")
    s = load_settings({}, read_sources(cwd=tmp_path).dotenv_values)
    assert s.storage.postgres.password == "a$b@c"


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("250ms", 0.25), ("12", 12.0), (7, 7.0)],
)
def test_durations(raw: object, seconds: float) -> None:
    s = load_settings({"pricing": {"refresh_interval": raw}})
    assert s.pricing.refresh_interval == seconds


@pytest.mark.parametrize(
    ("raw", "size"), [("32MiB", 32 * 1024**2), ("1MB", 10**6), ("512", 512), (2048, 2048)]
)
def test_sizes(raw: object, size: int) -> None:
    assert load_settings({"server": {"max_request_body": raw}}).server.max_request_body == size


@pytest.mark.parametrize(
    ("file_values", "env", "message"),
    [
        (
            {},
            {"MAJORDOMO_SERVER_PORT": "http"},
            "MAJORDOMO_SERVER_PORT: 'http' is not allowed for server.port; "
            "expected a whole number from 0 to 65535",
        ),
        (
            {"server": {"port": 70000}},
            {},
            "server.port in majordomo.yaml: 70000 is not allowed for server.port; "
            "expected a whole number from 0 to 65535",
        ),
        (
            {"logging": {"body_storage": "disk"}},
            {},
            "'disk' is not allowed for logging.body_storage; expected one of none, postgres, s3",
        ),
        (
            {},
            {"MAJORDOMO_PRICING_REFRESH_INTERVAL": "hourly"},
            "'hourly' is not allowed for pricing.refresh_interval; expected a duration",
        ),
        (
            {},
            {"MAJORDOMO_STORAGE_AUTO_MIGRATE": "maybe"},
            "'maybe' is not allowed for storage.auto_migrate; expected true or false",
        ),
        (
            {},
            {"MAJORDOMO_PROVIDERS_OPENAI_BASE_URL": "api.openai.com"},
            "expected an http:// or https:// URL",
        ),
        (
            {"server": {"prot": 1}},
            {},
            "majordomo.yaml: unknown setting 'server.prot'; settings here are server.host,",
        ),
        (
            {"serverr": {"port": 1}},
            {},
            "unknown setting 'serverr.port'; sections are auth, cors, jwt, limits, logging,",
        ),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(
    file_values: dict[str, object], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(file_values, env)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_base_url_keeps_a_path_prefix_and_drops_a_trailing_slash() -> None:
    s = load_settings({"providers": {"openai": {"base_url": "http://proxy:8080/openai/"}}})
    assert s.providers.openai.base_url == "http://proxy:8080/openai"


def test_unknown_environment_names_are_reported() -> None:
    environ = {
        "MAJORDOMO_SERVER_PROT": "1",
        "MAJORDOMO_SERVER_PORT": "1",
        "MAJORDOMO_TEST_DSN": "x",
    }
    assert config.unknown_env_names(environ) == ["MAJORDOMO_SERVER_PROT"]


def test_example_config_documents_every_key_with_its_default() -> None:
    import yaml

    example = Path(__file__).parents[1] / "config" / "majordomo.yaml"
    values = yaml.safe_load(example.read_text())
    settings = load_settings(values)  # the example is itself valid
    assert settings == load_settings()  # and states exactly the defaults
    flat = dict(config._flatten(values, "", "example"))
    assert set(flat) == set(SPECS)
