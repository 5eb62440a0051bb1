"""evaluate.service_speed: the runner timed one board at a time, with and without each board's template."""

from __future__ import annotations

import pytest

from apps.industrial.data import load_deeppcb
from apps.industrial.evaluate import service_speed
from tests.apps.industrial.test_data import make_deeppcb


class RecordingRunner:
    def __init__(self):
        self.calls = []

    def predict_batch(self, items):
        self.calls.append([(it.image.shape, it.template is not None) for it in items])
        return [{} for _ in items]


def test_each_board_is_timed_alone_with_and_without_its_template(tmp_path):
    make_deeppcb(tmp_path, per_group=3)
    samples = load_deeppcb(tmp_path)
    runner = RecordingRunner()
    out = service_speed(runner, samples, rounds=2)
    assert all(len(call) == 1 for call in runner.calls)  # one board per call, as a line sending boards in turn
    timed = [call[0][1] for call in runner.calls[2:]]  # after one warm-up call per mode
    assert timed.count(True) == timed.count(False) == 2 * len(samples)
    assert timed[:2] == [True, False]  # the modes alternate board by board
    for mode in ("with_template", "image_only"):
        bps, ms = out[f"service_{mode}_boards_per_second"], out[f"service_{mode}_ms_per_board"]
        assert bps > 0 and ms == pytest.approx(1000 / bps)


def test_boards_without_templates_cannot_time_the_template_path(tmp_path):
    make_deeppcb(tmp_path, per_group=1)
    samples = load_deeppcb(tmp_path)
    for s in samples:
        s.template = None
    with pytest.raises(ValueError, match="templates"):
        service_speed(RecordingRunner(), samples)
