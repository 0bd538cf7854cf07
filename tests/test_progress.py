"""Progress lines: img/s and ETA count training time, not compilation."""

from rapool_jax import progress


class FakeClock:

  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_progress_rate_and_eta_leave_out_the_first_step(monkeypatch, capsys):
  clock = FakeClock()
  monkeypatch.setattr(progress.time, "time", clock)
  line = progress.Progress("joint", total=100, batch_size=8)
  line.start(0)
  clock.now += 30.0            # first step: compile + run
  line.compiled(1)
  clock.now += 9.0             # steps 2..10 at 1 s each
  line.log(10, {"loss": 0.5})
  clock.now += 10.0            # steps 11..20
  line.log(20, {"loss": 0.25})
  first, second = capsys.readouterr().out.splitlines()
  # 9 steps x 8 images in 9 s; 90 steps left at 1 s each.
  assert first == ("[joint] step 10/100 loss=0.5000 8.0 img/s ETA 90s "
                   "(first step 30.0s, compilation included)")
  assert second == "[joint] step 20/100 loss=0.2500 8.0 img/s ETA 80s"


def test_progress_line_right_after_the_first_step(monkeypatch, capsys):
  clock = FakeClock()
  monkeypatch.setattr(progress.time, "time", clock)
  line = progress.Progress("seg", total=1, batch_size=4)
  line.start(0)
  clock.now += 5.0
  line.compiled(1)
  line.log(1, {"loss": 1.0})
  assert capsys.readouterr().out.strip() == (
      "[seg] step 1/1 loss=1.0000 img/s n/a (first step only) "
      "(first step 5.0s, compilation included)")
