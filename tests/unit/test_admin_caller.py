"""Who may POST /reload: Host, Origin and bearer-token checks of the admin endpoint (in-process).

And how what a caller sent is written to the log (``printable``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st

from resolver.config import Admin, ConfigError
from resolver.operations.admin import Caller, admin_token, printable


def status(caller: Caller, **headers: str) -> int:
    # make_mocked_request builds a request object without a socket: only the headers matter here.
    refused = caller.refusal(make_mocked_request("POST", "/reload", headers=headers))
    return 200 if refused is None else refused[0]


def test_loopback_admin_accepts_its_own_literal_and_localhost() -> None:
    caller = Caller("127.0.0.1", 9153, "s3cret")
    ok = {"Authorization": "Bearer s3cret"}
    assert status(caller, Host="127.0.0.1:9153", **ok) == 200
    assert status(caller, Host="localhost:9153", Origin="http://localhost:9153", **ok) == 200
    assert status(caller, Host="127.0.0.2:9153", **ok) == 403
    assert status(caller, Host="127.0.0.1", **ok) == 403  # port 80 implied
    assert status(caller, Host="dnsgate.internal:9153", **ok) == 403
    assert status(caller, Host="127.0.0.1:9153", Origin="null", **ok) == 403
    assert status(caller, Host="127.0.0.1:9153", Origin="https://127.0.0.1:9153", **ok) == 403
    assert status(caller, Host="127.0.0.1:9153", Authorization="Basic s3cret") == 401
    assert status(caller, Host="127.0.0.1:9153", Authorization="bearer s3cret") == 200


def test_ipv6_and_unspecified_addresses() -> None:
    v6 = Caller("::1", 9153, "t")
    assert status(v6, Host="[::1]:9153", Authorization="Bearer t") == 200
    assert status(v6, Host="::1", Authorization="Bearer t") == 403
    anywhere = Caller("0.0.0.0", 9153, "t")
    assert status(anywhere, Host="10.1.2.3:9153", Authorization="Bearer t") == 200
    assert status(anywhere, Host="evil.example:9153", Authorization="Bearer t") == 403


def test_no_token_configured_refuses_everyone() -> None:
    assert status(Caller("127.0.0.1", 9153, None), Host="127.0.0.1:9153", Authorization="Bearer ") == 403


@given(st.text(max_size=60))
def test_any_host_header_is_decided_without_error(host: str) -> None:
    caller = Caller("127.0.0.1", 9153, "t")
    try:
        request = make_mocked_request("POST", "/reload", headers={"Host": host, "Authorization": "Bearer t"})
    except ValueError:  # not representable as an HTTP header at all
        return
    refused = caller.refusal(request)
    assert refused is None or refused[0] == 403
    if refused is None:
        assert host.lower().startswith(("127.0.0.1:", "localhost:"))


def test_token_comes_from_the_environment_first(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    admin = Admin(token_file=token_file, line=7)
    assert admin_token(admin, "c.yaml", {"DNSGATE_ADMIN_TOKEN": "from-env"}) == "from-env"
    assert admin_token(admin, "c.yaml", {}) == "from-file"
    assert admin_token(Admin(), "c.yaml", {}) is None
    token_file.write_text("\n")
    with pytest.raises(ConfigError, match=r"^c\.yaml:7: admin\.token_file: .*: empty$"):
        admin_token(admin, "c.yaml", {})
    with pytest.raises(ConfigError, match="cannot read"):
        admin_token(Admin(token_file=tmp_path / "absent", line=7), "c.yaml", {})


def test_printable_escapes_what_could_forge_a_log_line() -> None:
    assert printable("/reload é") == "/reload é"
    assert printable("/x\r2026 forged\x1b[2K\u202e\\") == r"/x\r2026 forged\x1b[2K\u202e\\"


@given(st.text(max_size=40))
def test_printable_leaves_nothing_unprintable(text: str) -> None:
    assert printable(text).isprintable()
