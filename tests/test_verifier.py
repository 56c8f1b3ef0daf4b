"""Rewards are parsed strictly: a decimal literal or a flat object of a few finite, bounded numbers, and no
error message carries more than a short escaped excerpt of what the container wrote."""

from __future__ import annotations

import pytest

from evalkit.errors import RewardFileEmptyError, RewardParseError
from evalkit.verifier import parse_reward_json, parse_reward_txt


@pytest.mark.parametrize(("text", "value"), [("1", 1.0), (" 0.25\n", 0.25), ("-3", -3.0), ("1e3", 1000.0), (".5", 0.5), ("+2.", 2.0)])
def test_reward_txt_accepts_decimal_literals(text: str, value: float):
    assert parse_reward_txt(text.encode()) == {"reward": value}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1_0", "reward.txt must hold one decimal number, got '1_0'"),
        ("inf", "reward.txt must hold one decimal number, got 'inf'"),
        ("nan", "reward.txt must hold one decimal number, got 'nan'"),
        ("0x10", "reward.txt must hold one decimal number, got '0x10'"),
        ("1 2", "reward.txt must hold one decimal number, got '1 2'"),
        ("1e999", "reward.txt must be a finite number within ±1e+12, got '1e999'"),
        ("2e12", "reward.txt must be a finite number within ±1e+12, got '2e12'"),
    ],
)
def test_reward_txt_refuses_everything_else(text: str, message: str):
    with pytest.raises(RewardParseError) as caught:
        parse_reward_txt(text.encode())
    assert str(caught.value) == message


def test_reward_txt_empty():
    with pytest.raises(RewardFileEmptyError, match="^reward.txt is empty$"):
        parse_reward_txt(b" \n")


def test_messages_carry_a_short_escaped_excerpt_only():
    secret = "FAKE_SECRET=sk-ant-" + "x" * 200
    with pytest.raises(RewardParseError) as caught:
        parse_reward_txt(f"HOME=/root\x00{secret}".encode())
    message = str(caught.value)
    assert len(message) < 120 and "\x00" not in message and "x" * 61 not in message
    shown = f"HOME=/root\\x00FAKE_SECRET=sk-ant-{'x' * (60 - len('HOME=/root?FAKE_SECRET=sk-ant-'))}…"
    assert message == f"reward.txt must hold one decimal number, got '{shown}'"


def test_reward_json_accepts_a_flat_object_of_numbers():
    assert parse_reward_json(b'{"reward": 1, "style": 0.5}') == {"reward": 1.0, "style": 0.5}


def test_reward_json_booleans_count_as_numbers_as_in_harbor():
    assert parse_reward_json(b'{"reward": true, "style": false}') == {"reward": 1.0, "style": 0.0}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"a": 1e308, "b": 1e308}', "reward.json: 'a' must be a finite number within ±1e+12, got '1e+308'"),
        (b'{"a": "1"}', "reward.json: 'a' must be a number, got a string"),
        (b'{"a": {"b": 1}}', "reward.json: 'a' must be a number, got an object"),
        (b'{"a": null}', "reward.json: 'a' must be a number, got null"),
        (b"[1]", "reward.json must be a non-empty object of numbers, got '[1]'"),
        (b"{}", "reward.json must be a non-empty object of numbers, got '{}'"),
        (b"NaN", "reward.json is not valid JSON (unexpected character, expected a JSON value: line 1 column 1 (char 0))"),
    ],
)
def test_reward_json_refuses_everything_else(raw: bytes, message: str):
    with pytest.raises(RewardParseError) as caught:
        parse_reward_json(raw)
    assert str(caught.value) == message


def test_reward_json_bounds_keys_and_their_names():
    many = "{" + ",".join(f'"k{i}": 1' for i in range(65)) + "}"
    with pytest.raises(RewardParseError, match=r"^reward.json has 65 keys; at most 64 are allowed$"):
        parse_reward_json(many.encode())
    with pytest.raises(RewardParseError) as caught:
        parse_reward_json(('{"' + "k" * 500 + '": 1}').encode())
    assert str(caught.value).endswith("is longer than 100 characters") and len(str(caught.value)) < 140
