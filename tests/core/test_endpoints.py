from __future__ import annotations

import pytest

from qt_cli.core.endpoints import parse_endpoint
from qt_cli.core.errors import EndpointError


@pytest.mark.parametrize(
    ("uri", "kind", "expected"),
    [
        ("tcp://127.0.0.1:5555", "zmq", {"scheme": "tcp", "host": "127.0.0.1", "port": 5555}),
        ("tcp://*:5556", "zmq", {"host": "*", "port": 5556}),
        ("tcp://[::1]:5557", "zmq", {"host": "[::1]", "port": 5557}),
        ("ipc:///tmp/qt-ticks", "zmq", {"scheme": "ipc", "path": "/tmp/qt-ticks"}),
        ("valkey://localhost", "valkey", {"host": "localhost", "port": 6379, "db": 0}),
        ("valkey://10.0.0.5:6380/2", "valkey", {"host": "10.0.0.5", "port": 6380, "db": 2}),
        ("valkeys://cache.example:6390/1", "valkey", {"scheme": "valkeys", "port": 6390, "db": 1}),
        ("redis://h:1/3", "valkey", {"scheme": "valkey", "db": 3}),
        (
            "unix:///run/valkey.sock",
            "valkey",
            {"scheme": "unix", "path": "/run/valkey.sock", "db": 0},
        ),
        ("unix:///run/valkey.sock?db=4", "valkey", {"db": 4}),
        ("-", "stdio", {"format": "jsonl"}),
        ("ticks.jsonl", "file", {"format": "jsonl", "path": "ticks.jsonl"}),
        ("/data/day.parquet", "file", {"format": "parquet"}),
        ("export.CSV", "file", {"format": "csv"}),
    ],
)
def test_valid_endpoints(uri: str, kind: str, expected: dict[str, object]) -> None:
    endpoint = parse_endpoint(uri)
    assert endpoint.kind == kind
    for name, value in expected.items():
        assert getattr(endpoint, name) == value, name


def test_credentials_are_parsed_and_masked() -> None:
    endpoint = parse_endpoint("valkey://trader:s3cret@10.0.0.5:6379/0")
    assert (endpoint.username, endpoint.password) == ("trader", "s3cret")
    assert "s3cret" not in endpoint.uri
    assert "s3cret" not in str(endpoint)
    password_only = parse_endpoint("valkey://:p%40ss@host")
    assert password_only.password == "p@ss"


def test_zmq_address() -> None:
    assert parse_endpoint("tcp://127.0.0.1:5555").zmq_address == "tcp://127.0.0.1:5555"
    assert parse_endpoint("ipc:///tmp/x").zmq_address == "ipc:///tmp/x"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("", "endpoint is empty"),
        ("http://host:80", "unknown scheme 'http'"),
        ("tcp://127.0.0.1", "the port is missing"),
        ("tcp://127.0.0.1:abc", "port 'abc' is not a number"),
        ("tcp://127.0.0.1:70000", "port 70000 is out of range"),
        ("tcp://:5555", "the host is missing"),
        ("tcp://bad host:5555", "'bad host' is not a valid host"),
        ("ipc://", "the ipc path is missing"),
        ("valkey://host:6379/x", "database 'x' is not a number"),
        ("valkey://host:0", "port 0 is out of range"),
        ("unix://relative.sock", "needs an absolute path"),
        ("unix:///s.sock?db=x", "db must be a number"),
        ("ticks.txt", "not a known file type"),
    ],
)
def test_invalid_endpoints_name_the_bad_part(uri: str, message: str) -> None:
    with pytest.raises(EndpointError, match=message.replace("(", r"\(")):
        parse_endpoint(uri)


def test_password_never_in_error() -> None:
    with pytest.raises(EndpointError) as info:
        parse_endpoint("valkey://u:topsecret@host:6379/zz")
    assert "topsecret" not in str(info.value)


def test_a_user_without_password_is_an_acl_user_and_ca_comes_from_the_query() -> None:
    endpoint = parse_endpoint("valkeys://trader@10.0.0.5:6380/2?ca=/etc/qt/ca.pem")
    assert (endpoint.username, endpoint.password) == ("trader", "")
    assert (endpoint.scheme, endpoint.port, endpoint.db, endpoint.ca) == (
        "valkeys",
        6380,
        2,
        "/etc/qt/ca.pem",
    )
    assert parse_endpoint("valkey://trader@h:1?ca=/x/ca.pem").ca == "/x/ca.pem"
    assert str(endpoint) == "valkeys://trader@10.0.0.5:6380/2?ca=/etc/qt/ca.pem"
