"""The report a run ends with (HTML + Markdown + PNG plots), rendered in headless Chromium; progress bars on a terminal
and none in logs; TensorBoard and wandb (offline) as opt-in loggers."""

import fcntl
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from conftest import run_atu

RUN = [
    "model=tiny",
    "target=Stephen King",
    "method.align_steps=6",
    "method.realign_steps=2",
    "method.unlearn_steps=4",
    "method.taus=[0.3,0.1]",
    "data.max_passages=3",
    "data.other_targets=1",
    "eval.max_probes_per_file=2",
    "method.unlearn_params=below_hook",
    "method.hook_layer=2",
    "method.unlearn_lr=1e-3",
    "method.head_width=64",
    "method.head_layers=1",
    "method.head_heads=2",
]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def terminal_run(tmp_path_factory):
    """One tiny run with stderr on a pseudo-terminal (as a user sees it), logging to TensorBoard and wandb."""
    out = tmp_path_factory.mktemp("report") / "run"
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal, as a user has
    env = {**os.environ, "WANDB_SILENT": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "atu.cli", "unlearn", *RUN, "run.loggers=[tensorboard,wandb]", f"run.output_dir={out}"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=600) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return out, b"".join(chunks).decode(errors="replace")


def test_progress_bars_show_on_a_terminal(terminal_run):
    _, screen = terminal_run
    assert re.search(r"unlearn1:\s+\d+%\|.*\| \d/4 \[", screen)  # a bar per stage, with its step count
    # and a bar for each evaluation: 7 probe sets × 2, and the retain score (3 other targets × FB and QA × 2). Its
    # first state (0/26) is always drawn; the last may not be (tqdm skips redraws within 0.1 s, and leave=False)
    assert re.search(r"eval:\s+\d+%\|.*\| \d+/26 \[", screen)


def test_no_progress_bars_when_not_on_a_terminal(tmp_path):
    r = run_atu("unlearn", *RUN, f"run.output_dir={tmp_path / 'run'}")  # stderr is a buffer here, not a terminal
    assert r.returncode == 0, r.stderr[-2000:]
    assert "\r" not in r.stderr and "it/s" not in r.stderr and "%|" not in r.stderr
    assert "[atu] eval unlearn2" in r.stderr  # the one-line summaries still come


def test_tensorboard_and_wandb_receive_the_metrics(terminal_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = terminal_run
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"align/align_loss", "unlearn1/unlearn_loss", "unlearn2/unlearn_loss", "eval/forget_all"} <= set(tags)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first_align = next(r for r in logged if r["event"] == "step" and r["stage"] == "align")
    assert events.Scalars("align/align_loss")[0].value == pytest.approx(first_align["align_loss"], rel=1e-6)
    assert [s.value for s in events.Scalars("eval/forget_all")] == [
        r["forget_all"] for r in logged if r["event"] == "eval"
    ]
    run = json.loads((out / "run.json").read_text())
    offline = list((out / "wandb").glob(f"offline-run-*-{run['wandb_id']}/run-{run['wandb_id']}.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 1000  # offline by default: a local run file, no network


def test_report_files_hold_the_runs_numbers(terminal_run):
    out, _ = terminal_run
    md = (out / "report.md").read_text()
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert [e["stage"] for e in evals] == ["before", "unlearn1", "unlearn2"]
    assert f"| unlearn2 (τ=0.100) | {evals[-1]['forget_fb']:.1f} |" in md
    for section in ("## Before and after", "## Plots", "## Example probes", "## Versions", "## Configuration"):
        assert section in md
    for png in ("fig_stages.png", "fig_tradeoff.png", "fig_levels.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png})" in md
    assert "transformers" in md and "hook_layer: 2" in md


def start_browser():
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for drivers on the internet
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,900",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def screenshot(driver, page: Path, png: Path) -> dict:
    """Open `page`, report what loaded, and save a full-page screenshot."""
    driver.get(page.resolve().as_uri())
    loaded = driver.execute_script(
        "return {title: document.title, tables: document.querySelectorAll('table').length,"
        " images: Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]),"
        " height: document.documentElement.scrollHeight}"
    )
    driver.set_window_size(1200, min(int(loaded["height"]), 8000))
    driver.save_screenshot(str(png))
    return loaded


@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"),
    reason="headless Chromium not installed (apt install chromium chromium-driver; CI installs it)",
)
def test_html_report_renders_in_headless_chromium_with_every_image(terminal_run, tmp_path):
    from PIL import Image

    out, _ = terminal_run
    driver = start_browser()
    try:
        page = screenshot(driver, out / "report.html", tmp_path / "report.png")
    finally:
        driver.quit()
    assert page["title"] == "Unlearning Stephen King with atu"
    assert page["tables"] >= 2  # before/after and example probes
    assert {src for src, _ in page["images"]} == {"fig_stages.png", "fig_tradeoff.png", "fig_levels.png"}
    assert all(ok for _, ok in page["images"]), page["images"]
    shot = Image.open(tmp_path / "report.png")
    assert shot.width == 1200 and shot.height > 1500  # the whole page, plots included
    assert sum(1 for count in shot.convert("L").histogram() if count) > 20  # not a blank page
    artifacts = os.environ.get("ATU_SCREENSHOT_DIR")
    if artifacts:  # CI keeps the screenshot
        shutil.copy(tmp_path / "report.png", Path(artifacts) / "report-tiny.png")


def test_atu_report_rebuilds_the_report_from_the_folder(terminal_run, tmp_path):
    out, _ = terminal_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("report.*", "fig_*.png", "wandb", "tensorboard", "model"))
    r = run_atu("report", copy)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == str(copy / "report.html")
    assert (copy / "report.md").read_text() == (out / "report.md").read_text()
    assert (copy / "fig_levels.png").exists()
