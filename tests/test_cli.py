"""The command line: the main job end to end, and errors without tracebacks for bad input and Ctrl-C."""
from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from nanogpt.cli import build_parser, main
from nanogpt.presets import PRESETS, train_preset


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    """``python -m nanogpt *argv`` in this process: (exit status, stdout, stderr)."""
    try:
        status = main(list(argv))
    except SystemExit as exc:  # argparse exits on bad arguments
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def one_line_error(err: str) -> str:
    """The error line, after checking it is the only line on stderr and no traceback came with it."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nanogpt: error: "), err
    return lines[0]


def error_message(err: str) -> str:
    """The whole error, after checking it starts with "nanogpt: error: " and no traceback came with it."""
    assert "Traceback" not in err
    assert err.startswith("nanogpt: error: "), err
    return err.strip()


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory) -> Path:
    """A checkpoint of the CPU-sized preset after two steps."""
    out = tmp_path_factory.mktemp("ckpt")
    train_preset(PRESETS["shakespeare-char-cpu"], device="cpu", max_iters=2, eval_iters=1, out_dir=out,
                 progress=False)
    return out


def test_data_command_reports_the_corpus(capsys):
    status, out, _ = run_main(capsys, "data")
    assert status == 0
    for figure in ("1,115,394", "65 characters", "338,025", "3.30", "1,003,854 / 111,540"):
        assert figure in out


@pytest.mark.parametrize("args,message", [
    (["train", "--preset", "nope"], "unknown preset 'nope'"),
    (["train", "--max-iters", "-5"], "--max-iters: must be a non-negative integer"),
    (["train", "--eval-iters", "0"], "--eval-iters: must be at least 1, got 0"),  # an estimate needs a batch
    (["train", "--eval-iters", "-1"], "--eval-iters: must be at least 1, got -1"),
    (["sample", "--checkpoint", "x", "--max-new-tokens", "0"], "--max-new-tokens: must be at least 1, got 0"),
    (["bench", "--steps", "0"], "--steps: must be at least 1, got 0"),
    (["bench", "--threads", "0"], "--threads: must be at least 1, got 0"),
    (["train", "--device", "tpu"], "unknown device 'tpu'"),
    (["train", "--preset", "gpt2", "--device", "cpu"], "preset 'gpt2' trains on 'fineweb-edu'"),
    (["sample", "--checkpoint", "/no/such/dir"], "no checkpoint at /no/such/dir"),
    (["sample"], "the following arguments are required: --checkpoint"),
    (["sample", "--checkpoint", "x", "--top-k", "0"], "--top-k: must be at least 1, got 0"),
    (["sample", "--checkpoint", "x", "--temperature", "0"], "--temperature: must be positive, got 0"),
])
def test_bad_arguments_give_one_line_errors(capsys, args, message):
    status, _, err = run_main(capsys, *args)
    assert status == 2
    assert message in one_line_error(err)


def test_an_error_keeps_the_lines_that_say_how_to_fix_it(capsys, tmp_path, monkeypatch):
    """Offline, the reader needs the download's URL, the file to save it as and NANOGPT_DATA_DIR,
    which the download error gives on the lines after its first."""
    from nanogpt.data import DATASETS

    monkeypatch.setenv("NANOGPT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("NANOGPT_CACHE_DIR", str(tmp_path / "cache"))

    def offline(url, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    status, _, err = run_main(capsys, "data")
    assert status == 2
    message = error_message(err)
    assert "could not download tinyshakespeare: <urlopen error" in message.splitlines()[0]
    assert DATASETS["tinyshakespeare"].url in message
    assert "save it as $NANOGPT_DATA_DIR/tinyshakespeare/input.txt" in message


@pytest.mark.parametrize("damage", ["truncated", "not a checkpoint", "empty"])
def test_sample_on_a_damaged_checkpoint_is_a_one_line_error(capsys, tmp_path, checkpoint_dir, damage):
    path = tmp_path / "ckpt.pt"
    good = (checkpoint_dir / "ckpt.pt").read_bytes()
    path.write_bytes({"truncated": good[: len(good) // 2], "not a checkpoint": b"To be, or not to be\n",
                      "empty": b""}[damage])
    status, _, err = run_main(capsys, "sample", "--checkpoint", str(path), "--device", "cpu")
    assert status == 2
    one_line_error(err)


def test_damaged_checkpoint_from_the_shell_gives_no_traceback(tmp_path, checkpoint_dir):
    (tmp_path / "ckpt.pt").write_bytes((checkpoint_dir / "ckpt.pt").read_bytes()[:1000])
    done = subprocess.run([sys.executable, "-m", "nanogpt", "sample", "--checkpoint", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    one_line_error(done.stderr)


def test_resume_into_a_folder_holding_another_model_size(capsys, tmp_path, checkpoint_dir):
    out = tmp_path / "run"
    shutil.copytree(checkpoint_dir, out)  # 5 layers x 128 wide; shakespeare-char is 6 x 384
    status, _, err = run_main(capsys, "train", "--preset", "shakespeare-char", "--device", "cpu", "--resume",
                              "--out", str(out), "--max-iters", "2", "--eval-iters", "1")
    assert status == 2
    one_line_error(err)


def test_train_prints_the_plan_first_then_trains_resumes_and_samples(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # --device auto picks the CPU, also on a GPU machine
    import nanogpt.precision as T

    monkeypatch.setattr(T, "cpu_has_native_bf16", lambda: False)  # the same plan on every CPU
    out = tmp_path / "run"
    status, stdout, err = run_main(capsys, "train", "--max-iters", "2", "--eval-iters", "1", "--out", str(out))
    assert status == 0, err
    lines = stdout.splitlines()
    assert "CPU-sized preset 'shakespeare-char-cpu'" in lines[0]
    # The first line of the plan says the precision, and why.
    assert lines[1] == ("plan: shakespeare-char-cpu on cpu, trained on tinyshakespeare, "
                        "fp32: this CPU has no bf16 matrix units (AVX512-BF16 or AMX)")
    assert "2: 1,536 tokens" in stdout and stdout.index("plan:") < stdout.index("training shakespeare-char-cpu")
    assert (out / "ckpt.pt").exists() and (out / "summary.json").exists()
    # The summary scores the whole validation split, once, and says what it cost.
    summary = json.loads((out / "summary.json").read_text())
    assert {"val_loss_full", "full_eval_time_s", "train_time_s", "eval_time_s"} <= summary.keys()
    assert f"validation loss on the full split: {summary['val_loss_full']:.4f}" in stdout
    status, _, err = run_main(capsys, "train", "--max-iters", "2", "--eval-iters", "1", "--out", str(out), "--resume")
    assert status == 0, err  # nothing left to do, but a valid resume
    # More steps would change the schedule the checkpoint was trained with: refused, on one line.
    status, _, err = run_main(capsys, "train", "--max-iters", "3", "--eval-iters", "1", "--out", str(out), "--resume")
    assert status == 2 and "lr_decay_iters: saved 2, now 3" in one_line_error(err)
    status, stdout, err = run_main(capsys, "sample", "--checkpoint", str(out), "--prompt", "ROMEO:",
                                   "--max-new-tokens", "50", "--temperature", "0.8", "--top-k", "10")
    assert status == 0, err
    assert stdout.startswith("ROMEO:") and len(stdout.rstrip("\n")) == len("ROMEO:") + 50


# --- Ctrl-C and SIGTERM --------------------------------------------------------------------

def interrupted(signal_name: str = "SIGINT") -> re.Pattern:
    """The error line of a run stopped by ``signal_name``: (step, checkpoint, resume command)."""
    return re.compile(rf"nanogpt: error: interrupted by {signal_name} at step (\d+): checkpoint at step \1 saved to (.+); "
                      r"resume with: (.+)")


INTERRUPTED = interrupted("SIGINT")


@pytest.mark.parametrize("signal_name,exit_status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_stopped_run_exits_with_128_plus_the_signal_number(capsys, tmp_path, monkeypatch, signal_name,
                                                             exit_status):
    """The shell convention: 130 for Ctrl-C (SIGINT, 2), 143 for SIGTERM (15), as a batch scheduler expects."""
    import nanogpt.presets as P
    from nanogpt.stopping import TrainingInterrupted

    def stopped(*args, **kwargs):
        raise TrainingInterrupted(7, tmp_path / "ckpt.pt", signal_name)

    monkeypatch.setattr(P, "train_preset", stopped)
    status, _, err = run_main(capsys, "train", "--preset", "shakespeare-char-cpu", "--device", "cpu",
                              "--max-iters", "10", "--eval-iters", "1", "--out", str(tmp_path))
    assert status == exit_status
    match = interrupted(signal_name).fullmatch(one_line_error(err))
    assert match and match[1] == "7" and Path(match[2]) == tmp_path / "ckpt.pt"


def test_a_keyboard_interrupt_outside_training_exits_130(capsys, monkeypatch):
    import nanogpt.cli as cli

    def ctrl_c(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_data", ctrl_c)
    status, _, err = run_main(capsys, "data")
    assert status == 130 and one_line_error(err) == "nanogpt: error: interrupted"


def interrupt_training(argv: list[str], log: Path, settle_s: float = 1.0,
                       sig: signal.Signals = signal.SIGINT) -> tuple[int, str]:
    """Start ``argv``, send ``sig`` once the training loop is running; (exit status, stderr)."""
    with open(log, "w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, text=True)
        try:
            deadline = time.monotonic() + 120
            while "training (" not in log.read_text():  # the progress bar, "training (fp32):" or (bf16): in the loop
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "training never started"
                time.sleep(0.1)
            time.sleep(settle_s)
            proc.send_signal(sig)
            status = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:  # a failed check must not leave the run training
                proc.kill()
                proc.wait()
    return status, log.read_text()


@pytest.mark.slow
def test_ctrl_c_saves_the_step_and_prints_the_command_that_resumes(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--preset", "shakespeare-char-cpu", "--device", "cpu", "--max-iters", "100000",
            "--eval-iters", "1", "--out", str(out)]
    status, err = interrupt_training([sys.executable, "-m", "nanogpt", *args], tmp_path / "first.log")
    assert status == 130 and "Traceback" not in err
    match = INTERRUPTED.fullmatch(err.strip().splitlines()[-1])
    assert match, err[-500:]
    step, path, command = int(match[1]), Path(match[2]), shlex.split(match[3])
    assert step > 0 and path == out / "ckpt.pt"
    assert torch.load(path, map_location="cpu", weights_only=True)["iter"] == step
    assert command[:3] == ["python", "-m", "nanogpt"]
    assert build_parser().parse_args(command[3:]) == build_parser().parse_args([*args, "--resume"])
    # The printed command resumes: run it, interrupt it again, and it stops further on.
    status, err = interrupt_training([sys.executable, *command[1:]], tmp_path / "second.log")
    assert status == 130
    match = INTERRUPTED.fullmatch(err.strip().splitlines()[-1])
    assert match and int(match[1]) > step


@pytest.mark.slow
def test_sigterm_saves_the_step_and_exits_143(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--preset", "shakespeare-char-cpu", "--device", "cpu", "--max-iters", "100000",
            "--eval-iters", "1", "--out", str(out)]
    status, err = interrupt_training([sys.executable, "-m", "nanogpt", *args], tmp_path / "term.log",
                                     sig=signal.SIGTERM)
    assert status == 143 and "Traceback" not in err
    match = interrupted("SIGTERM").fullmatch(err.strip().splitlines()[-1])
    assert match, err[-500:]
    step, path = int(match[1]), Path(match[2])
    assert step > 0 and path == out / "ckpt.pt"
    assert torch.load(path, map_location="cpu", weights_only=True)["iter"] == step
