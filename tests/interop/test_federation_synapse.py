"""pocketserver and a real Synapse federating on loopback: the transport and trust layer.

Both directions of a profile look-up (Synapse -> pocketserver exercises our key serving
and inbound request checks; pocketserver -> Synapse our discovery, request signing and
key fetching), our notary answering for Synapse's keys, Synapse's notary accepting ours,
and ``check-federation``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from benchmarks import harness
from tests.interop.conftest import REPO, ServerProcess
from tests.interop.synapse import register, start_federating_pocketserver, start_federating_synapse

pytestmark = pytest.mark.interop


@dataclass
class Pair:
    synapse: harness.ServerProcess
    pocket: ServerProcess


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("federation-synapse")
    with start_federating_synapse(tmp / "synapse") as synapse:
        with start_federating_pocketserver(tmp / "pocket") as pocket:
            yield Pair(synapse, pocket)


def _set_displayname(base: str, user_id: str, token: str, name: str) -> None:
    r = httpx.put(
        f"{base}/_matrix/client/v3/profile/{quote(user_id)}/displayname",
        json={"displayname": name}, headers={"Authorization": f"Bearer {token}"}, timeout=30,
    )
    assert r.status_code == 200, r.text


def test_synapse_user_reads_a_pocketserver_profile(pair: Pair) -> None:
    alice, alice_token = register(pair.pocket.base_url, "alice")
    _set_displayname(pair.pocket.base_url, alice, alice_token, "Alice on pocketserver")
    _, bob_token = register(pair.synapse.base_url, "bob")
    r = httpx.get(
        f"{pair.synapse.base_url}/_matrix/client/v3/profile/{quote(alice)}",
        headers={"Authorization": f"Bearer {bob_token}"}, timeout=60,
    )
    assert r.status_code == 200, r.text + pair.pocket.log()[-3000:]
    assert r.json()["displayname"] == "Alice on pocketserver"
    # An unknown user of ours is a 404 on Synapse too.
    r = httpx.get(
        f"{pair.synapse.base_url}/_matrix/client/v3/profile/{quote('@nobody:' + pair.pocket.server_name)}",
        headers={"Authorization": f"Bearer {bob_token}"}, timeout=60,
    )
    assert r.status_code == 404, r.text


def test_pocketserver_user_reads_a_synapse_profile(pair: Pair) -> None:
    carol, carol_token = register(pair.synapse.base_url, "carol")
    _set_displayname(pair.synapse.base_url, carol, carol_token, "Carol on Synapse")
    _, dave_token = register(pair.pocket.base_url, "dave")
    r = httpx.get(
        f"{pair.pocket.base_url}/_matrix/client/v3/profile/{quote(carol)}",
        headers={"Authorization": f"Bearer {dave_token}"}, timeout=60,
    )
    assert r.status_code == 200, r.text + pair.pocket.log()[-3000:]
    assert r.json()["displayname"] == "Carol on Synapse"
    r = httpx.get(
        f"{pair.pocket.base_url}/_matrix/client/v3/profile/{quote(carol)}/displayname", timeout=60
    )
    assert r.json() == {"displayname": "Carol on Synapse"}
    missing = "@nobody:" + pair.synapse.server_name
    r = httpx.get(f"{pair.pocket.base_url}/_matrix/client/v3/profile/{quote(missing)}", timeout=60)
    assert r.status_code == 404 and r.json()["errcode"] == "M_NOT_FOUND", r.text


def test_our_notary_answers_for_synapse_keys(pair: Pair) -> None:
    from pocketserver.protocol.signing import decode_verify_key_base64, verify_json

    synapse_name = pair.synapse.server_name
    r = httpx.post(
        f"{pair.pocket.federation_url}/_matrix/key/v2/query",
        json={"server_keys": {synapse_name: {}}}, verify=False, timeout=60,
    )
    assert r.status_code == 200, r.text
    (response,) = r.json()["server_keys"]
    assert response["server_name"] == synapse_name
    # Signed by Synapse with the key it lists, and by us with ours.
    for key_id, entry in response["verify_keys"].items():
        verify_json(response, synapse_name, key_id, decode_verify_key_base64(entry["key"]))
    ours = httpx.get(f"{pair.pocket.federation_url}/_matrix/key/v2/server", verify=False, timeout=30).json()
    for key_id, entry in ours["verify_keys"].items():
        verify_json(response, pair.pocket.server_name, key_id, decode_verify_key_base64(entry["key"]))
    # The GET form.
    r = httpx.get(
        f"{pair.pocket.federation_url}/_matrix/key/v2/query/{synapse_name}", verify=False, timeout=60
    )
    assert [k["server_name"] for k in r.json()["server_keys"]] == [synapse_name]


def test_synapse_as_notary_accepts_our_keys(pair: Pair) -> None:
    from pocketserver.protocol.signing import decode_verify_key_base64, verify_json

    synapse_fed = f"https://127.0.0.1:{pair.synapse.extra['federation_port']}"
    r = httpx.post(
        f"{synapse_fed}/_matrix/key/v2/query",
        json={"server_keys": {pair.pocket.server_name: {}}}, verify=False, timeout=60,
    )
    assert r.status_code == 200, r.text
    (response,) = r.json()["server_keys"]
    ours = httpx.get(f"{pair.pocket.federation_url}/_matrix/key/v2/server", verify=False, timeout=30).json()
    assert response["verify_keys"] == ours["verify_keys"]
    synapse_keys = httpx.get(f"{synapse_fed}/_matrix/key/v2/server", verify=False, timeout=30).json()
    for key_id, entry in synapse_keys["verify_keys"].items():
        verify_json(response, pair.synapse.server_name, key_id, decode_verify_key_base64(entry["key"]))


def test_check_federation_says_synapse_works(pair: Pair) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pocketserver", "--config", str(pair.pocket.config_path),
         "check-federation", pair.synapse.server_name],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last == f"federation with {pair.synapse.server_name}: working"
    assert "Synapse" in r.stdout  # its /version


def test_check_federation_says_when_it_does_not_work(pair: Pair, tmp_path: Path) -> None:
    # Without loopback in allowed_ip_ranges, this configuration may not reach Synapse.
    config = tmp_path / "strict.toml"
    config.write_text(f'server_name = "check.local"\ndata_dir = "{tmp_path}"\n', encoding="utf-8")
    r = subprocess.run(
        [sys.executable, "-m", "pocketserver", "--config", str(config),
         "check-federation", pair.synapse.server_name],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "refused by federation.allowed_ip_ranges" in r.stdout
    assert r.stdout.strip().splitlines()[-1].startswith(
        f"federation with {pair.synapse.server_name}: NOT working"
    )
