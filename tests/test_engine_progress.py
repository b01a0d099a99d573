"""Progress reporting: periodic plain lines for logs, a tqdm bar on terminals, silence off rank 0."""

from __future__ import annotations

import io

from densepred.engine.progress import Progress, format_eta


def test_plain_lines_every_n_steps_and_at_the_end():
    stream = io.StringIO()
    progress = Progress(total=25, start=0, desc="job/finetune", every=10, stream=stream, tty=False)
    for step in range(1, 26):
        progress.update(step, loss=1.0 / step, lr=1e-3, images_per_s=12.0)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert [line.split()[2] for line in lines] == ["10/25", "20/25", "25/25"]
    assert lines[0].startswith("[job/finetune] step 10/25 (40%) loss 0.1000 lr 1.00e-03 12.0 img/s eta ")
    assert lines[-1].endswith("eta 0:00:00")


def test_tty_uses_a_bar_with_loss_and_throughput():
    stream = io.StringIO()
    progress = Progress(total=5, start=2, desc="bar", every=1, stream=stream, tty=True)
    progress.update(3, loss=0.5, lr=1e-4, images_per_s=7.5)
    progress.write("a message")
    progress.close()
    text = stream.getvalue()
    assert "3/5" in text and "loss=0.5000" in text and "img_s=7.5" in text and "[bar] a message" in text


def test_disabled_progress_prints_nothing():
    stream = io.StringIO()
    progress = Progress(total=5, start=0, desc="x", every=1, enabled=False, stream=stream, tty=True)
    progress.update(5, 1.0, 1.0, 1.0)
    progress.write("hidden")
    progress.close()
    assert stream.getvalue() == ""


def test_format_eta():
    assert format_eta(3725) == "1:02:05" and format_eta(float("nan")) == "?"


def test_slow_rates_keep_their_digits():
    from densepred.engine.progress import format_rate

    assert [format_rate(r) for r in (35.24, 0.1, 0.024198, 0.0)] == ["35.2", "0.1", "0.024", "0"]
