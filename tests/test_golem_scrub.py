"""Secrets never reach a run's log, however the output is chunked."""

from __future__ import annotations

import itertools
import random

import pytest

from sovrfs.golem import GolemService, Scrubber, SecretSet, StreamScrubber

KEY = "5f3c9a0e7b1d4c2a8e6f0b9d3c7a1e5f"
PASSWORD = "hunter2 & co/2024"


def _stream(secrets: SecretSet, chunks: list[bytes]) -> bytes:
    scrubber = StreamScrubber(secrets)
    return b"".join(scrubber.feed(chunk) for chunk in chunks) + scrubber.flush()


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def test_masks_each_secret_everywhere() -> None:
    secrets = SecretSet([KEY, PASSWORD])
    line = f"GET /me Authorization: Bearer {KEY} password={PASSWORD} again {KEY}\n".encode()
    assert (
        Scrubber(secrets).scrub(line)
        == b"GET /me Authorization: Bearer *** password=*** again ***\n"
    )


def test_url_encoded_form_is_masked_too() -> None:
    secrets = SecretSet([PASSWORD])
    text = "POST /v1/user/login?password=hunter2%20%26%20co%2F2024 body=hunter2+%26+co%2F2024"
    assert Scrubber(secrets).scrub_text(text) == "POST /v1/user/login?password=*** body=***"


def test_secret_split_at_every_boundary() -> None:
    secrets = SecretSet([KEY])
    data = f"[DEBUG ya_payment] request headers: Bearer {KEY}; done\n".encode()
    expected = Scrubber(secrets).scrub(data)
    assert KEY.encode() not in expected
    for cut in range(len(data) + 1):
        assert _stream(secrets, _split(data, [cut])) == expected, cut


def test_byte_by_byte_and_random_chunks() -> None:
    secrets = SecretSet([KEY, PASSWORD, "short"])
    data = (f"a {KEY}{KEY} b {PASSWORD}short {KEY[:10]} end".encode()) * 20
    expected = Scrubber(secrets).scrub(data)
    assert _stream(secrets, [bytes([b]) for b in data]) == expected
    rng = random.Random(7)
    for _ in range(200):
        cuts = rng.sample(range(len(data)), rng.randint(1, 30))
        assert _stream(secrets, _split(data, cuts)) == expected


def test_partial_secret_at_end_is_kept_not_masked() -> None:
    secrets = SecretSet([KEY])
    data = f"tail {KEY[:-1]}".encode()
    assert _stream(secrets, [data[:7], data[7:]]) == data


def test_nested_secrets_mask_the_longer() -> None:
    secrets = SecretSet(["abcd", "abcdefgh"])
    assert Scrubber(secrets).scrub(b"xabcdefghx abcdx") == b"x***x ***x"


def test_secret_added_later_applies_to_next_chunks() -> None:
    secrets = SecretSet()
    scrubber = StreamScrubber(secrets)
    out = scrubber.feed(b"nothing secret yet; ")
    secrets.add(KEY)
    out += scrubber.feed(f"now {KEY[:5]}".encode())
    out += scrubber.feed(f"{KEY[5:]} gone".encode()) + scrubber.flush()
    assert out == b"nothing secret yet; now *** gone"


def test_nested_secrets_split_across_chunks() -> None:
    secrets = SecretSet(["abcd", "abcdefgh"])
    data = b"xabcdefghx abcdx abcdefg"
    expected = Scrubber(secrets).scrub(data)
    for cut in range(len(data) + 1):
        assert _stream(secrets, _split(data, [cut])) == expected, cut


def test_no_secrets_passes_through() -> None:
    scrubber = StreamScrubber(SecretSet())
    assert scrubber.feed(b"abc") + scrubber.flush() == b"abc"


@pytest.mark.parametrize("key", [None, KEY])
def test_service_secrets_lists_only_known_key(tmp_path: object, key: str | None) -> None:
    service = GolemService(tmp_path, mode="external", api_url="http://127.0.0.1:9", app_key=key)  # type: ignore[arg-type]
    # Before the node has answered, sovrfs holds no key it could leak.
    assert service.secrets() == []
