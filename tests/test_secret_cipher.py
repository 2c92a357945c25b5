"""The key file of --encryption-key-file and the sealed form of secrets' data, without
daemons (the end-to-end path is tests/test_secrets_at_rest.py)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from dockyard.common.validation import ValidationError
from dockyard.controller.at_rest import MAGIC, SealedDataError, SecretCipher, sealed_key_id
from dockyard.controller.encryption_keys import (
    KeyFileError,
    add_key,
    create_key_file,
    load_key_file,
    parse_keys,
    promote_key,
    remove_key,
)
from dockyard.controller.secrets import check_secret_spec
from dockyard.v1.workloads_pb2 import ConfigSpec, SecretSpec

KEY_A = base64.b64encode(b"a" * 32).decode()
KEY_B = base64.b64encode(b"b" * 32).decode()
DATA = b"hunter2-\x00-secret"


def cipher(text: str) -> SecretCipher:
    return SecretCipher(parse_keys(text, "test.keys"))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o660, 0o644])
def test_a_key_file_open_to_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "keys"
    create_key_file(path)
    path.chmod(mode)
    with pytest.raises(KeyFileError, match=f"mode {mode:04o}.*chmod 600"):
        load_key_file(path)
    path.chmod(0o400)
    assert load_key_file(path).write_key.id.startswith("key-")


def test_a_symlinked_or_missing_key_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "keys"
    create_key_file(target)
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(KeyFileError, match="cannot open"):
        load_key_file(tmp_path / "link")
    with pytest.raises(KeyFileError, match="cannot open"):
        load_key_file(tmp_path / "none")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no key"),
        ("# only a comment\n", "no key"),
        (f"k1 {KEY_A} extra\n", "line 1: expected `ID BASE64`, found 3 fields"),
        ("\nk1\n", "line 2: expected `ID BASE64`, found 1 fields"),
        (f"-k {KEY_A}\n", "key id '-k' must be"),
        ("k1 not*base64\n", "the key of 'k1' is not base64"),
        (f"k1 {base64.b64encode(b'short').decode()}\n", "is 5 bytes, must be 32"),
        (f"k1 {KEY_A}\nk1 {KEY_B}\n", "line 2: key id 'k1' appears twice"),
    ],
)
def test_a_malformed_key_file_is_refused_naming_the_problem(text: str, problem: str) -> None:
    with pytest.raises(KeyFileError) as raised:
        parse_keys(text, "test.keys")
    assert str(raised.value).startswith("test.keys") and problem in str(raised.value)
    assert KEY_A not in str(raised.value) and KEY_B not in str(raised.value)


def test_the_first_key_seals_and_every_key_opens() -> None:
    old = cipher(f"old {KEY_A}\n")
    both = cipher(f"# rotated\nnew {KEY_B}\n\nold {KEY_A}\n")
    sealed = old.seal("secretdata/s1", DATA)
    assert sealed.startswith(MAGIC) and DATA not in sealed and sealed_key_id(sealed) == "old"
    assert both.open("secretdata/s1", sealed) == DATA
    assert not both.current(sealed) and old.current(sealed)
    resealed = both.seal("secretdata/s1", DATA)
    assert sealed_key_id(resealed) == "new" and both.current(resealed)
    assert old.seal("secretdata/s1", DATA) != sealed  # a fresh nonce each time


def test_a_sealed_value_opens_only_for_its_record_and_untouched() -> None:
    keys = cipher(f"k1 {KEY_A}\n")
    sealed = keys.seal("secretdata/s1", DATA)
    with pytest.raises(SealedDataError, match="secretdata/s2: does not decrypt with key id 'k1'"):
        keys.open("secretdata/s2", sealed)
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    with pytest.raises(SealedDataError, match="does not decrypt"):
        keys.open("secretdata/s1", bytes(flipped))
    with pytest.raises(SealedDataError, match="truncated"):
        keys.open("secretdata/s1", sealed[: len(MAGIC) + 5])


def test_an_unknown_key_id_or_no_key_file_fails_naming_the_key() -> None:
    sealed = cipher(f"gone {KEY_A}\n").seal("secretdata/s1", DATA)
    with pytest.raises(SealedDataError, match=r"key id 'gone', which is not in test.keys \(it "):
        cipher(f"k2 {KEY_B}\n").open("secretdata/s1", sealed)
    with pytest.raises(SealedDataError, match=r"key id 'gone'.*no --encryption-key-file"):
        SecretCipher().open("secretdata/s1", sealed)
    # a key under the right name but other bytes: it does not open, never garbage
    with pytest.raises(SealedDataError, match="does not decrypt with key id 'gone'"):
        cipher(f"gone {KEY_B}\n").open("secretdata/s1", sealed)


def test_plaintext_written_before_encryption_is_read_as_it_is() -> None:
    assert cipher(f"k1 {KEY_A}\n").open("secretdata/s1", DATA) == DATA
    assert SecretCipher().open("secretdata/s1", DATA) == DATA
    assert SecretCipher().seal("secretdata/s1", DATA) == DATA  # off: nothing changes
    assert not cipher(f"k1 {KEY_A}\n").current(DATA)


def test_a_secret_that_looks_sealed_is_refused_but_a_config_is_not() -> None:
    with pytest.raises(ValidationError, match=r"spec\.data"):
        check_secret_spec(SecretSpec(name="s", data=MAGIC + b"x"), sealed=True)
    check_secret_spec(ConfigSpec(name="c", data=MAGIC + b"x"))


def test_rotation_commands_keep_the_file_private_and_well_formed(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    first = create_key_file(path).write_key.id
    with pytest.raises(KeyFileError, match="already exists"):
        create_key_file(path)
    second = add_key(path, first=False).id
    assert load_key_file(path).ids == [first, second]
    promote_key(path, second)
    assert load_key_file(path).ids == [second, first]
    with pytest.raises(KeyFileError, match="is the key that encrypts"):
        remove_key(path, second)
    remove_key(path, first)
    assert load_key_file(path).ids == [second]
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["keys"]  # no temporary file left
