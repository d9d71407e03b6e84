"""runner.redact: known secrets are replaced everywhere; key-shaped text from outside is masked."""
import pytest

from runner.redact import REDACTED, mask_secrets, redact, redact_bytes, redact_url

KEY = "sk-proj-0123456789abcdef"


@pytest.mark.parametrize("text, secrets, expected", [
    (f"bad key {KEY}!", (KEY,), f"bad key {REDACTED}!"),
    (f"{KEY} and {KEY}", (KEY,), f"{REDACTED} and {REDACTED}"),
    ("nothing secret here", (KEY,), "nothing secret here"),
    ("short words stay", ("short",), "short words stay"),  # under MIN_SECRET_LEN: not a secret
    ("no secrets given", (), "no secrets given"),
])
def test_redact_replaces_every_known_secret(text, secrets, expected):
    assert redact(text, secrets) == expected
    assert redact_bytes(text.encode(), secrets) == expected.encode()


@pytest.mark.parametrize("text, expected", [
    ("Incorrect API key provided: sk-proj-abcDEF123456789xyz.", "Incorrect API key provided: sk-***"),
    ("masked sk-abc*****xyz here", "masked sk-*** here"),
    ("https://x.azure.com/d?api-key=SECRET&v=1", "https://x.azure.com/d?api-key=***&v=1"),
    ("https://blob/x?sv=1&sig=abc%2F", "https://blob/x?sv=1&sig=***"),
    ("a plain message", "a plain message"),
])
def test_mask_secrets_masks_what_looks_like_a_secret(text, expected):
    assert mask_secrets(text) == expected


@pytest.mark.parametrize("url, expected", [
    ("redis://:hunter2@h:6379/0", "redis://:***@h:6379/0"),
    ("rediss://runner:hunter2@h:6380/0", "rediss://runner:***@h:6380/0"),
    ("redis://h:6379/0?password=hunter2&db=1", "redis://h:6379/0?password=***&db=1"),
    ("redis://runner@h:6379/0", "redis://runner@h:6379/0"),
    ("redis://h:6379/0", "redis://h:6379/0"),
])
def test_redact_url_masks_the_password_in_user_info_and_query(url, expected):
    assert redact_url(url) == expected
