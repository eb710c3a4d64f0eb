"""Joining: requests validated field by field, the site's policy, the sealed site
round trip (and nobody else opening it), member approvals."""

from __future__ import annotations

import tomllib

import pytest

from mesh import join, site
from mesh.join import JoinError, JoinRequest


def request(**kw: object) -> JoinRequest:
    _, pub = join.new_key()
    fields = {"node_id": "00112233aabbccdd", "hardware": "dmi:4c4c4544-0031-3210-8052-b4c04f4b",
              "macs": ("52:54:00:12:34:56",), "public_key": pub, **kw}
    return JoinRequest(**fields)  # type: ignore[arg-type]


def test_requests_round_trip_and_bad_fields_are_named() -> None:
    r = request()
    assert JoinRequest.from_json(r.to_json()) == r
    for field, value, words in (("node_id", "xyz", "node_id"), ("macs", ["nope"], "macs"),
                                ("public_key", "AAAA", "public_key"),
                                ("hardware", "", "hardware")):
        data = r.to_json()
        data[field] = value
        with pytest.raises(JoinError, match=words):
            JoinRequest.from_json(data)
    with pytest.raises(JoinError, match="JSON object"):
        JoinRequest.from_json([1])


def test_fingerprint_is_the_keys_and_what_the_neighbour_received() -> None:
    r = request(public_key=bytes(32))
    # sha256 of 32 zero bytes begins 66687aadf862bd776c8f...
    assert r.fingerprint == "6668-7aad-f862-bd77-6c8f"
    assert JoinRequest.from_json(r.to_json()).fingerprint == r.fingerprint
    assert request().fingerprint != request().fingerprint  # a fresh key each time


@pytest.mark.parametrize(("policy", "allow", "expected"), [
    ("manual", ("52:54:00:*",), "pending"),
    ("auto", (), "approved"),
    ("allow", ("52:54:00:12:*",), "approved"),
    ("allow", ("dmi:4c4c4544-*",), "approved"),
    ("allow", ("52:54:01:*", "dmi:0000*"), "pending"),
])
def test_policy(policy: str, allow: tuple[str, ...], expected: str) -> None:
    assert join.decide(policy, allow, request()) == expected


def test_the_sealed_site_opens_only_with_the_requests_key() -> None:
    key, pub = join.new_key()
    text = site.new_site_toml("w1").encode()
    sealed = join.seal(pub, text, b"00112233aabbccdd")
    assert text not in join.dumps(sealed)  # nothing readable on the cable
    assert join.open_sealed(key, sealed, b"00112233aabbccdd") == text
    other, _ = join.new_key()
    with pytest.raises(JoinError, match="does not open"):
        join.open_sealed(other, sealed, b"00112233aabbccdd")
    with pytest.raises(JoinError, match="does not open"):  # not replayable to another id
        join.open_sealed(key, sealed, b"ffffffffffffffff")


def test_approvals_need_the_sites_secret() -> None:
    s = site.parse_site(tomllib.loads(site.new_site_toml("w1")))
    mac = join.approval_mac(s.secrets.ospf_key, "00112233aabbccdd")
    assert join.approval_ok(s.secrets.ospf_key, "00112233aabbccdd", mac)
    assert not join.approval_ok(s.secrets.ospf_key, "ffffffffffffffff", mac)
    assert not join.approval_ok("another site's key", "00112233aabbccdd", mac)


def test_site_join_policy_defaults_to_manual_and_is_validated() -> None:
    data = tomllib.loads(site.new_site_toml("w1"))
    assert site.parse_site(data).join == site.JoinSettings("manual", ())
    data["join"] = {"policy": "open"}
    with pytest.raises(site.SiteError) as e:
        site.parse_site(data)
    assert any(p.startswith("join.policy:") and "manual, allow or auto" in p
               for p in e.value.problems)
    data["join"] = {"policy": "allow", "allow": ["52:54:00:*"]}
    assert site.parse_site(data).join == site.JoinSettings("allow", ("52:54:00:*",))
