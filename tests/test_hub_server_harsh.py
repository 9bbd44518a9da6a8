"""The stand-in Hub's harsh side: resolver quota, expiring storage locations, latency, Xet headers
and storage that lies about ranges, each observed over real HTTP (and through huggingface_hub
where the client's view matters)."""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from hub_server import StandInHub, resolve_url
from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.utils import parse_ratelimit_headers

REPO = "EleutherAI/pythia-harsh"
WEIGHTS = "model.safetensors"
DATA = bytes(range(256)) * 40
CONFIG = b'{"model_type": "gpt_neox"}'


class Answer(NamedTuple):
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    seconds: float  # from sending the request to the status line


def fetch(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> Answer:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.netloc, timeout=10)
    try:
        started = time.monotonic()
        target = f"{parts.path}?{parts.query}" if parts.query else parts.path
        connection.request(method, target, headers=headers or {})
        response = connection.getresponse()
        seconds = time.monotonic() - started
        return Answer(response.status, response.headers, response.read(), seconds)
    finally:
        connection.close()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "revision"
    folder.mkdir()
    (folder / WEIGHTS).write_bytes(DATA)
    (folder / "config.json").write_bytes(CONFIG)
    return folder


@pytest.fixture
def hub(stand_in_hub: StandInHub, folder: Path) -> StandInHub:
    stand_in_hub.add_revision(REPO, "main", folder)
    return stand_in_hub


def weights_url(hub: StandInHub) -> str:
    return resolve_url(hub.url, REPO, "main", WEIGHTS)


def location(hub: StandInHub) -> str:
    answer = fetch(weights_url(hub), "HEAD")
    assert answer.status == 302
    return answer.headers["Location"]


# --- resolver quota ----------------------------------------------------------------------------


def test_resolver_quota_answers_429_with_the_hubs_headers(hub: StandInHub) -> None:
    storage = location(hub)
    hub.set_resolver_quota(3, 300)
    hub.clear_requests()
    assert fetch(weights_url(hub), "HEAD").status == 302
    assert fetch(resolve_url(hub.url, REPO, "main", "config.json")).status == 200
    assert fetch(resolve_url(hub.url, "nobody/nothing", "main", "x.json"), "HEAD").status == 404
    limited = fetch(weights_url(hub))
    assert limited.status == 429
    reset = int(limited.headers["Retry-After"])
    assert reset in (299, 300)
    assert limited.headers["RateLimit"] == f'"resolvers";r=0;t={reset}'
    assert limited.headers["RateLimit-Policy"] == '"fixed window";"resolvers";q=3;w=300'
    assert "error" in json.loads(limited.body)
    info = parse_ratelimit_headers(dict(limited.headers))
    assert info is not None
    assert (info.resource_type, info.remaining, info.reset_in_seconds) == ("resolvers", 0, reset)
    assert (info.limit, info.window_seconds) == (3, 300)

    head = fetch(weights_url(hub), "HEAD")
    assert (head.status, head.body) == (429, b"")
    # Neither the API nor the storage counts against the resolvers.
    assert fetch(f"{hub.url}/api/models/{REPO}").status == 200
    assert fetch(storage).status == 200
    assert (hub.resolver_requests, hub.rate_limited, hub.api_requests) == (5, 2, 1)
    hub.clear_requests()
    assert (hub.resolver_requests, hub.rate_limited, hub.api_requests) == (0, 0, 0)
    assert fetch(weights_url(hub), "HEAD").status == 429  # clearing the counts keeps the window


def test_resolver_window_resets_and_quota_can_be_lifted(folder: Path) -> None:
    with StandInHub(resolver_quota=(2, 1.0)) as hub:
        hub.add_revision(REPO, "main", folder)
        assert [fetch(weights_url(hub), "HEAD").status for _ in range(3)] == [302, 302, 429]
        refused = fetch(weights_url(hub), "HEAD")
        assert refused.headers["RateLimit"] == '"resolvers";r=0;t=1'
        assert refused.headers["RateLimit-Policy"] == '"fixed window";"resolvers";q=2;w=1'
        time.sleep(1.05)
        assert [fetch(weights_url(hub), "HEAD").status for _ in range(3)] == [302, 302, 429]
        hub.set_resolver_quota(None)
        assert fetch(weights_url(hub), "HEAD").status == 302
        assert (hub.resolver_requests, hub.rate_limited) == (8, 3)


def test_huggingface_hub_waits_out_a_short_window(hub: StandInHub, folder: Path) -> None:
    hub.set_resolver_quota(1, 1.0)
    started = time.monotonic()
    # The HEAD takes the quota; the GET gets a 429, sleeps till the reset and is served.
    path = Path(hf_hub_download(REPO, "config.json", revision="main"))
    assert path.read_bytes() == CONFIG
    assert hub.rate_limited >= 1
    assert 0.5 < time.monotonic() - started < 5


# --- expiring storage locations ----------------------------------------------------------------


def test_signed_location_is_served_until_it_expires(hub: StandInHub) -> None:
    hub.set_location_ttl(0.4)
    signed = location(hub)
    query = dict(parse_qsl(urlsplit(signed).query))
    assert set(query) == {"repo", "commit", "path", "expires", "sig"}
    assert time.time() < float(query["expires"]) <= time.time() + 0.4
    assert len(query["sig"]) == 64
    whole = fetch(signed)
    assert (whole.status, whole.body) == (200, DATA)
    part = fetch(signed, headers={"Range": "bytes=10-19"})
    assert (part.status, part.body) == (206, DATA[10:20])
    assert hub.expired == 0

    time.sleep(max(0.0, float(query["expires"]) - time.time()) + 0.05)
    late = fetch(signed)
    assert late.status == 403
    assert b"Request has expired" in late.body
    assert fetch(signed, "HEAD").status == 403
    assert fetch(location(hub)).status == 200  # resolving again gives a fresh location
    assert hub.expired == 2


def test_tampered_or_unsigned_locations_are_refused(hub: StandInHub) -> None:
    unsigned = location(hub)
    assert "sig=" not in unsigned and fetch(unsigned).status == 200
    hub.set_location_ttl(60)
    assert fetch(unsigned).status == 403  # issued before the TTL: no signature

    signed = location(hub)
    base, _, query = signed.partition("?")
    pairs = parse_qsl(query)
    forged_sig = [(k, "0" * 64 if k == "sig" else v) for k, v in pairs]
    longer = [(k, str(float(v) + 3600) if k == "expires" else v) for k, v in pairs]
    without_sig = [(k, v) for k, v in pairs if k != "sig"]
    for forged in (forged_sig, longer, without_sig):
        refused = fetch(f"{base}?{urlencode(forged)}")
        assert refused.status == 403
        assert b"SignatureDoesNotMatch" in refused.body
    assert fetch(signed).status == 200
    assert hub.expired == 4

    hub.set_location_ttl(None)
    assert fetch(unsigned).status == 200
    hub.clear_requests()
    assert hub.expired == 0


def test_expiry_is_judged_when_the_request_arrives(folder: Path) -> None:
    with StandInHub(location_ttl=0.15) as hub:
        hub.add_revision(REPO, "main", folder)
        signed = location(hub)
        hub.set_latency(0.3)
        answer = fetch(signed)  # arrives in time, is answered after the expiry
        assert answer.status == 200 and answer.seconds >= 0.3
        assert fetch(signed).status == 403


def test_hf_hub_download_under_short_lived_locations(hub: StandInHub) -> None:
    hub.set_location_ttl(5)
    path = Path(hf_hub_download(REPO, WEIGHTS, revision="main"))
    assert path.read_bytes() == DATA
    assert hub.expired == 0


# --- latency -----------------------------------------------------------------------------------


def test_latency_delays_every_answer(hub: StandInHub) -> None:
    signed = location(hub)
    hub.set_latency(0.1)
    for url, method in (
        (f"{hub.url}/api/models/{REPO}", "GET"),
        (weights_url(hub), "HEAD"),
        (resolve_url(hub.url, REPO, "main", "config.json"), "GET"),
        (signed, "GET"),
    ):
        answer = fetch(url, method)
        assert answer.status in (200, 302)
        assert 0.1 <= answer.seconds < 1.0, url
    hub.set_latency(0.0)
    assert fetch(signed).seconds < 0.1


def test_latency_does_not_serialise_connections(folder: Path) -> None:
    with StandInHub(latency=0.2) as hub:
        hub.add_revision(REPO, "main", folder)
        signed = location(hub)
        urls = [weights_url(hub), signed] * 3
        answers: list[Answer] = []
        threads = [threading.Thread(target=lambda u=u: answers.append(fetch(u))) for u in urls]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(a.status for a in answers) == [200] * 3 + [302] * 3
        assert time.monotonic() - started < 0.6  # six in a row would take 1.2 s


# --- Xet headers -------------------------------------------------------------------------------


def test_lfs_redirect_carries_xet_headers(hub: StandInHub) -> None:
    answer = fetch(weights_url(hub), "HEAD")
    commit = hub.commit_of(REPO, "main")
    sha256 = hashlib.sha256(DATA).hexdigest()
    xet_hash = answer.headers["X-Xet-Hash"]
    assert len(xet_hash) == 64 and int(xet_hash, 16) >= 0 and xet_hash != sha256
    links = [part.strip() for part in answer.headers["Link"].split(",")]
    assert links[0] == f'<{hub.url}/api/models/{REPO}/xet-read-token/{commit}>; rel="xet-auth"'
    assert links[1].endswith(f'/reconstruction/{xet_hash}>; rel="xet-reconstruction-info"')
    assert links[1].startswith("<http://127.0.0.1:")
    # Small files are not LFS: no redirect, no Xet.
    small = fetch(resolve_url(hub.url, REPO, "main", "config.json"), "HEAD")
    assert small.status == 200 and "X-Xet-Hash" not in small.headers


def test_huggingface_hub_without_xet_ignores_the_xet_headers(hub: StandInHub) -> None:
    commit = hub.commit_of(REPO, "main")
    raw = fetch(weights_url(hub), "HEAD")
    metadata = get_hf_file_metadata(hf_hub_url(REPO, WEIGHTS, revision=commit))
    assert metadata.location == raw.headers["Location"]
    assert metadata.location.startswith(f"{hub.cdn_url}/lfs/")
    assert metadata.etag == hashlib.sha256(DATA).hexdigest()
    assert (metadata.size, metadata.commit_hash) == (len(DATA), commit)
    assert metadata.xet_file_data is not None
    assert metadata.xet_file_data.file_hash == raw.headers["X-Xet-Hash"]

    hub.clear_requests()
    path = Path(hf_hub_download(REPO, WEIGHTS, revision="main"))
    assert path.read_bytes() == DATA
    # Seeing Xet metadata, the client does not reuse the HEAD's location: it resolves again.
    assert hub.requests == [
        ("HEAD", f"/{REPO}/resolve/main/{WEIGHTS}"),
        ("GET", f"/{REPO}/resolve/main/{WEIGHTS}"),
        ("GET", f"/lfs/{hashlib.sha256(DATA).hexdigest()}"),
    ]
    assert (hub.resolver_requests, hub.api_requests) == (2, 0)


def test_xet_headers_can_be_switched_off(hub: StandInHub) -> None:
    hub.set_xet_headers(False)
    answer = fetch(weights_url(hub), "HEAD")
    assert answer.status == 302
    assert "X-Xet-Hash" not in answer.headers and "Link" not in answer.headers
    assert Path(hf_hub_download(REPO, WEIGHTS, revision="main")).read_bytes() == DATA
    assert [path for _, path in hub.requests].count(f"/{REPO}/resolve/main/{WEIGHTS}") == 2


# --- lying storage -----------------------------------------------------------------------------


def test_long_answer_has_extra_bytes(hub: StandInHub) -> None:
    hub.break_file(REPO, WEIGHTS, kind="long", offset=5, times=1)
    answer = fetch(location(hub), headers={"Range": "bytes=10-19"})
    assert answer.status == 206
    assert answer.headers["Content-Range"] == f"bytes 10-19/{len(DATA)}"
    assert answer.headers["Content-Length"] == "15"
    assert len(answer.body) == 15 and answer.body[:10] == DATA[10:20]
    honest = fetch(location(hub), headers={"Range": "bytes=10-19"})
    assert (honest.status, honest.body) == (206, DATA[10:20])


def test_short_answer_claims_the_whole_range(hub: StandInHub) -> None:
    hub.break_file(REPO, WEIGHTS, kind="short", offset=4)
    answer = fetch(location(hub), headers={"Range": "bytes=10-19"})
    assert answer.status == 206
    assert answer.headers["Content-Range"] == f"bytes 10-19/{len(DATA)}"
    assert (answer.headers["Content-Length"], answer.body) == ("6", DATA[10:16])


def test_no_range_answer_sends_the_whole_file(hub: StandInHub) -> None:
    hub.break_file(REPO, WEIGHTS, kind="no_range")
    answer = fetch(location(hub), headers={"Range": "bytes=10-19"})
    assert (answer.status, answer.body) == (200, DATA)
    assert "Content-Range" not in answer.headers


def test_wrong_range_answer_is_shifted(hub: StandInHub) -> None:
    hub.break_file(REPO, WEIGHTS, kind="wrong_range", offset=3)
    answer = fetch(location(hub), headers={"Range": "bytes=10-19"})
    assert answer.status == 206
    assert answer.headers["Content-Range"] == f"bytes 13-22/{len(DATA)}"
    assert answer.body == DATA[13:23]
    # Shifted past the end, it is clipped to the file.
    end = fetch(location(hub), headers={"Range": f"bytes={len(DATA) - 5}-"})
    assert end.headers["Content-Range"] == f"bytes {len(DATA) - 2}-{len(DATA) - 1}/{len(DATA)}"
    assert end.body == DATA[-2:]


def test_drip_sends_slowly_and_stops_when_the_client_leaves(hub: StandInHub) -> None:
    hub.break_file(REPO, WEIGHTS, kind="drip", offset=20)
    started = time.monotonic()
    answer = fetch(location(hub), headers={"Range": "bytes=0-9"})
    assert (answer.status, answer.body) == (206, DATA[:10])
    assert 0.35 < time.monotonic() - started < 2.0

    hub.clear_requests()
    parts = urlsplit(location(hub))
    connection = http.client.HTTPConnection(parts.netloc, timeout=10)
    connection.request("GET", f"{parts.path}?{parts.query}")
    response = connection.getresponse()
    assert response.read(2) == DATA[:2]
    connection.close()
    time.sleep(0.3)
    sent = hub.served_bytes(WEIGHTS)
    time.sleep(0.3)
    assert hub.served_bytes(WEIGHTS) == sent < 20


def test_drip_does_not_hold_up_closing(folder: Path) -> None:
    hub = StandInHub()
    hub.add_revision(REPO, "main", folder)
    hub.break_file(REPO, WEIGHTS, kind="drip", offset=1)
    parts = urlsplit(location(hub))
    connection = http.client.HTTPConnection(parts.netloc, timeout=10)
    try:
        connection.request("GET", f"{parts.path}?{parts.query}")
        assert connection.getresponse().read(1) == DATA[:1]
        started = time.monotonic()
        hub.close()
        assert time.monotonic() - started < 1.0
    finally:
        connection.close()
