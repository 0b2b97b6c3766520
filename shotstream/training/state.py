"""Everything a checkpoint needs beyond module weights, as flat safetensors + a JSON part:
optimizer state, RNG states (torch, numpy, python) and EMA weights.

safetensors holds only tensors, so each piece is split into `tensors` (saved as
`<name>.safetensors` in the checkpoint folder) and a JSON-able dict (kept in `config.json`).
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
from torch import nn


def derive_seed(*ints: int) -> int:
    """A stable 63-bit seed from integers, e.g. derive_seed(seed, step, shard) for one batch."""
    return int(np.random.SeedSequence([int(i) % 2**63 for i in ints]).generate_state(2, np.uint64)[0] >> 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Optimizer state


def optimizer_state(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten `opt.state_dict()`: tensors keyed `<prefix>.<param index>.<name>` + JSON rest."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for index, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(opt: torch.optim.Optimizer, prefix: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            index, name = key[len(prefix) + 1 :].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# ---------------------------------------------------------------------------------------------
# RNG states (one set per rank: data-parallel ranks draw different noise)


def capture_rng() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (np_state[1].astype(np.int64), int(np_state[2]), int(np_state[3]), float(np_state[4])),
        "python": (py_state[0], list(py_state[1]), py_state[2]),
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def rng_to_tensors(states: list[dict]) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Per-rank RNG states -> (tensors keyed `<rank>.<source>`, JSON scalars per rank)."""
    tensors, meta = {}, []
    for rank, s in enumerate(states):
        tensors[f"{rank}.torch"] = s["torch"]
        for i, c in enumerate(s["cuda"]):
            tensors[f"{rank}.cuda.{i}"] = c
        keys, pos, has_gauss, gauss = s["numpy"]
        tensors[f"{rank}.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
        version, internal, gauss_next = s["python"]
        tensors[f"{rank}.python"] = torch.tensor(internal, dtype=torch.int64)
        meta.append({"cuda": len(s["cuda"]), "numpy": [pos, has_gauss, gauss], "python": [version, gauss_next]})
    return tensors, meta


def rng_from_tensors(tensors: dict[str, torch.Tensor], meta: list[dict], rank: int) -> dict:
    m = meta[rank]
    return {
        "torch": tensors[f"{rank}.torch"],
        "cuda": [tensors[f"{rank}.cuda.{i}"] for i in range(m["cuda"])],
        "numpy": (tensors[f"{rank}.numpy"].numpy(), *m["numpy"]),
        "python": (m["python"][0], tensors[f"{rank}.python"].tolist(), m["python"][1]),
    }


# ---------------------------------------------------------------------------------------------
# EMA weights


class EMA:
    """Exponential moving average of modules' state (fp32 shadow): shadow = d * shadow + (1 - d) * w."""

    def __init__(self, modules: dict[str, nn.Module], decay: float):
        self.modules, self.decay = modules, decay
        self.shadow = {
            name: {k: v.detach().float().clone() for k, v in m.state_dict().items()} for name, m in modules.items()
        }

    @torch.no_grad()
    def update(self, names, decay: float | None = None) -> None:
        """One averaging step (decay=0 copies the weights: the average starts here)."""
        decay = self.decay if decay is None else decay
        for name in names:
            if name not in self.shadow:
                continue
            for key, value in self.modules[name].state_dict().items():
                shadow = self.shadow[name][key]
                if value.is_floating_point():
                    shadow.lerp_(value.float(), 1.0 - decay)
                else:  # integer buffers (step counters) are copied, not averaged
                    shadow.copy_(value)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{k}": v for name, state in self.shadow.items() for k, v in state.items()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, state in self.shadow.items():
            for key in state:
                state[key].copy_(tensors[f"{name}.{key}"])

    @contextlib.contextmanager
    def swapped_in(self):
        """Run with the EMA weights loaded into the modules (samples, export); restore after."""
        backup = {name: {k: v.clone() for k, v in self.modules[name].state_dict().items()} for name in self.shadow}
        try:
            for name, state in self.shadow.items():
                self.modules[name].load_state_dict(state)
            yield
        finally:
            for name, state in backup.items():
                self.modules[name].load_state_dict(state)
