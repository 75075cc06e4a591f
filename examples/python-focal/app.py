"""Focal MTP loss as a wmtp pipeline plugin written in Python (componentize-py builds the component).

Per token l = (1 - p)^g * CE with p = exp(-CE), averaged per head over valid tokens, then over heads;
weigh returns the true derivative dl/dCE = (1 - p)^g + g * CE * p * (1 - p)^(g - 1) times the mean's
factor 1 / (n_k * H_valid), like examples/focal (Rust).
"""

import math
import tomllib

import wit_world
from componentize_py_types import Err
from wit_world.imports import types

DEFAULT_GAMMA = 2.0
KEYS = [types.ConfigKey("gamma", "2.0", "focusing exponent γ ≥ 0 (0 = plain cross-entropy)")]


class WitWorld(wit_world.WitWorld):
    gamma = DEFAULT_GAMMA

    def describe(self) -> types.Manifest:
        return types.Manifest(
            name="python-focal",
            version="0.1.0",
            description="focal MTP loss: (1 − p)^γ · CE per token (Python)",
            needs=[],
            trains=[types.ParamGroup.LORA, types.ParamGroup.HEADS],
            uses_ce=True,
            uses_values_grad=False,
            config_keys=KEYS,
        )

    def configure(self, toml: str) -> None:
        try:
            table = tomllib.loads(toml)
        except tomllib.TOMLDecodeError as e:
            raise Err(f"plugin config is not valid TOML: {e}")
        unknown = sorted(set(table) - {"gamma"})
        if unknown:
            raise Err(f"unknown plugin config key `{unknown[0]}` (known: gamma)")
        g = table.get("gamma", DEFAULT_GAMMA)
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not 0.0 <= g <= 10.0:
            raise Err(f"plugin config key `gamma` = {g!r} must be a number in [0, 10]")
        WitWorld.gamma = float(g)

    def weigh(self, b: types.Batch, train: bool) -> types.Coefficients:
        h, g = b.heads, WitWorld.gamma
        counts = [0] * h
        for i, m in enumerate(b.ce_mask):
            if m:
                counts[i % h] += 1
        used = sum(1 for c in counts if c)
        coef = [0.0] * len(b.ce)
        loss = 0.0
        for i, m in enumerate(b.ce_mask):
            if not m:
                continue
            ce = b.ce[i]
            p = math.exp(-ce)
            q = 1.0 - p
            unit = 1.0 / (counts[i % h] * used)
            qg = q**g
            slope = g * ce * p * max(q, 5e-324) ** (g - 1.0)  # 0 when γ = 0
            coef[i] = unit * (qg + slope)
            loss += unit * qg * ce
        return types.Coefficients(ce=coef, values=None, loss=loss, metrics=[("focal_loss", loss)])

    def after_step(self, step: int) -> None:
        pass

    def save_state(self) -> bytes:
        return b""

    def load_state(self, state: bytes) -> None:
        pass
