"""Checkpoints: safe loading, atomic saves, resume checks, and keep_best's best.pt."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from nanogpt import GPTConfig
from nanogpt.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from nanogpt.data import RandomBatches
from train_helpers import TINY, TOKENS, overfit, run, weights_equal


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run(4, out_dir=tmp_path, resume=True)


class RunsCode:
    """Pickles to a call of exec: loading it with plain pickle writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "shared" / "ckpt.pt"
    path.parent.mkdir()
    torch.save({"model": RunsCode(marker), "model_spec": {"class": "GPT", "config": TINY.to_dict()}}, path)
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="could run code"):
        run(4, out_dir=path.parent, resume=True)
    assert not marker.exists()
    # The payload is live: a loader without weights_only would have run it.
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump(RunsCode(marker), f)
    pickle.loads((tmp_path / "plain.pkl").read_bytes())
    assert marker.read_text() == "pwned"


def test_no_unsafe_load_is_left_in_the_package():
    package = Path(__file__).resolve().parent.parent / "nanogpt"
    offenders = [str(p) for p in package.rglob("*.py") if "weights_only=False" in p.read_text(encoding="utf-8")]
    assert offenders == []


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    folder = tmp_path_factory.mktemp("good")
    run(3, out_dir=folder)
    return (folder / "ckpt.pt").read_bytes()


@pytest.mark.parametrize("damage,message", [
    (lambda good: good[: len(good) // 2], "truncated"),
    (lambda good: b"", "truncated"),
    (lambda good: b"hello, I am a text file\n", "truncated or not a PyTorch checkpoint"),
    ("a list", "holds a list"),
    ("no keys", "lacks model, model_spec"),
], ids=["half-a-file", "empty", "text", "not-a-dict", "missing-keys"])
def test_unusable_files_raise_checkpoint_error(tmp_path, checkpoint_bytes, damage, message):
    path = tmp_path / "ckpt.pt"
    if damage == "a list":
        torch.save([1, 2, 3], path)
    elif damage == "no keys":
        torch.save({"iter": 3}, path)
    else:
        path.write_bytes(damage(checkpoint_bytes))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        run(6, out_dir=tmp_path, resume=True)


def test_weights_that_do_not_fit_their_spec_raise_checkpoint_error(tmp_path, checkpoint_bytes):
    (tmp_path / "ckpt.pt").write_bytes(checkpoint_bytes)
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    state["model_spec"]["config"]["n_embd"] = 64  # the weights are still 32 wide
    torch.save(state, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path)


def test_resume_refuses_another_model_or_schedule_and_says_what_to_do(tmp_path):
    run(3, out_dir=tmp_path)
    wider = GPTConfig(**{**TINY.to_dict(), "n_embd": 64})
    with pytest.raises(CheckpointError, match=r"model n_embd: saved 32, now 64.*new --out"):
        run(6, out_dir=tmp_path, resume=True, model_config=wider)
    with pytest.raises(CheckpointError) as info:
        run(6, out_dir=tmp_path, resume=True, learning_rate=1e-3, lr_decay_iters=None)
    assert "learning_rate: saved 0.003, now 0.001" in str(info.value)
    assert "lr_decay_iters: saved 12, now 6" in str(info.value)  # the cosine would end elsewhere
    # Where to stop and how to evaluate may change.
    _, history = run(6, out_dir=tmp_path, resume=True, eval_interval=2, eval_iters=1)
    assert [e["iter"] for e in history.evals] == [0, 3, 4, 6]


def test_resume_refuses_a_checkpoint_of_another_number_of_processes(tmp_path):
    run(3, out_dir=tmp_path)
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    state["ranks"] = state["ranks"] * 2  # as if two DDP processes had saved it
    torch.save(state, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="processes: saved by 2, now 1"):
        run(6, out_dir=tmp_path, resume=True)


def test_a_failed_save_leaves_no_temporary_file_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "ckpt.pt", {"iter": 1})
    with pytest.raises(Exception):  # a lambda cannot be pickled
        save_checkpoint(path, {"iter": 2, "oops": lambda: None})
    assert list(tmp_path.iterdir()) == [path]

    def half_a_file_then_disk_full(obj, f):
        f.write(b"PK\x03\x04 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_a_file_then_disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, {"iter": 3})
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == [path]
    assert torch.load(path, weights_only=True) == {"iter": 1}


def test_save_flushes_to_disk_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    save_checkpoint(tmp_path / "ckpt.pt", {"iter": 1})
    assert events[:2] == ["fsync", "replace"]   # the file's data is on disk before it gets the name
    if os.name == "posix":
        assert events == ["fsync", "replace", "fsync"]  # and then the folder's entry


def test_keep_best_ends_with_the_best_weights_and_saves_them(tmp_path):
    last, _ = overfit(40, tmp_path / "last")
    model, history = overfit(40, tmp_path / "best", keep_best=True)
    best = history.best_eval
    assert history.evals[-1]["val"] > best["val"] and best["iter"] < 40  # the run overfitted past its best
    saved, _, state = load_checkpoint(tmp_path / "best" / "best.pt")
    assert state["iter"] == best["iter"] and weights_equal(model, saved)
    kept, _, kept_state = load_checkpoint(tmp_path / "best")  # a run's folder: the weights it ended with
    assert kept_state["iter"] == best["iter"] and weights_equal(model, kept)
    assert load_checkpoint(tmp_path / "best" / "ckpt.pt")[2]["iter"] == 40  # the last step, to resume from
    assert weights_equal(last, load_checkpoint(tmp_path / "best" / "ckpt.pt")[0])  # training itself is unchanged
    assert load_checkpoint(tmp_path / "last")[2]["iter"] == 40  # without keep_best the folder means ckpt.pt
    assert not weights_equal(model, last)
    assert not (tmp_path / "last" / "best.pt").exists()  # without keep_best: no best.pt, the last weights


def test_keep_best_after_a_resume_restores_the_best_from_disk(tmp_path):
    straight, _ = overfit(40, keep_best=True)
    overfit(20, tmp_path, keep_best=True)  # the best (step 0) is before the resume
    resumed, history = overfit(40, tmp_path, resume=True, keep_best=True)
    assert history.best_eval["iter"] < 20 and weights_equal(resumed, straight)


def test_best_eval_is_none_without_a_val_source():
    _, history = run(3, evals={"train": RandomBatches(TOKENS, 4, 16, seed=1)}, keep_best=True)
    assert history.best_eval is None  # and nothing to restore: the run ends as it is


def test_a_fresh_run_clears_a_best_pt_left_by_an_earlier_run(tmp_path):
    overfit(20, tmp_path, keep_best=True)
    assert (tmp_path / "best.pt").exists()
    overfit(20, tmp_path)  # a new run in the same folder, without keep_best
    assert not (tmp_path / "best.pt").exists()
    assert load_checkpoint(tmp_path)[2]["iter"] == 20


def test_keep_best_never_takes_another_runs_best_pt(tmp_path):
    overfit(40, tmp_path / "first", keep_best=True)      # its best.pt: step 0 of the first run
    overfit(20, tmp_path / "second", keep_best=True, seed=7)  # its best is not its checkpoint's step
    (tmp_path / "first" / "best.pt").replace(tmp_path / "second" / "best.pt")  # a stale best.pt of another run
    with pytest.raises(CheckpointError, match="best.pt is from another run"):
        overfit(40, tmp_path / "second", resume=True, keep_best=True, seed=7)
    assert torch.load(tmp_path / "second" / "ckpt.pt", weights_only=True)["iter"] == 20  # refused before training
    assert load_checkpoint(tmp_path / "second")[2]["iter"] == 20  # the folder's best.pt is not this run's


def test_turning_keep_best_on_at_a_resume_fails_before_training_when_the_best_was_not_kept(tmp_path):
    overfit(20, tmp_path)  # without keep_best; its best estimate (step 0) was not kept
    with pytest.raises(CheckpointError, match="keep_best: this run's best evaluation was at step 0"):
        overfit(40, tmp_path, resume=True, keep_best=True)
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["iter"] == 20  # nothing was trained


def test_a_checkpoint_that_cannot_be_opened_says_so_rather_than_truncated(tmp_path, monkeypatch):
    run(3, out_dir=tmp_path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ckpt.pt"))

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(PermissionError, match="Permission denied"):
        load_checkpoint(tmp_path)
