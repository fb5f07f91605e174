"""No traceback ever: every failure is one line on stderr, an exit code, and with --json
exactly one JSON object on stdout."""
import subprocess
import sys

import pytest

from edgeprune import cli
from edgeprune.errors import BadInputError, TargetUnreachableError
from tests.cli.conftest import FACTORY, assert_one_error_line, one_json_object, run_module


@pytest.fixture
def corrupt(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"\x00garbage, not a checkpoint")
    return path


def test_corrupt_checkpoint_is_exit_2_one_line(corrupt):
    out = run_module("analyze", corrupt)
    assert out.returncode == 2
    assert_one_error_line(out.stderr, "cannot read", "corrupt.pt")
    assert out.stdout == ""


def test_corrupt_checkpoint_with_json_prints_one_error_object(corrupt, tmp_path):
    out = run_module("prune", corrupt, "--ratio", "0.5", "--out", tmp_path / "p.pt", "--json")
    assert out.returncode == 2
    error = one_json_object(out.stdout)["error"]
    assert error["type"] == "BadInputError" and "cannot read" in error["message"]
    assert_one_error_line(out.stderr, "cannot read")


def test_usage_error_with_json_is_one_object():
    out = run_module("train", "--json", "--epochs", "two")
    assert out.returncode == 2
    error = one_json_object(out.stdout)["error"]
    assert error["type"] == "UsageError" and "--epochs" in error["message"]
    assert_one_error_line(out.stderr, "invalid int value")


def test_unexpected_exception_is_one_line_and_debug_shows_the_traceback():
    model = f"{FACTORY}:broken_net"
    out = run_module("analyze", model, "--json")
    assert out.returncode == 2
    assert_one_error_line(out.stderr, "ValueError: boom in forward", "EDGEPRUNE_DEBUG=1")
    assert one_json_object(out.stdout) == {"error": {"type": "ValueError", "message": "boom in forward"}}
    debug = run_module("analyze", model, env={"EDGEPRUNE_DEBUG": "1"})
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "boom in forward" in debug.stderr


def test_library_warnings_logs_and_thread_errors_print_no_traceback():
    script = (
        "import logging, threading, warnings\n"
        "from edgeprune import cli\n"
        "cli._quiet_libraries()\n"
        "warnings.warn('a library is noisy\\nsecond line')\n"
        "try:\n    raise ValueError('inner')\n"
        "except ValueError:\n    logging.getLogger('somelib').exception('it failed')\n"
        "t = threading.Thread(target=lambda: 1 / 0); t.start(); t.join()\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines == [
        "edgeprune: warning: UserWarning: a library is noisy",
        "edgeprune: somelib: ERROR: it failed",
        "edgeprune: error in a background thread: ZeroDivisionError: division by zero",
    ]


def _raise_from(filename: str, exc: BaseException) -> BaseException:
    try:
        exec(compile("raise exc", filename, "exec"), {"exc": exc})
    except BaseException as raised:  # noqa: BLE001 (the test wants it back)
        return raised
    raise AssertionError("did not raise")


@pytest.mark.parametrize("exc, kind, code", [
    (BadInputError("bad data\nsecond line"), "BadInputError", 2),
    (TargetUnreachableError("board gone"), "TargetUnreachableError", 3),
    (RuntimeError("shapes differ\n  at layer 3"), "RuntimeError", 2),
    (KeyError("weights"), "KeyError", 2),
])
def test_describe_error(exc, kind, code):
    got_kind, message, got_code = cli.describe_error(exc)
    assert (got_kind, got_code) == (kind, code)
    assert "\n" not in message and message


def test_errors_raised_inside_a_transport_are_exit_3():
    exc = _raise_from("/somewhere/device_agents/ssh.py", OSError("connection reset"))
    assert cli.describe_error(exc)[2] == 3
    exc = _raise_from("/somewhere/edgeprune/report.py", OSError("disk full"))
    assert cli.describe_error(exc)[2] == 2


def test_main_in_process_returns_the_code_and_one_json_object(capsys, corrupt):
    code = cli.main(["analyze", str(corrupt), "--json"])
    captured = capsys.readouterr()
    assert code == 2 and "error" in one_json_object(captured.out)
    assert_one_error_line(captured.err, "cannot read")
