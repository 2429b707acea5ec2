"""Checkpoints: what a training run saves, how it is written safely and read back.

A checkpoint is a dict of tensors, numbers, strings, None and lists or dicts of those, so
``torch.load(..., weights_only=True)`` reads it without running code from the file. It is
written atomically (a crash never leaves half a file). ``ckpt.pt`` is the run's last state,
enough to resume it exactly; ``best.pt`` (``TrainConfig.keep_best``) the state at its lowest
validation estimate. Both carry the run's ``run_id``, so a file left by another run is never
taken for this one's.
"""
from __future__ import annotations

import os
import pickle
import uuid
from pathlib import Path

import torch
import torch.nn as nn

from .evaluate import best_evaluation

CHECKPOINT_NAME = "ckpt.pt"
BEST_CHECKPOINT_NAME = "best.pt"
MODEL_KEYS = ("model", "model_spec")
RESUME_KEYS = (*MODEL_KEYS, "optimizer", "scaler", "train_config", "iter", "history", "ranks")

# Training settings a resumed run may change: where it stops, how often and how long it
# evaluates, and where and how fast it computes. Every other field shapes the weights
# (schedule, batch, optimiser, seed, time budget), so a different value would silently make a
# different run. max_iters may grow as long as the schedule stays: the cosine ends at
# lr_decay_iters (which defaults to max_iters, so set it explicitly in a run you mean to extend).
MAY_CHANGE_ON_RESUME = frozenset({"max_iters", "eval_interval", "eval_iters", "device", "dtype", "compile",
                                  "peak_flops", "keep_best"})


class CheckpointError(ValueError):
    """A checkpoint cannot be used: unreadable, not a checkpoint, or from a different run."""


def new_run_id() -> str:
    """A fresh identifier for a run, saved in each of its checkpoints."""
    return uuid.uuid4().hex


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically, so that a crash never leaves half a file.

    The state goes to ``<path>.tmp``, is flushed to the disk (fsync), then renamed over
    ``path``. If anything fails, the temporary file is removed and ``path`` is unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable. POSIX only: Windows cannot open a folder as a file."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename still happened
        pass
    finally:
        os.close(fd)


def model_spec(model: nn.Module) -> dict:
    """What ``build_model`` needs to recreate ``model``'s architecture."""
    if hasattr(model, "config") and hasattr(model.config, "to_dict"):
        return {"class": type(model).__name__, "config": model.config.to_dict()}
    if hasattr(model, "vocab_size"):
        return {"class": type(model).__name__, "config": {"vocab_size": model.vocab_size}}
    raise ValueError(f"cannot describe a {type(model).__name__} for a checkpoint")


def build_model(spec: dict) -> nn.Module:
    """A freshly initialised model of the architecture ``model_spec`` described."""
    from .bigram import BigramLanguageModel
    from .model import GPT, GPTConfig

    if spec["class"] == "GPT":
        return GPT(GPTConfig.from_dict(spec["config"]))
    if spec["class"] == "BigramLanguageModel":
        return BigramLanguageModel(spec["config"]["vocab_size"])
    raise ValueError(f"unknown model class {spec['class']!r} in checkpoint")


def read_checkpoint(path: str | Path, required: tuple[str, ...] = MODEL_KEYS) -> dict:
    """The dict saved in ``path``, loaded onto the CPU without running code from the file.

    Raises ``CheckpointError`` for a truncated or foreign file, one that holds Python objects
    (loading those could run code: they are refused), or a dict that lacks ``required`` keys,
    and ``OSError`` (``PermissionError``, ...) when the file cannot be opened at all.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # not the file's fault: permissions, a missing folder, a full disk
    except Exception as e:  # zip errors, EOF, unpickling errors, ...: the file is not usable
        if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
            reason = ("it holds Python objects besides tensors and plain data, and loading those could run "
                      "code, so it is refused; use checkpoints written by nanogpt.train")
        else:
            first_line = next((line for line in str(e).splitlines() if line.strip()), "")
            reason = (f"it is truncated or not a PyTorch checkpoint ({type(e).__name__}"
                      f"{': ' + first_line[:200] if first_line else ''}); train again or copy it again")
        raise CheckpointError(f"cannot read the checkpoint {path}: {reason}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a checkpoint from nanogpt.train")
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(f"{path} is not a complete checkpoint from this version of nanogpt.train: "
                              f"it lacks {', '.join(missing)}; start a new run in another folder")
    return state


def load_weights(model: nn.Module, weights: dict, path: str | Path) -> None:
    """Copy ``weights`` into ``model``'s own tensors; a mismatch is a ``CheckpointError`` naming ``path``."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"the weights in {path} do not fit the model its model_spec describes "
                              f"({first_line[:300]}); the file is damaged or was edited") from e


def kept_best(folder: Path, last: dict) -> dict | None:
    """``folder``'s best.pt, read, when it belongs to the run whose last state is ``last``, else None."""
    best = folder / BEST_CHECKPOINT_NAME
    if not best.exists() or not last.get("run_id"):
        return None
    state = read_checkpoint(best, MODEL_KEYS)
    return state if state.get("run_id") == last["run_id"] else None


def load_checkpoint(path: str | Path, device: str = "cpu"):
    """Load ``path``: returns (model, tokenizer, state). ``state["iter"]`` is its step.

    ``path`` is a checkpoint file, or a run's folder: then the weights the run ended with,
    ``best.pt`` when it kept its best (``TrainConfig.keep_best``), else ``ckpt.pt``.
    Loads with ``weights_only=True``: a shared checkpoint cannot run code. Raises
    ``CheckpointError`` when the file cannot be used (the message says why).
    """
    from .tokenizer import tokenizer_from_dict

    path = Path(path)
    if path.is_dir():
        last = path / CHECKPOINT_NAME
        if not last.exists():
            raise FileNotFoundError(f"no checkpoint at {last}")
        state = read_checkpoint(last, MODEL_KEYS)
        best = kept_best(path, state) if state.get("train_config", {}).get("keep_best") else None
        path, state = (path / BEST_CHECKPOINT_NAME, best) if best is not None else (last, state)
    elif not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    else:
        state = read_checkpoint(path, MODEL_KEYS)
    try:
        model = build_model(state["model_spec"])
        tokenizer = tokenizer_from_dict(state["tokenizer"]) if state.get("tokenizer") else None
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} describes a model or tokenizer this version cannot build: {e}") from e
    load_weights(model, state["model"], path)
    model.to(device)
    return model, tokenizer, state


def resume_differences(state: dict, model: nn.Module, train_config: dict, world_size: int) -> list[str]:
    """How the run in ``state`` differs from the one about to resume it (empty: compatible)."""
    differences = []
    saved_model, new_model = state["model_spec"], model_spec(model)
    if saved_model.get("class") != new_model["class"]:
        differences.append(f"model class: saved {saved_model.get('class')}, now {new_model['class']}")
    saved_config = saved_model.get("config", {})
    for key, value in new_model["config"].items():  # keys only in the saved spec no longer exist
        if saved_config.get(key, value) != value:
            differences.append(f"model {key}: saved {saved_config[key]!r}, now {value!r}")

    def schedule_view(config: dict) -> dict:  # where the cosine ends is what matters, not how it was set
        return {**config, "lr_decay_iters": config.get("lr_decay_iters") or config.get("max_iters")}

    saved_train, new_train = schedule_view(state["train_config"]), schedule_view(train_config)
    for key, value in new_train.items():
        if key not in MAY_CHANGE_ON_RESUME and key in saved_train and saved_train[key] != value:
            differences.append(f"{key}: saved {saved_train[key]!r}, now {value!r}")
    if len(state["ranks"]) != world_size:
        differences.append(f"processes: saved by {len(state['ranks'])}, now {world_size} "
                           f"(each rank has its own random and data state)")
    return differences


def resume_state(path: Path | None, model: nn.Module, train_config: dict, world_size: int,
                 keep_best: bool) -> tuple[dict, dict | None]:
    """The checkpoint at ``path`` to resume ``model``'s run from, checked, and its best weights.

    Raises ``CheckpointError`` if the file is unreadable or was written by a different run
    (another model, schedule, batch or number of processes). With ``keep_best`` the weights of
    the best evaluation so far come back too (None before any): the checkpoint's own when it
    was written at that evaluation, else the run's best.pt; a best.pt of another run, or none,
    is an error now rather than after training.
    """
    if path is None:
        raise FileNotFoundError("resume=True needs out_dir: the folder that holds the run's ckpt.pt")
    if not path.exists():
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {path}: "
                                "train without resume first, or point out_dir at the run's folder")
    state = read_checkpoint(path, RESUME_KEYS)
    differences = resume_differences(state, model, train_config, world_size)
    if differences:
        raise CheckpointError(
            f"cannot resume from {path}: it was saved by a different run ({'; '.join(differences)}). "
            f"Resume with the saved settings (only {', '.join(sorted(MAY_CHANGE_ON_RESUME))} may change), "
            "or start a new run in another folder (a new --out)")
    best = best_evaluation(state["history"].get("evals", [])) if keep_best else None
    if best is None:
        return state, None
    if best["iter"] == state["iter"]:
        return state, state["model"]
    best_path = path.with_name(BEST_CHECKPOINT_NAME)
    saved = read_checkpoint(best_path) if best_path.exists() else None
    if saved is None or saved.get("run_id") != state.get("run_id") or saved.get("iter") != best["iter"]:
        found = ("there is no best.pt" if saved is None else
                 "best.pt is from another run" if saved.get("run_id") != state.get("run_id") else
                 f"best.pt holds step {saved.get('iter')}")
        raise CheckpointError(
            f"keep_best: this run's best evaluation was at step {best['iter']}, before the checkpoint "
            f"(step {state['iter']}), and {found}: its weights were not kept. Resume without keep_best, "
            "or start a new run with keep_best on from the start")
    return state, saved["model"]


def rank_state(train_batches, batch: tuple[torch.Tensor, torch.Tensor], device_type: str) -> dict:
    """This process's part of a checkpoint: its RNG, its data position, its batch not yet trained on."""
    return {
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state() if device_type == "cuda" else None},
        "batches": train_batches.state_dict() if hasattr(train_batches, "state_dict") else None,
        "pending_batch": [t.cpu() for t in batch],
    }
