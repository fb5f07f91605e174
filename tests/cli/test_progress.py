"""Progress bars: tqdm on a terminal, a few clean lines when stderr is a file or a pipe."""
import io
import subprocess
import sys

from edgeprune import _progress
from edgeprune._progress import PlainBar, progress, write


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_prints_one_clean_line_for_a_quick_loop(capsys):
    assert list(progress(range(100), desc="epoch 1/2")) == list(range(100))
    err = capsys.readouterr().err
    assert err == "epoch 1/2: 100/100\n"


def test_slow_loops_print_at_most_a_line_per_quarter(capsys):
    bar = PlainBar(None, total=100, desc="compress", min_interval=0.0)
    for _ in range(100):
        bar.update()
        bar.set_postfix(loss="0.12")
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"compress: {n}/100 loss=0.12" for n in (25, 50, 75, 100)]


def test_manual_bar_with_initial_and_write(capsys):
    with progress(total=10, desc="compress", initial=4) as bar:
        write("baseline measured")
        bar.update(6)
    err = capsys.readouterr().err
    assert err == "baseline measured\ncompress: 10/10\n"
    assert "\r" not in err and "\x1b" not in err


def test_disabled_bar_prints_nothing(capsys):
    assert sum(progress(range(5), desc="x", enabled=False)) == 10
    assert capsys.readouterr().err == ""


def test_a_terminal_gets_tqdm(monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Terminal())
    bar = progress(range(3), desc="epoch")
    assert type(bar).__name__ == "tqdm"
    list(bar)
    assert "\r" in sys.stderr.getvalue()
    assert _progress.stderr_is_terminal()


def test_training_logs_to_a_pipe_are_plain_lines():
    script = ("from edgeprune.data import load_dataset\n"
              "from edgeprune.models import create_model\n"
              "from edgeprune.train import TrainConfig, train\n"
              "data = load_dataset('mnist', 'train').subset(256)\n"
              "train(create_model('resnet20', width=4), data, TrainConfig(epochs=2, batch_size=64))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stderr and "\x1b" not in out.stderr
    lines = [line.split(" loss=")[0] for line in out.stderr.splitlines()]
    # one line at each epoch's end; a slow (loaded) machine adds periodic lines within an epoch
    assert [line for line in lines if line.endswith(": 4/4")] == ["epoch 1/2: 4/4", "epoch 2/2: 4/4"], lines
    assert all(line.startswith(("epoch 1/2: ", "epoch 2/2: ")) for line in lines), lines
