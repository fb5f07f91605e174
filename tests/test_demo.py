"""The demo's target choice: the emulated Pi when it can start, else x86-ort, said out loud."""
import pytest

from edgeprune import demo


def test_demo_falls_back_to_the_local_target_and_says_why(monkeypatch, capsys):
    monkeypatch.setattr(demo, "_cannot_emulate", lambda: "not root")
    with demo.demo_target() as target:
        assert target.name == demo.FALLBACK_TARGET
        assert not target.emulated
    err = capsys.readouterr().err
    assert "cannot start emu-rpi4 (not root)" in err and "falling back to the local x86-ort" in err


def test_demo_reuses_a_cached_model(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path))
    cached = tmp_path / "demo" / f"{demo.DEMO_ARCH}-mnist-e{demo.DEMO_EPOCHS}.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"placeholder")
    assert demo.trained_model() == cached
    assert "reusing" in capsys.readouterr().err


@pytest.mark.skipif((not demo.Path("/usr/sbin/sshd").exists() or demo.os.geteuid() != 0)
                    and demo.os.environ.get("CI") != "true", reason="needs root and sshd (fails under CI)")
def test_demo_starts_and_stops_the_emulated_pi():
    from edgeprune.targets import emulate
    with demo.demo_target() as target:
        assert target.name == "emu-rpi4" and emulate.status("emu-rpi4")["running"]
    assert not emulate.status("emu-rpi4")["running"]


@pytest.mark.skipif((not demo.Path("/usr/sbin/sshd").exists() or demo.os.geteuid() != 0)
                    and demo.os.environ.get("CI") != "true", reason="needs root and sshd (fails under CI)")
def test_demo_leaves_an_emulator_it_did_not_start_running(capsys):
    """`make demo` beside a run that brought emu-rpi4 up must not pull the device from under it."""
    from edgeprune.targets import emulate, load_target
    emulate.up(load_target("emu-rpi4"))
    try:
        before = emulate.status("emu-rpi4")["pid"]
        with demo.demo_target() as target:
            assert target.name == "emu-rpi4"
        assert emulate.status("emu-rpi4")["running"] and emulate.status("emu-rpi4")["pid"] == before
        assert "stays up afterwards" in capsys.readouterr().err
    finally:
        emulate.down("emu-rpi4")

