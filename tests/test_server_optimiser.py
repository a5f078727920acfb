"""Server optimisers on the aggregated update, against hand-computed steps."""

from __future__ import annotations

import numpy as np
import pytest

from fedvpa.errors import ConfigError
from fedvpa.methods.aggregation import apply_server_step
from fedvpa.methods.local_config import LocalConfig
from fedvpa.methods.server_optimiser import ServerStep, pseudo_gradient, server_update


def arrays(value: float) -> dict[str, np.ndarray]:
    return {"w": np.array([value, -value], np.float32), "count": np.array([3], np.int64)}


def test_pseudo_gradient_skips_integer_arrays() -> None:
    delta = pseudo_gradient(arrays(1.0), arrays(3.0))
    assert set(delta) == {"w"}
    np.testing.assert_allclose(delta["w"], [2.0, -2.0])


def test_plain_fedavg_returns_the_mean_bit_for_bit() -> None:
    mean = {"w": np.array([0.1234567, 2.0], np.float32)}
    out, extra = apply_server_step({"w": np.zeros(2, np.float32)}, mean, {"x": 1}, ServerStep(), 1)
    assert out["w"].tobytes() == mean["w"].tobytes()
    assert extra == {"x": 1}


def test_damped_average_moves_a_fraction_of_the_way() -> None:
    out, _ = server_update(arrays(1.0), arrays(3.0), {}, ServerStep("avg", lr=0.5), 1)
    np.testing.assert_allclose(out["w"], [2.0, -2.0])
    assert out["count"].dtype == np.int64


def test_momentum_accumulates_over_rounds() -> None:
    step = ServerStep("avgm", lr=1.0, beta1=0.5)
    x1, m1 = server_update(arrays(0.0), arrays(1.0), {}, step, 1)  # m = 1, x = 1
    np.testing.assert_allclose(x1["w"], [1.0, -1.0])
    x2, m2 = server_update(x1, arrays(2.0), m1, step, 2)  # m = 0.5 + 1 = 1.5, x = 2.5
    np.testing.assert_allclose(x2["w"], [2.5, -2.5])
    np.testing.assert_allclose(m2["server_m/w"], [1.5, -1.5])


def test_adam_first_step_is_lr_times_sign() -> None:
    """Bias-corrected Adam: m_hat = delta, v_hat = delta^2, so the step is lr * delta/|delta|."""
    step = ServerStep("adam", lr=0.1, beta1=0.9, beta2=0.99, eps=1e-12)
    out, moments = server_update(arrays(1.0), arrays(4.0), {}, step, 1)
    np.testing.assert_allclose(out["w"], [1.1, -1.1], rtol=1e-6)
    np.testing.assert_allclose(moments["server_m/w"], [0.3, -0.3])
    np.testing.assert_allclose(moments["server_v/w"], [0.09, 0.09])


def test_yogi_second_moment_update() -> None:
    step = ServerStep("yogi", lr=0.1, beta1=0.0, beta2=0.9, eps=1e-12)
    moments = {"server_m/w": np.zeros(2), "server_v/w": np.array([5.0, 0.0])}
    _, new = server_update(arrays(0.0), arrays(1.0), moments, step, 3)
    # v - (1 - beta2) * sign(v - d^2) * d^2 with d^2 = 1: 5 - 0.1 = 4.9 and 0 + 0.1 = 0.1
    np.testing.assert_allclose(new["server_v/w"], [4.9, 0.1])


def test_subset_update_leaves_other_arrays_and_moments_alone() -> None:
    glob = {"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)}
    extra = {"server_m/b": np.full(2, 7.0), "other": np.zeros(1)}
    out, new_extra = apply_server_step(
        glob, {"a": np.full(2, 3.0, np.float32)}, extra, ServerStep("avgm", 1.0, 0.5), 2
    )
    np.testing.assert_allclose(out["a"], [3.0, 3.0])
    np.testing.assert_allclose(out["b"], [1.0, 1.0])
    np.testing.assert_allclose(new_extra["server_m/b"], [7.0, 7.0])
    np.testing.assert_allclose(new_extra["server_m/a"], [2.0, 2.0])
    assert "other" in new_extra


def test_bad_settings_name_their_field() -> None:
    with pytest.raises(ConfigError, match="server_opt"):
        LocalConfig(server_opt="sgd")
    with pytest.raises(ConfigError, match="server_beta1"):
        LocalConfig(server_beta1=1.0)
    with pytest.raises(ConfigError, match="prox_mu"):
        LocalConfig(prox_mu=-1.0)
    with pytest.raises(ValueError, match="start at 1"):
        server_update(arrays(0.0), arrays(1.0), {}, ServerStep("adam"), 0)


def test_model_average_is_an_exponential_moving_average_of_the_global_weights() -> None:
    from fedvpa.methods.aggregation import update_model_average
    from fedvpa.methods.base import ServerState, average_or_global

    extra = update_model_average({}, {"w": np.array([2.0], np.float32)}, decay=0.5)
    assert extra["average/w"].tolist() == [2.0]  # starts at the weights
    extra = update_model_average(extra, {"w": np.array([4.0], np.float32)}, decay=0.5)
    assert extra["average/w"].tolist() == [3.0]
    state = ServerState(arrays={"w": np.array([4.0], np.float32)}, extra=extra)
    assert average_or_global(state)["w"].tolist() == [3.0]
    assert update_model_average({}, {"w": np.ones(1)}, decay=0.0) == {}
    plain = ServerState(arrays={"w": np.array([4.0], np.float32)})
    assert average_or_global(plain) is plain.arrays
    with pytest.raises(ConfigError, match="model_average_decay"):
        LocalConfig(model_average_decay=1.0)


def test_wrong_types_in_model_and_local_settings_name_the_key() -> None:
    """Regression: ``--set lr=abc`` ended in a TypeError traceback (exit 1)."""
    from fedvpa.model.config import ModelConfig

    with pytest.raises(ConfigError, match="'lr': expected a number"):
        LocalConfig.from_dict({"lr": "abc"})
    with pytest.raises(ConfigError, match="'odd-encoder': expected true/false"):
        ModelConfig.from_dict({"odd_encoder": "maybe"})
    assert LocalConfig.from_dict({"server_lr": 1}).server_lr == 1.0
    assert ModelConfig.from_dict({"num_prototypes": "auto"}).auto_groups
