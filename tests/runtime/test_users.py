"""`resolve_user`: Docker's `--user` forms against an image's /etc/passwd and /etc/group."""

from __future__ import annotations

import pytest

from dockyard.agent.runtime.base import InvalidConfig
from dockyard.agent.runtime.runc.spec import resolve_user

PASSWD = "root:x:0:0::/root:/bin/sh\nwww:x:33:33::/var/www:/bin/sh\nodd:x:¹:0::/:/bin/sh\n"
GROUP = "root:x:0:\nwww:x:33:\nstaff:x:50:www\nweird:x:٣:\n"


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        (None, (0, 0, ())),
        ("www", (33, 33, (50,))),
        ("1000", (1000, 0, ())),
        ("www:root", (33, 0, ())),
        ("1000:50", (1000, 50, ())),
    ],
)
def test_user_forms(user: str | None, expected: tuple[int, int, tuple[int, ...]]) -> None:
    resolved = resolve_user(user, PASSWD, GROUP)
    assert (resolved.uid, resolved.gid, resolved.additional_gids) == expected


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ("¹", "unable to find user ¹"),  # a digit to str.isdigit, not to int()
        ("odd", "no numeric uid"),
        ("www:weird", "no numeric gid"),
        ("nobody", "unable to find user nobody"),
    ],
)
def test_bad_users_are_refused_not_crashes(user: str, message: str) -> None:
    with pytest.raises(InvalidConfig, match=message):
        resolve_user(user, PASSWD, GROUP)
