"""Command-line parsing: blob ids that begin with a dash, the shared options, the exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from walrus_p2p import cli
from walrus_p2p.cli import _common, _protect_dash_blob_ids, build_parser, main
from walrus_p2p.types import blob_id_to_text

DASH_ID = blob_id_to_text(bytes([0xF9]) + bytes(31))


def test_the_sample_id_begins_with_a_dash() -> None:
    assert DASH_ID.startswith("-") and len(DASH_ID) == 43


def test_plain_argparse_takes_a_dash_id_for_an_option() -> None:
    """Why the protection exists: without it the read command is refused."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["read", DASH_ID, "-o", "out.bin"])


@pytest.mark.parametrize(
    ("argv", "expected_id"),
    [
        (["read", DASH_ID, "-o", "out.bin"], DASH_ID),
        (["read", "-o", "out.bin", DASH_ID, "--strict"], DASH_ID),
        (["status", DASH_ID, "--json"], DASH_ID),
        (["extend", DASH_ID, "--epochs", "3"], DASH_ID),
        (["delete", "--log-level", "debug", DASH_ID], DASH_ID),
        (["read", "--", DASH_ID, "-o", "x"], None),
    ],
)
def test_dash_blob_ids_parse_as_the_positional(argv: list[str], expected_id: str | None) -> None:
    if expected_id is None:
        # An argv with its own '--' is left exactly as given.
        assert _protect_dash_blob_ids(argv) == argv
        return
    arguments = build_parser().parse_args(_protect_dash_blob_ids(argv))
    assert arguments.blob_id == expected_id
    assert arguments.command == argv[0]


def test_only_well_formed_ids_and_only_blob_id_commands_are_touched() -> None:
    not_an_id = "-" + "A" * 41 + "B"  # 43 characters, but not canonical base64 of 32 bytes
    assert _protect_dash_blob_ids(["read", not_an_id, "-o", "x"]) == ["read", not_an_id, "-o", "x"]
    store = ["store", DASH_ID, "--epochs", "1"]
    assert _protect_dash_blob_ids(store) == store


def test_main_reads_a_dash_id_past_the_parser(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through main(): the command gets as far as loading its (missing) genesis file, so the
    error is about that file and not a usage error about BLOB_ID."""
    missing = tmp_path / "no-genesis.toml"
    code = main(["read", DASH_ID, "-o", str(tmp_path / "out"), "--genesis", str(missing)])
    err = capsys.readouterr().err
    assert "BLOB_ID" not in err
    assert code != 0 and str(missing.name) in err, err


def test_every_exit_code_is_documented_where_it_is_defined() -> None:
    codes = {name: value for name, value in vars(_common).items() if name.startswith("EXIT_")}
    assert len(codes) == 6 and sorted(codes.values()) == list(range(6))
    assert all(getattr(cli, name) == value for name, value in codes.items())
    doc = _common.__doc__ or ""
    for name, value in codes.items():
        assert f"{value}     " in doc and f"``{name}``" in doc, name


def test_log_level_is_one_option_shared_by_every_command() -> None:
    parser = cli.build_parser()
    for command in (["run", "--data-dir", "d"], ["info"], ["devnet"]):
        assert parser.parse_args([*command, "--log-level", "debug"]).log_level == "debug"
    assert parser.parse_args(["run", "--data-dir", "d"]).log_level == "info"
    assert parser.parse_args(["info"]).log_level == "warning"


def test_serve_limits_default_to_the_gateway_and_follow_the_flags() -> None:
    from walrus_p2p.api import GatewayLimits
    from walrus_p2p.cli.gateway import serve_limits

    defaults = serve_limits(build_parser().parse_args(["serve"]))
    assert defaults == GatewayLimits(max_body=64 * 2**20)
    flags = [
        "serve",
        "--max-writes-per-address=3",
        "--max-reads-per-address=5",
        "--max-bytes-in-flight=200000000",
        "--max-connections=50",
        "--max-header-bytes=8192",
        "--header-timeout=2.5",
        "--send-timeout=9",
        "--body-timeout=30",
        "--min-body-rate=4096",
    ]
    limits = serve_limits(build_parser().parse_args(flags))
    assert (
        limits.max_concurrent_writes_per_address,
        limits.max_concurrent_reads_per_address,
        limits.max_bytes_in_flight,
        limits.max_connections,
        limits.max_header_bytes,
        limits.header_timeout_seconds,
        limits.send_timeout_seconds,
        limits.body_timeout_seconds,
        limits.min_body_rate,
    ) == (3, 5, 200_000_000, 50, 8192, 2.5, 9.0, 30.0, 4096)


@pytest.mark.parametrize(
    ("flag", "named"),
    [
        ("--max-reads-per-address=0", "--max-reads-per-address"),
        ("--max-bytes-in-flight=1000", "--max-bytes-in-flight"),
        ("--header-timeout=0", "--header-timeout"),
        ("--max-connections=-1", "--max-connections"),
    ],
)
def test_bad_serve_limits_are_usage_errors_naming_the_flag(flag: str, named: str) -> None:
    from walrus_p2p.cli.gateway import serve_limits

    with pytest.raises(_common.UsageError, match=named):
        serve_limits(build_parser().parse_args(["serve", flag]))


def test_serve_policy_follows_the_flags(tmp_path: Path) -> None:
    from walrus_p2p.cli.gateway import serve_policy

    default = serve_policy(build_parser().parse_args(["serve"]))
    assert (default.cors_origins, default.blocklist, default.max_read_size) == (("*",), None, None)
    blocklist = tmp_path / "blocked.txt"
    blocklist.write_text(blob_id_to_text(bytes(32)) + "\n")
    flags = [
        "serve",
        "--cors-origins=https://a.example,https://b.example:8443",
        f"--blocklist={blocklist}",
        "--max-read-size=1000",
    ]
    policy = serve_policy(build_parser().parse_args(flags))
    assert policy.cors_origins == ("https://a.example", "https://b.example:8443")
    assert (policy.blocklist, policy.max_read_size) == (blocklist, 1000)
    off = serve_policy(build_parser().parse_args(["serve", "--cors-origins=none"]))
    assert off.cors_origins == ()


@pytest.mark.parametrize(
    ("flag", "named"),
    [
        ("--cors-origins=a.example", "CORS origin"),
        ("--max-read-size=-5", "--max-read-size"),
        ("--blocklist=/nonexistent/blocked.txt", "cannot be read"),
    ],
)
def test_bad_serve_policy_flags_are_usage_errors(flag: str, named: str) -> None:
    from walrus_p2p.cli.gateway import serve_policy

    with pytest.raises(_common.UsageError, match=named):
        serve_policy(build_parser().parse_args(["serve", flag]))


def test_serve_jwt_flags(tmp_path: Path) -> None:
    from walrus_p2p.cli.gateway import serve_policy

    secret = tmp_path / "jwt.secret"
    secret.write_text("x" * 40 + "\n")
    flags = ["serve", f"--jwt-key-file={secret}", "--jwt-max-lifetime=60"]
    policy = serve_policy(build_parser().parse_args(flags))
    assert policy.auth is not None
    assert (policy.auth.algorithm, policy.auth.key, policy.auth.max_lifetime_seconds) == (
        "HS256",
        b"x" * 40,
        60,
    )
    assert serve_policy(build_parser().parse_args(["serve"])).auth is None
    secret.write_text("short")
    with pytest.raises(_common.UsageError, match="at least 32 bytes"):
        serve_policy(build_parser().parse_args(["serve", f"--jwt-key-file={secret}"]))
    with pytest.raises(_common.UsageError, match="cannot read"):
        serve_policy(build_parser().parse_args(["serve", "--jwt-key-file=/nonexistent/k"]))
