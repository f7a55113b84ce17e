import pytest

from tokenmill.train import TrainConfig
from tokenmill.train.schedule import SCHEDULES


def lrs(**kw):
    cfg = TrainConfig(**{"max_steps": 100, "warmup_steps": 10, "lr_max": 1.0, "lr_min": 0.1, **kw})
    return [SCHEDULES[cfg.schedule](step, cfg) for step in range(cfg.max_steps)]


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_warmup_is_linear_to_lr_max(name):
    values = lrs(schedule=name)
    assert values[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert max(values) == pytest.approx(1.0)


def test_cosine_ends_at_lr_min_and_falls_monotonically():
    values = lrs(schedule="cosine")[10:]
    assert values[0] == pytest.approx(1.0) and values[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[len(values) // 2] == pytest.approx(0.55, abs=0.02)


def test_wsd_is_flat_then_decays_in_the_last_fraction():
    values = lrs(schedule="wsd", decay_fraction=0.2)
    assert values[10:80] == pytest.approx([1.0] * 70)
    assert values[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(values[80:], values[81:]))


def test_linear_and_constant():
    assert lrs(schedule="linear")[-1] == pytest.approx(0.1)
    assert lrs(schedule="constant")[10:] == pytest.approx([1.0] * 90)
