"""The board end to end in a real headless Chromium (Debian's chromium + chromedriver, through Selenium): write a
recipe with a typo, see the positioned error, fix it, compile, review hash and provenance, run, watch the loss
chart fill, stop, resume to the end, chat with the result. Each step's screenshot is kept (conftest.screenshots);
with TKC_UPDATE_README_SCREENSHOT=1 the review screenshot becomes docs/img/board.png (the README shows it).

Also, quick: every front-end asset is a local package file (the board works offline: no CDN, no web font)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import board_server as S  # tests/board/board_server.py (pytest puts this folder on sys.path)
import pytest

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "src" / "tkc" / "board" / "static"
STEPS = 200  # a fraction of a second each on 2 cores: the stop lands mid-run, the resume finishes in seconds
RECIPE = """\
# written in the board by tests/board/test_board_browser.py
extends: [base/tiny_cpu.yaml]
name: board
data:
  datasets:
    small_sft: {path: data/small_sft.jsonl, format: alpaca}
stages:
  - kind: sft
    name: sft
    datasets: [small_sft]
train: {max_steps: %d, save_steps: %d, global_batch_size: 4, LEARNING_KEY: 2.0e-3}
launch: {cpu_threads: 1}
"""
TYPO_LINE = 11  # the `train:` line above, where the misspelled key sits


def test_static_assets_are_local_and_present():
    files = sorted(p for p in STATIC.rglob("*") if p.is_file())
    assert {"index.html", "app.js", "app.css"} <= {p.name for p in files}
    for path in files:
        text = path.read_text(encoding="utf-8")
        urls = set(re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s\"'`)]*", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, f"{path.name} names remote URLs: {sorted(urls)}"
        assert "@import" not in text and "@font-face" not in text, path.name
        for ref in re.findall(r"url\(([^)]*)\)", text):
            assert ref.strip("'\" ").startswith("data:"), f"{path.name}: url({ref})"
    index = (STATIC / "index.html").read_text(encoding="utf-8")
    refs = re.findall(r"""(?:src|href)=["']([^"']+)["']""", index)
    assert any(r.endswith("app.js") for r in refs) and any(r.endswith("app.css") for r in refs), refs
    for ref in refs:
        if ref.startswith("data:"):
            continue
        assert ref.startswith("/static/"), ref
        assert (STATIC / ref.removeprefix("/static/")).is_file(), ref
    for js in STATIC.glob("*.js"):  # every ES module import names a file that exists
        for ref in re.findall(
            r"""^import .* from ["']\./([^"']+)["'];$""", js.read_text(encoding="utf-8"), re.M
        ):
            assert (STATIC / ref).is_file(), f"{js.name} imports missing {ref}"


# ---- the browser walk-through ----


def _wait(driver, check, what: str, limit: float = 120.0):
    """Poll check(driver) until truthy; a generous limit against hangs, not a timing assertion."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def safe(d):
        try:
            return check(d)
        except StaleElementReferenceException:
            return False

    try:
        return WebDriverWait(driver, limit, poll_frequency=0.2).until(safe)
    except TimeoutException:
        bar = driver.find_element("id", "error-bar")
        raise AssertionError(f"timed out waiting for {what} (board error bar: {bar.text!r})") from None


def _by(driver, testid: str):
    return driver.find_element("css selector", f"[data-testid='{testid}']")


def _type_yaml(driver, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    box = _by(driver, "yaml")
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(text)


def _points(driver) -> int:
    svg = driver.find_elements("css selector", "#loss-chart svg")
    return int(svg[0].get_attribute("data-points") or 0) if svg else 0


def _status(driver) -> str:
    return _by(driver, "run-status").text


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_board_in_a_real_browser(browser, screenshots, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ws = S.make_workspace(tmp_path / "ws", rows=64)
    url, stop = S.start_board(ws)
    d = browser

    def shot(name: str) -> Path:
        path = screenshots / f"{name}.png"
        d.save_screenshot(str(path))
        return path

    try:
        d.get(url + "/")
        _wait(
            d,
            lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == "1",
            "the board to load",
        )

        # 1. a new recipe, typed with a misspelled key: the positioned error (code, file:line) and the marked line
        _by(d, "recipe-path").send_keys("recipes/board.yaml")
        _by(d, "recipe-open").click()
        _wait(d, lambda d: _by(d, "current-path").text == "recipes/board.yaml", "the new recipe to open")
        _type_yaml(d, RECIPE.replace("LEARNING_KEY", "lerning_rate") % (STEPS, STEPS))
        diag = _wait(
            d,
            lambda d: [
                e
                for e in d.find_elements("css selector", "[data-testid='diagnostic']")
                if e.get_attribute("data-line") == str(TYPO_LINE)
            ],
            "the typo's diagnostic",
        )[0]
        assert re.fullmatch(r"[A-Z]+[0-9]{3}", diag.get_attribute("data-code")), diag.text
        assert f"recipes/board.yaml:{TYPO_LINE}:" in diag.text and "lerning_rate" in diag.text, diag.text
        assert _by(d, "validate-status").get_attribute("data-state") == "error"
        marked = d.find_elements("css selector", "#yaml-gutter div.err")
        assert [m.get_attribute("data-line") for m in marked] == [str(TYPO_LINE)]
        shot("01-typo")

        # 2. fixed in the YAML; then the run name changed in the form, which rewrites the YAML
        _type_yaml(
            d,
            RECIPE.replace("LEARNING_KEY", "learning_rate").replace("name: board", "name: draft")
            % (STEPS, STEPS),
        )
        _wait(
            d,
            lambda d: _by(d, "validate-status").get_attribute("data-state") == "ok",
            "the fixed recipe to pass",
        )
        name = _wait(
            d,
            lambda d: [
                e
                for e in d.find_elements("css selector", "[data-testid='field-name']")
                if e.get_attribute("value") == "draft"
            ],
            "the form to show the YAML's name",
        )[0]
        assert not d.find_elements("css selector", "[data-testid='diagnostic']")
        name.clear()
        name.send_keys("board")
        _wait(
            d,
            lambda d: re.search(r"^name: board$", _by(d, "yaml").get_attribute("value"), re.M),
            "the form's edit to reach the YAML",
        )
        _wait(
            d,
            lambda d: _by(d, "validate-status").get_attribute("data-state") == "ok",
            "the edited recipe to pass",
        )
        shot("02-fixed")

        # 3. compile; the bundle view: hash, resolved values with provenance, launch scripts
        _by(d, "tab-bundle").click()
        _by(d, "compile-btn").click()
        _wait(d, lambda d: _by(d, "compile-status").get_attribute("data-state") == "ok", "the compile")
        digest = _wait(d, lambda d: _by(d, "bundle-hash").text, "the bundle hash")
        assert re.fullmatch(r"[0-9a-f]{64}", digest), digest
        assert (ws / "runs" / "board" / "manifest.json").is_file()
        assert digest in (ws / "runs" / "board" / "manifest.json").read_text(encoding="utf-8")
        sources = {
            e.get_attribute("textContent")
            for e in d.find_elements("css selector", "[data-testid='provenance']")
        }
        assert "recipe" in sources and "default" in sources, sorted(sources)
        assert d.find_elements("css selector", "#bundle-scripts pre"), "no launch script shown"
        shot("03-bundle")

        # 4. run; the loss chart fills; stop (SIGTERM: it checkpoints); resume to the end
        _by(d, "tab-runs").click()
        assert _by(d, "run-bundle").get_attribute("value") == "runs/board"
        _by(d, "run-start").click()
        _wait(d, lambda d: _points(d) >= 2, "two points on the loss chart", 240)
        _by(d, "run-stop").click()
        _wait(d, lambda d: _status(d) in ("stopped", "finished", "failed"), "the run to stop", 180)
        assert _status(d) == "stopped", _by(d, "run-log").text[-2000:]
        stopped_at = _points(d)
        assert 2 <= stopped_at < STEPS
        shot("04-stopped")
        _by(d, "run-resume").click()
        _wait(
            d, lambda d: _status(d) == "running" or _status(d) == "finished", "the resumed run to start", 60
        )
        _wait(d, lambda d: _status(d) in ("finished", "failed"), "the resumed run to end", 300)
        assert _status(d) == "finished", _by(d, "run-log").text[-2000:]
        _wait(d, lambda d: _points(d) == STEPS, "every step on the chart", 30)
        assert "resuming from" in _by(d, "run-log").text
        rows = d.find_elements("css selector", "#runs-table tbody tr")
        assert sorted(r.get_attribute("data-status") for r in rows) == ["finished", "stopped"]
        readme_shot = shot("05-finished")

        # 5. chat with the trained stage: the streamed reply appears
        _by(d, "tab-chat").click()
        _wait(
            d,
            lambda d: (
                "sft"
                in [o.get_attribute("value") for o in d.find_elements("css selector", "#chat-stage option")]
            ),
            "the bundle's stages",
        )
        _by(d, "chat-input").send_keys("Sort 8531")
        _by(d, "chat-send").click()
        _wait(
            d,
            lambda d: _by(d, "chat-status").get_attribute("data-state") in ("done", "error"),
            "the reply",
            180,
        )
        assert _by(d, "chat-status").get_attribute("data-state") == "done", _by(d, "error-bar").text
        reply = d.find_elements("css selector", "[data-testid='chat-assistant'] .text")[-1].text
        assert reply.strip(), "the streamed reply is empty"
        shot("06-chat")
        _by(d, "export-btn").click()
        _wait(d, lambda d: _by(d, "export-status").get_attribute("class") in ("ok", "bad"), "the export", 180)
        assert _by(d, "export-status").text.startswith("exported to "), _by(d, "error-bar").text
        shot("07-export")
        assert not _by(d, "error-bar").is_displayed(), _by(d, "error-bar").text
        severe = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
    finally:
        stop()
    if os.environ.get("TKC_UPDATE_README_SCREENSHOT") == "1":
        (REPO / "docs" / "img").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(readme_shot, REPO / "docs" / "img" / "board.png")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_board_token_prompt_escaping_and_data_tools(browser, screenshots, tmp_path):
    """With a token: the page asks for it (a wrong one is refused); recipe values are shown as text, never markup;
    a dataset file's rows preview, and one example's trained span as `tkc data inspect` shows it."""
    from selenium.webdriver.support.ui import Select

    ws = S.make_workspace(tmp_path / "ws")
    evil = "<img src=x onerror=window.pwned=1>"
    (ws / "recipes" / "evil.yaml").write_text(f'schema_version: 1\nname: "{evil}"\n', encoding="utf-8")
    token = "a-board-token-of-32-characters-x"
    url, stop = S.start_board(ws, token=token)
    d = browser
    try:
        d.get(url + "/")
        _wait(d, lambda d: _by(d, "login-dialog").get_attribute("open") is not None, "the token prompt")
        _by(d, "login-token").send_keys("not-the-token-at-all")
        _by(d, "login-submit").click()
        _wait(d, lambda d: d.find_element("id", "login-error").text, "the refusal")
        assert d.find_element("tag name", "body").get_attribute("data-ready") != "1"
        _by(d, "login-token").clear()
        _by(d, "login-token").send_keys(token)
        _by(d, "login-submit").click()
        _wait(
            d,
            lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == "1",
            "the board to load",
        )

        Select(_by(d, "recipe-select")).select_by_value("recipes/evil.yaml")
        _wait(
            d,
            lambda d: any(
                e.get_attribute("data-code") == "SCHEMA002"
                for e in d.find_elements("css selector", "[data-testid='diagnostic']")
            ),
            "the name's error",
        )
        assert _by(d, "field-name").get_attribute("value") == evil
        assert evil in _by(d, "diagnostics").text  # shown as text ...
        assert not d.find_elements("css selector", "main img")  # ... never parsed as markup
        assert d.execute_script("return window.pwned") is None
        shot_path = screenshots / "10-escaped.png"
        d.save_screenshot(str(shot_path))

        Select(_by(d, "recipe-select")).select_by_value("recipes/tiny.yaml")
        _wait(d, lambda d: _by(d, "validate-status").get_attribute("data-state") == "ok", "tiny.yaml to pass")
        Select(_by(d, "dataset-file")).select_by_value("recipes/data/small_sft.jsonl")
        rows = _wait(
            d, lambda d: d.find_elements("css selector", "[data-testid='dataset-rows'] tbody tr"), "rows"
        )
        assert len(rows) == 5 and "Sort " in rows[0].text
        _wait(
            d,
            lambda d: (
                "small_sft"
                in [
                    o.get_attribute("value")
                    for o in d.find_elements("css selector", "#inspect-dataset option")
                ]
            ),
            "names",
        )
        Select(_by(d, "inspect-dataset")).select_by_value("small_sft")
        _by(d, "inspect-btn").click()
        trained = _wait(
            d, lambda d: d.find_elements("css selector", "#inspect-output span.trained"), "the span", 120
        )
        masked = "".join(e.text for e in d.find_elements("css selector", "#inspect-output span.masked"))
        question = re.search(
            r"Sort ([0-9]+)", masked
        )  # the prompt is not trained on (train_on_prompt is off) ...
        assert question, masked
        answer = "".join(sorted(question.group(1)))
        assert "".join(t.text for t in trained).startswith(answer)  # ... the answer is
        d.save_screenshot(str(screenshots / "11-data.png"))
        assert not _by(d, "error-bar").is_displayed(), _by(d, "error-bar").text
    finally:
        stop()
