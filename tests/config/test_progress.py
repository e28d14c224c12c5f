from io import StringIO

from config.progress import ProgressBar, eta_text


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_the_bar_says_done_total_rate_and_time_left():
    clock, out = Clock(), StringIO()
    bar = ProgressBar(4, stream=out, label="recompute", unit="audiences", clock=clock)
    clock.now = 2.0
    bar.advance()
    assert bar.line() == "recompute [#######.......................] 1/4 audiences 25% 0.5/s, 6 s left"


def test_off_a_terminal_it_writes_a_line_per_tenth_not_per_step():
    out = StringIO()
    bar = ProgressBar(1000, stream=out, label="x", clock=Clock())
    for _ in range(1000):
        bar.advance()
    bar.finish()
    assert len(out.getvalue().splitlines()) == 11  # 0% .. 100%, once each, and no repeat at the end


def test_eta_text():
    assert [eta_text(None), eta_text(12.4), eta_text(184), eta_text(3720)] == ["—", "12 s", "3 min 4 s", "1 h 2 min"]
